"""`fnapi estimate`: terms and totals for known sizes, shapes read from a config, token counts read from the
data, the JSON output, and a warning for a run that does not fit a named small device."""

from __future__ import annotations

import json

import pytest
import torch

from fnapi.cli import main
from fnapi.estimate import (
    BACKWARD_OVERHEAD,
    CPU_RUNTIME,
    NF4_BYTES,
    ModelShape,
    Term,
    capture_terms,
    estimate_recipe,
    ica_terms,
    model_shape,
    parse_size,
    train_terms,
    weight_bytes,
)
from fnapi.models.tiny import save_tiny, tiny_model
from fnapi.recipe import Recipe

SHAPE = ModelShape(name="m", family="llama", num_layers=4, hidden=100, intermediate=300, vocab=1000, heads=4,
                   parameters=1_000_000, linear_parameters=800_000,
                   lora_shapes={"q_proj": [(100, 100)] * 4, "down_proj": [(300, 100)] * 4})
RUNTIME = [Term("runtime", CPU_RUNTIME)]


def test_weights_per_dtype_and_quantization():
    assert weight_bytes(SHAPE, "float32", "none") == 4_000_000
    assert weight_bytes(SHAPE, "bfloat16", "none") == 2_000_000
    assert weight_bytes(SHAPE, "bfloat16", "4bit") == int(800_000 * NF4_BYTES + 200_000 * 2)
    assert weight_bytes(SHAPE, "bfloat16", "8bit") < weight_bytes(SHAPE, "bfloat16", "none")


def test_capture_and_ica_terms_for_known_sizes():
    weights = Term("weights", 4_000_000)
    capture = capture_terms(SHAPE, rows=1000, layers=4, width=100, batch_tokens=512, batch_size=8, longest=64,
                            runtime=RUNTIME, weights=weights)
    named = {t.name: t.bytes for t in capture}
    assert named["capture buffer"] == 1000 * 400 * 2  # tokens x neurons x float16
    assert named["forward working set"] == 512 * (4 * 100 + 3 * 300) * 4 + 8 * 4 * 64 * 64 * 4 * 2
    ica = ica_terms(rows=1000, neurons=400, pca_dims=30, capture=capture)
    names = [t.name for t in ica]
    assert "forward working set" not in names and "capture buffer" in names  # the buffer stays for the ICA
    assert {t.name: t.bytes for t in ica}["moments pass"] == 2 * 1000 * 400 * 8


