"""fnapi.distributed in one process: the launcher's environment, main-process-only work, accelerate configs
turned into Trainer settings, and capture shards that merge back into exactly the single-process matrix."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from fnapi import distributed
from fnapi.errors import DataError, HardwareError, RecipeError
from fnapi.events import ListSink, Log, NullSink
from fnapi.models.tiny import tiny_model
from fnapi.networks.capture import _merge_shards, batch_plan, capture_activations


@pytest.fixture
def rank1_of_2(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")


def test_a_plain_process_is_the_main_one_and_runs_everything_itself():
    assert (distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (1, 0, True)
    sink = ListSink()
    assert distributed.main_process_sink(sink) is sink
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    assert distributed.gather_on_main(lambda: "mine") == ["mine"]
    assert distributed.all_gather(3) == [3]
    assert distributed.device_for("cuda") == "cuda"
    distributed.barrier()


def test_other_ranks_stay_quiet_and_use_their_own_gpu(rank1_of_2):
    assert distributed.is_distributed() and not distributed.is_main_process()
    sink = ListSink()
    quiet = distributed.main_process_sink(sink)
    quiet.emit(Log(message="hello"))
    assert isinstance(quiet, NullSink) and sink.events == []
    assert distributed.device_for("cuda") == "cuda:1" and distributed.device_for("cpu") == "cpu"


def test_launcher_environment_problems_are_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(RecipeError, match="WORLD_SIZE='two' is not a whole number"):
        distributed.world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RecipeError, match="MASTER_ADDR and MASTER_PORT is not set"):
        distributed.ensure_process_group()


def test_more_processes_than_examples_is_refused(rank1_of_2):
    distributed.check_enough_examples(2, "training examples")
    with pytest.raises(DataError, match="training examples: 1 for 2 processes") as info:
        distributed.check_enough_examples(1, "training examples")
    assert "at most 1 processes" in info.value.hint


def test_fsdp_config_becomes_trainer_settings(tmp_path):
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\nmixed_precision: bf16\nfsdp_config:\n"
                      "  fsdp_sharding_strategy: SHARD_GRAD_OP\n  fsdp_offload_params: true\n"
                      "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
                      "  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\n")
    options = distributed.trainer_options(config)
    assert options["fsdp"] is True and options["bf16"] is True
    assert options["fsdp_config"] == {"cpu_offload": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                      "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                                      "reshard_after_forward": False, "version": 2}
    plugin = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, fsdp=True,
                               fsdp_config=options["fsdp_config"]).fsdp_plugin_args
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer" and plugin["cpu_offload"]


def test_deepspeed_config_becomes_a_deepspeed_dict_or_file(tmp_path):
    inline = tmp_path / "ds.yaml"
    inline.write_text("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n"
                      "  offload_optimizer_device: cpu\n  offload_param_device: none\n")
    ds = distributed.trainer_options(inline)["deepspeed"]
    assert ds["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    by_file = tmp_path / "ds2.yaml"
    by_file.write_text("distributed_type: DEEPSPEED\ndeepspeed_config: {deepspeed_config_file: zero3.json}\n")
    assert distributed.trainer_options(by_file) == {"deepspeed": "zero3.json"}


def test_plain_data_parallel_and_accelerate_launch_need_no_settings(tmp_path, monkeypatch):
    ddp = tmp_path / "ddp.yaml"
    ddp.write_text("distributed_type: MULTI_GPU\nnum_processes: 8\n")
    assert distributed.trainer_options(None) == distributed.trainer_options(ddp) == {}
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\n")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch configured this process already
    assert distributed.trainer_options(fsdp) == {}


@pytest.mark.parametrize("text, message", [
    (None, "file not found"),
    ("distributed_type: XLA\n", "distributed_type XLA is not supported"),
    ("- a list\n", "a mapping of settings"),
    ("distributed_type: FSDP\nfsdp_config: {fsdp_sharding_strategy: HYBRID_SHARD}\n", "not supported with FSDP2"),
])
def test_bad_accelerate_configs_name_the_file(tmp_path, text, message):
    config = tmp_path / "accelerate.yaml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(RecipeError, match=message) as info:
        distributed.trainer_options(config)
    assert str(config) in info.value.message


def test_sharding_configs_need_cuda(tmp_path):
    for kind in ("FSDP", "DEEPSPEED"):
        config = tmp_path / f"{kind}.yaml"
        config.write_text(f"distributed_type: {kind}\n")
        with pytest.raises(HardwareError, match="CUDA GPUs; this machine has none"):
            distributed.check_accelerate_config(config, has_cuda=False)
    distributed.check_accelerate_config(None, has_cuda=False)


@pytest.mark.parametrize("world", [2, 3])
def test_capture_shards_merge_into_the_single_process_matrix(world):
    model = tiny_model("llama")
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(3, 300, (int(n),), generator=generator).tolist()
                 for n in torch.randint(5, 40, (30,), generator=generator)]
    options = dict(layers=[0, 1], exclude_token_ids=[3, 4], batch_tokens=128, max_length=32)
    whole = capture_activations(model, sequences, **options)
    plan = batch_plan(sequences, max_length=32, batch_tokens=128)
    assert len(plan) > world  # several batches per process
    parts = [capture_activations(model, sequences, batches=plan[rank::world], **options) for rank in range(world)]
    merged = _merge_shards(parts, plan)
    for name in ("values", "token_ids", "sequence_index", "positions"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    assert sum(p.n_rows for p in parts) == whole.n_rows


def test_processes_without_a_capture_batch_add_nothing():
    model = tiny_model("llama")
    sequences = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    whole = capture_activations(model, sequences, layers=[1])
    plan = batch_plan(sequences)
    world = len(plan) + 2
    parts = [capture_activations(model, sequences, layers=[1], batches=plan[rank::world]) if plan[rank::world]
             else None for rank in range(world)]
    assert parts[-1] is None
    assert torch.equal(_merge_shards(parts, plan).values, whole.values)
