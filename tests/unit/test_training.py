"""Training: LoRA and full fine-tuning under masks, events, checkpoints, resume after kill -9, saved outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from fnapi import hardware
from fnapi.data.templating import TokenizedData
from fnapi.errors import CancelledError, HardwareError, RecipeError
from fnapi.events import ListSink, Metric, Progress, StageFinished
from fnapi.masking import NeuronMask, mask
from fnapi.models.registry import get_adapter
from fnapi.models.tiny import HIDDEN_SIZE, INTERMEDIATE_SIZE, tiny_model, tiny_tokenizer
from fnapi.recipe import MASK_PRESETS, TrainSection
from fnapi.training import STATE_FILE, check_method_supported, train

REPO = Path(__file__).resolve().parents[2]
SELECTED = {0: [1, 5, 7], 1: [2]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_data(examples: int = 24) -> TokenizedData:
    """Counting sequences: easy to learn, so the loss falls within a few steps."""
    ids = [[3 + (start + i) % 40 for i in range(12)] for start in range(examples)]
    labels = [[-100] * 2 + row[2:] for row in ids]
    return TokenizedData(input_ids=ids, labels=labels, truncated=0, dropped=0, template_used="plain",
                         max_length=32, cache_key="")


def section(**changes) -> TrainSection:
    values = dict(method="lora", steps=8, batch_size=4, learning_rate=1e-2, weight_decay=0.1, logging_steps=2,
                  save_steps=4, warmup_ratio=0.0)
    values.update(changes)
    return TrainSection(**values)


def run(tmp_path: Path, name: str = "run", *, model=None, neuron_mask=None, sink=None, **changes):
    return train(model if model is not None else tiny_model("llama"), tiny_tokenizer(), tiny_data(), None,
                 section(**{k: v for k, v in changes.items() if k in TrainSection.model_fields}),
                 mask=neuron_mask, output_dir=tmp_path / name, seed=0, sink=sink,
                 **{k: v for k, v in changes.items() if k not in TrainSection.model_fields})


def effective_down_proj(model, layer: int) -> torch.Tensor:
    """Layer ``layer``'s down-projection as [out, in], LoRA delta included."""
    down = get_adapter(model).down_proj(model, layer)
    weight = getattr(down, "base_layer", down).weight.detach().clone()
    if hasattr(down, "lora_B"):
        weight = weight + down.get_delta_weight("default").detach()
    return weight