def test_train_terms_for_lora_full_and_checkpointing():
    weights = Term("weights", 4_000_000)
    lora = train_terms(SHAPE, method="lora", dtype="float32", quantization="none", lora_rank=8,
                       lora_targets=["q_proj", "down_proj"], batch_size=2, seq_len=50, gradient_checkpointing=False,
                       runtime=RUNTIME, weights=weights)
    named = {t.name: t.bytes for t in lora}
    assert named["optimizer state"] == 8 * (200 * 4 + 400 * 4) * 16
    assert named["activations"] == int(100 * 4 * (9 * 100 + 4 * 300) * 4 * BACKWARD_OVERHEAD)
    assert named["logits"] == int(100 * 1000 * 12 * BACKWARD_OVERHEAD)
    full = {t.name: t.bytes for t in train_terms(
        SHAPE, method="full", dtype="float32", quantization="none", lora_rank=8, lora_targets=[], batch_size=2,
        seq_len=50, gradient_checkpointing=True, runtime=RUNTIME, weights=weights)}
    assert full["optimizer state"] == 1_000_000 * 12
    assert full["activations"] < named["activations"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("estimate")
    save_tiny("llama", root / "model")
    rows = [{"prompt": f"say {i}", "completion": "word " * (3 + i % 5)} for i in range(30)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "text.txt").write_text("\n\n".join(f"paragraph {i} " + "words and more words " * (2 + i % 4)
                                                for i in range(20)))
    (root / "recipe.yaml").write_text(f"""version: 1
name: est
model: {{name: {root / 'model'}}}
data: {{path: {root / 'data.jsonl'}, max_length: 64}}
template: {{data: [{root / 'text.txt'}], samples: 20, max_length: 32, components: 3}}
mask: {{preset: protect, components: [0]}}
train: {{method: lora, batch_size: 4}}
""")
    return root


def test_shape_from_config_matches_the_model_and_peft(workspace):
    from peft import LoraConfig, get_peft_model

    shape = model_shape(str(workspace / "model"))
    model = tiny_model("llama")
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert (shape.num_layers, shape.hidden, shape.vocab) == (2, 64, model.config.vocab_size)
    targets = list(shape.lora_shapes)
    wrapped = get_peft_model(model, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    assert shape.lora_parameters(8, targets) == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def test_recipe_estimate_counts_the_tokens_the_run_will_see(workspace):
    from fnapi.models.loading import load_model
    from fnapi.networks.capture import capture_activations, load_sequences

    recipe = Recipe.from_yaml(workspace / "recipe.yaml")
    estimate = estimate_recipe(recipe, device="cpu", memory=64 * 2**30)
    assert [s.stage for s in estimate.stages] == ["capture", "ica", "train"]
    loaded = load_model(str(workspace / "model"))
    section = recipe.template
    data = load_sequences(section.data, loaded.tokenizer, samples=section.samples, max_length=section.max_length)
    acts = capture_activations(loaded.model, data.sequences, exclude_token_ids=loaded.tokenizer.all_special_ids,
                               max_length=section.max_length)
    assert estimate.tokens["measured"] and estimate.tokens["capture_rows"] == acts.n_rows
    buffer = {t.name: t.bytes for t in estimate.stage("capture").terms}["capture buffer"]
    assert buffer == acts.values.numel() * 2
    assert 10 < estimate.tokens["train_longest"] <= 64
    assert estimate.fits and not estimate.warnings
    for stage in estimate.stages:
        assert stage.total == sum(t.bytes for t in stage.terms) and stage.biggest()[0].bytes >= stage.biggest()[1].bytes
    upper = estimate_recipe(recipe, device="cpu", memory=64 * 2**30, read_data=False)
    assert upper.tokens["capture_rows"] == 20 * 32 and upper.stage("train").total > estimate.stage("train").total


def test_cli_json(workspace, capsys):
    assert main(["estimate", str(workspace / "recipe.yaml"), "--device", "cpu", "--memory", "64G", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device"] == "cpu" and data["fits"] is True and data["memory"] == 64 * 2**30
    train = next(s for s in data["stages"] if s["stage"] == "train")
    assert {t["name"] for t in train["terms"]} >= {"runtime", "weights", "optimizer state", "activations", "logits"}
    assert train["total"] == sum(t["bytes"] for t in train["terms"])


def test_a_run_that_does_not_fit_a_named_small_device_is_warned_about(workspace, capsys):
    code = main(["estimate", str(workspace / "recipe.yaml"), "--device", "cuda", "--memory", "300M"])
    out = capsys.readouterr().out
    assert code == 1
    assert "warning: train needs about" in out and "but the cuda has 300.0 MiB" in out
    assert "runtime" in out.split("warning: train")[1]  # the biggest terms are named
    assert "lower train.batch_size" in out


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "use cpu or cuda"),
    (["--memory", "lots"], "use a size like 24G"),
])
def test_bad_input_exits_2(workspace, capsys, args, message):
    assert main(["estimate", str(workspace / "recipe.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


def test_quantized_recipe_on_cpu_exits_2(workspace, tmp_path, capsys):
    recipe = Recipe.from_yaml(workspace / "recipe.yaml").replace(**{"model.quantization": "4bit"})
    recipe.to_yaml(tmp_path / "q.yaml")
    assert main(["estimate", str(tmp_path / "q.yaml"), "--device", "cpu"]) == 2
    assert "runs on CUDA GPUs only" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("512M") == 512 * 2**20 and parse_size("24GiB") == 24 * 2**30 and parse_size("100") == 100
    assert torch.finfo(torch.float16).max  # float16 buffers: the estimate counts 2 bytes per value


def test_a_run_refuses_training_that_cannot_fit_and_warns_when_tight(monkeypatch):
    from types import SimpleNamespace

    from fnapi import hardware
    from fnapi.data.templating import TokenizedData
    from fnapi.errors import HardwareError
    from fnapi.estimate import training_peak
    from fnapi.events import ListSink, Log
    from fnapi.runner import check_training_fits

    recipe = Recipe.from_dict({"model": {"name": "tiny"}, "train": {"batch_size": 8}})
    data = TokenizedData(input_ids=[[1] * 40, [1] * 12], labels=[[1] * 40, [1] * 12], truncated=0, dropped=0,
                         template_used="plain", max_length=256, cache_key="")
    model = tiny_model("llama")
    peak = training_peak(recipe, model, 40, "cpu")
    need = sum(t.bytes for t in peak.terms if t.name not in ("runtime", "weights"))

    def with_ram(available):
        monkeypatch.setattr(hardware, "detect_hardware", lambda probe=None: SimpleNamespace(ram_available=available))
        sink = ListSink()
        check_training_fits(recipe, model, data, sink)
        return [e.message for e in sink.of_type(Log) if e.level == "warning"]

    assert with_ram(64 * 2**30) == []
    tight = with_ram(int(need * 1.05))
    assert len(tight) == 1 and "memory is tight" in tight[0] and "batch_size 8" in tight[0]
    with pytest.raises(HardwareError) as refused:
        with_ram(need // 2)
    assert "train.batch_size 8 with rows of 40 tokens" in str(refused.value)
    assert "activations" in str(refused.value) and refused.value.exit_code == 2


def test_cli_times_every_stage_on_this_machine(workspace, capsys):
    assert main(["estimate", str(workspace / "recipe.yaml"), "--device", "cpu", "--memory", "64G", "--json",
                 "--time"]) == 0
    data = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in data["time"]["stages"]}
    assert {"model", "capture", "ica", "baseline", "train", "evaluate"} <= set(stages)
    assert stages["train"]["detail"].startswith("100 steps of about ")  # the recipe's default steps
    assert data["time"]["seconds"] == pytest.approx(sum(s["seconds"] for s in stages.values()), abs=0.5)
    assert main(["estimate", str(workspace / "recipe.yaml"), "--device", "cpu", "--memory", "64G", "--time"]) == 0
    out = capsys.readouterr().out
    assert "time on this machine: about " in out and "  train " in out