def logits(model, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(3, 400, (2, 10), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def test_lora_loss_falls_and_events_report_progress(tmp_path):
    sink = ListSink()
    result = run(tmp_path, sink=sink, steps=12, logging_steps=4)
    assert result.steps == 12 and [s for s, _ in result.losses] == list(range(1, 13))
    assert result.final_loss < result.losses[0][1] - 0.3
    assert result.trainable_parameters < result.total_parameters / 5
    progress = [e for e in sink.events if isinstance(e, Progress) and e.stage == "train"]
    assert [e.completed for e in progress] == list(range(1, 13)) and progress[-1].total == 12
    assert progress[0].eta_seconds > 0 and progress[-1].eta_seconds == 0
    metrics = [e for e in sink.events if isinstance(e, Metric)]
    assert [m.step for m in metrics] == [4, 8, 12]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(metrics[0].values)
    assert metrics[0].values["tokens_per_second"] > 0
    assert metrics[-1].values["learning_rate"] < metrics[0].values["learning_rate"]  # linear decay
    assert isinstance(sink.events[-1], StageFinished) and sink.events[-1].summary["steps"] == 12
    assert (result.adapter_dir / "adapter_config.json").is_file() and result.model_dir is None
    assert result.frozen_unchanged is None


@pytest.mark.parametrize("method,preset,site", [
    ("lora", "protect", "mlp.out"),
    ("full", "protect", "mlp.out"),
    ("full", "target", "mlp.out"),
    ("lora", "preserve", "mlp.out"),
    ("full", "preserve", "mlp.hidden"),
])
def test_frozen_neurons_stay_bit_identical(tmp_path, method, preset, site):
    model = tiny_model("llama")
    neuron_mask = NeuronMask(site, SELECTED, *MASK_PRESETS[preset])
    width, dim = (HIDDEN_SIZE, 0) if site == "mlp.out" else (INTERMEDIATE_SIZE, 1)
    before = [effective_down_proj(model, layer) for layer in range(2)]
    result = run(tmp_path, model=model, neuron_mask=neuron_mask, method=method, save_model=False)
    assert result.frozen_unchanged is True and result.frozen_checksums
    for layer in range(2):
        after = effective_down_proj(result.model, layer)
        frozen = torch.tensor(neuron_mask.frozen(layer, width))
        trainable = torch.tensor([c for c in range(width) if c not in set(neuron_mask.frozen(layer, width))])
        assert torch.equal(before[layer].index_select(dim, frozen), after.index_select(dim, frozen))
        assert not torch.equal(before[layer].index_select(dim, trainable), after.index_select(dim, trainable))


def test_full_finetuning_optimizer_state_holds_only_trainable_rows(tmp_path):
    neuron_mask = NeuronMask("mlp.out", SELECTED, train="selected")
    result = run(tmp_path, neuron_mask=neuron_mask, method="full", steps=4, save_model=False)
    assert result.trainable_parameters == 4 * INTERMEDIATE_SIZE
    optimizer = torch.load(result.checkpoint_dir / "optimizer.pt", weights_only=True)
    shapes = sorted(tuple(s["exp_avg"].shape) for s in optimizer["state"].values())
    assert shapes == [(1, INTERMEDIATE_SIZE), (3, INTERMEDIATE_SIZE)]
    # the checkpoint holds plain weights: it loads without the mask
    assert "model.layers.0.mlp.down_proj.weight" in load_file(result.checkpoint_dir / "model.safetensors")


class CancelAt:
    """Sink that sets the cancel event once training reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.cancel = threading.Event()
        self.step = step

    def emit(self, event) -> None:
        if isinstance(event, Progress) and event.stage == "train" and event.completed >= self.step:
            self.cancel.set()


def test_cancel_saves_a_checkpoint_and_the_run_resumes_to_the_same_result(tmp_path):
    neuron_mask = NeuronMask("mlp.out", SELECTED, train="unselected")
    reference = run(tmp_path, "reference", neuron_mask=neuron_mask)
    stopper = CancelAt(3)
    with pytest.raises(CancelledError, match="step 3"):
        train(tiny_model("llama"), tiny_tokenizer(), tiny_data(), None, section(), mask=neuron_mask,
              output_dir=tmp_path / "run", seed=0, sink=stopper, cancel=stopper.cancel)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-3" / STATE_FILE).is_file()
    resumed = run(tmp_path, "run", neuron_mask=neuron_mask)
    assert resumed.resumed_from == 3 and resumed.steps == 8
    assert [s for s, _ in resumed.losses] == list(range(1, 9))
    assert resumed.losses == pytest.approx(reference.losses, rel=1e-5)
    assert resumed.frozen_unchanged is True


def test_a_run_killed_after_its_last_checkpoint_resumes_without_training_further(tmp_path):
    # The last step's checkpoint exists when a kill lands in what follows training (validation,
    # saving, evaluation); resuming from it must end where the run ended, not train one step more.
    first = run(tmp_path, "run")
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-8" / STATE_FILE).is_file()
    again = run(tmp_path, "run")
    assert again.resumed_from == 8 and again.steps == 8
    assert again.losses == first.losses
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint-9").exists()
    trained = dict(again.model.named_parameters())
    assert all(torch.equal(p, trained[n]) for n, p in first.model.named_parameters())


def test_an_incomplete_checkpoint_is_removed_and_the_last_complete_one_resumes(tmp_path):
    stopper = CancelAt(3)
    with pytest.raises(CancelledError):  # leaves checkpoint-3, complete
        train(tiny_model("llama"), tiny_tokenizer(), tiny_data(), None, section(), output_dir=tmp_path / "run",
              seed=0, sink=stopper, cancel=stopper.cancel)
    partial = tmp_path / "run" / "checkpoints" / "checkpoint-6"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 4096)  # cut off before the state file
    sink = ListSink()
    resumed = run(tmp_path, sink=sink)
    assert resumed.resumed_from == 3 and resumed.steps == 8
    assert not partial.exists()
    assert any("removed the incomplete checkpoint" in getattr(e, "message", "") for e in sink.events)


def test_a_save_that_fails_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    import errno

    from transformers import Trainer

    original = Trainer._save_checkpoint

    def disk_fills(self, model, trial):
        if self.state.global_step >= 4:  # the second save runs out of space half-way
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True)
            (folder / "model.safetensors").write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))
        return original(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", disk_fills)
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path, steps=8, save_steps=2, save_model=False)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert (root / "checkpoint-2" / STATE_FILE).is_file()


def test_resume_refuses_a_checkpoint_from_another_mask(tmp_path):
    run(tmp_path, neuron_mask=NeuronMask("mlp.out", SELECTED, train="unselected"), steps=2, save_model=False)
    with pytest.raises(RecipeError, match="different mask/recipe.*mask"):
        run(tmp_path, neuron_mask=NeuronMask("mlp.out", {0: [1]}, train="unselected"), steps=2)
    with pytest.raises(RecipeError, match="train.learning_rate"):
        run(tmp_path, neuron_mask=NeuronMask("mlp.out", SELECTED, train="unselected"), steps=2, learning_rate=1e-3)
    fresh = run(tmp_path, neuron_mask=NeuronMask("mlp.out", {0: [1]}, train="unselected"), steps=2, resume=False,
                save_model=False)
    assert fresh.resumed_from is None and fresh.steps == 2


def interrupted_child(output_dir: str) -> None:
    """Run in a subprocess by the kill -9 test: train slowly so the parent can kill it mid-run."""
    torch.set_num_threads(1)

    class Slow:
        def emit(self, event) -> None:
            if isinstance(event, Progress):
                time.sleep(0.3)

    train(tiny_model("llama"), tiny_tokenizer(), tiny_data(), None, section(method="full", steps=10, save_steps=2),
          mask=NeuronMask("mlp.out", SELECTED, train="unselected"), output_dir=output_dir, seed=0, sink=Slow())


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    output_dir = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", f"from tests.unit.test_training import interrupted_child; interrupted_child({str(output_dir)!r})"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(output_dir.glob(f"checkpoints/checkpoint-*/{STATE_FILE}")):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    neuron_mask = NeuronMask("mlp.out", SELECTED, train="unselected")
    changes = dict(method="full", steps=10, save_steps=2, save_model=False)
    resumed = run(tmp_path, "killed", neuron_mask=neuron_mask, **changes)
    reference = run(tmp_path, "reference", neuron_mask=neuron_mask, **changes)
    assert resumed.resumed_from is not None and 2 <= resumed.resumed_from < 10
    assert resumed.steps == 10
    assert resumed.final_loss == pytest.approx(reference.final_loss, rel=1e-5)
    assert resumed.frozen_unchanged is True


def test_qlora_needs_cuda_and_bitsandbytes(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(HardwareError, match="CUDA"):
            run(tmp_path, method="qlora")
        assert not (tmp_path / "run").exists()  # refused before anything started

    def report(cuda: bool, bnb: bool):
        return SimpleNamespace(has_cuda=cuda, cuda_reason=None if cuda else "no GPU",
                               bitsandbytes=SimpleNamespace(usable=bnb, reason=None if bnb else "not installed"))

    monkeypatch.setattr(hardware, "detect_hardware", lambda: report(False, True))
    with pytest.raises(HardwareError, match="CUDA GPU"):
        check_method_supported("qlora")
    monkeypatch.setattr(hardware, "detect_hardware", lambda: report(True, False))
    with pytest.raises(HardwareError, match="bitsandbytes: not installed"):
        check_method_supported("qlora")
    monkeypatch.setattr(hardware, "detect_hardware", lambda: report(True, True))
    check_method_supported("qlora")
    monkeypatch.setattr(hardware, "detect_hardware", lambda: report(False, False))
    check_method_supported("lora")
    check_method_supported("full")


def test_saved_full_model_reloads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    neuron_mask = NeuronMask("mlp.out", SELECTED, *MASK_PRESETS["protect"])
    result = run(tmp_path, neuron_mask=neuron_mask, method="full", steps=4)
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir)
    torch.testing.assert_close(logits(reloaded), logits(result.model), rtol=0, atol=1e-5)
    assert (result.model_dir / "tokenizer.json").is_file()


def test_baked_lesion_behaves_like_the_masked_model(tmp_path):
    from transformers import AutoModelForCausalLM

    neuron_mask = NeuronMask("mlp.out", SELECTED, *MASK_PRESETS["lesion"])
    result = run(tmp_path, neuron_mask=neuron_mask, method="full", steps=4, bake_lesion=True)
    baked = AutoModelForCausalLM.from_pretrained(result.model_dir)
    # the last checkpoint holds the same trained weights without the lesion baked in
    trained = tiny_model("llama")
    trained.load_state_dict(load_file(result.checkpoint_dir / "model.safetensors"), strict=False)
    with mask(trained, neuron_mask):
        masked = logits(trained)
    torch.testing.assert_close(logits(baked), masked, rtol=0, atol=1e-5)
    assert not torch.allclose(logits(trained), masked)


def test_saved_lora_adapter_and_merged_model_reload(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    neuron_mask = NeuronMask("mlp.out", SELECTED, *MASK_PRESETS["protect"])
    result = run(tmp_path, neuron_mask=neuron_mask, steps=4, save_model=False)
    expected = logits(result.model)
    adapter_result = run(tmp_path, "with-outputs", neuron_mask=neuron_mask, steps=4, merge_lora=True)
    assert (adapter_result.adapter_dir / "adapter_model.safetensors").is_file()
    with_adapter = PeftModel.from_pretrained(tiny_model("llama"), adapter_result.adapter_dir)
    torch.testing.assert_close(logits(with_adapter), expected, rtol=0, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(adapter_result.model_dir)
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=1e-5)
    saved_state = json.loads((adapter_result.checkpoint_dir / STATE_FILE).read_text())
    assert saved_state["mask"]["train"] == "unselected" and saved_state["step"] == 4


def test_task_target_stops_training_when_the_score_reaches_it_and_a_rerun_stays_stopped(tmp_path):
    # The check sees the model itself: its score rises with the steps trained (here: checks made).
    scores = iter([0.2, 0.5, 0.96, 0.99])
    seen = []

    def check(model):
        seen.append(model.training)
        return next(scores)

    sink = ListSink()
    result = run(tmp_path, steps=40, save_steps=100, task_target=0.95, task_check_every=3, task_check=check,
                 sink=sink)
    assert result.steps == 9 and result.stopped_at_task_target == 0.95
    assert result.task_checks == [(3, 0.2), (6, 0.5), (9, 0.96)]
    assert any("reached the target 0.95 at step 9" in getattr(e, "message", "") for e in sink.events)
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-9" / STATE_FILE).read_text())
    assert state["stopped_at_task_target"] == 0.95 and state["task_checks"][-1] == [9, 0.96]
    again = run(tmp_path, steps=40, save_steps=100, task_target=0.95, task_check_every=3,
                task_check=lambda model: pytest.fail("a finished target is not checked again"))
    assert again.steps == 9 and again.resumed_from == 9 and again.stopped_at_task_target == 0.95


def test_without_reaching_the_target_training_runs_to_the_cap(tmp_path):
    result = run(tmp_path, steps=8, task_target=0.95, task_check_every=4, task_check=lambda model: 0.1)
    assert result.steps == 8 and result.stopped_at_task_target is None
    assert result.task_checks == [(4, 0.1), (8, 0.1)]


def test_final_scoring_merges_the_adapter_and_leaves_it_as_trained(tmp_path):
    from fnapi.runner import adapter_merged

    result = run(tmp_path, steps=4)
    model = result.model
    assert hasattr(model, "merge_adapter")
    before = logits(model)
    with adapter_merged(model):
        merged = logits(model)
        assert any(getattr(m, "merged", False) for m in model.modules())
    assert not any(getattr(m, "merged", False) for m in model.modules())
    assert torch.allclose(merged, before, atol=1e-4)
    assert torch.allclose(logits(model), before, atol=1e-5)  # unmerged again, up to float rounding
