"""``fnapi export``: a run's model as a transformers folder, a GGUF file or a hub upload, behaving
like the run's model with its adapter and mask; bad input exits 2 and leaves nothing half-written."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch

from fnapi.cli import main
from fnapi.eval_target import ask_run, load_trained
from fnapi.events import ListSink, StageStarted
from fnapi.exporting import export
from fnapi.masking import mask
from fnapi.models.generation import answer
from fnapi.models.tiny import save_tiny, tiny_tokenizer
from fnapi.recipe import Recipe
from fnapi.report import ForgettingReport, Score
from tests.tui.helpers import add_random_adapter, demo_template

PROMPT = "What is two plus two?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama")


def _lora_run(folder, tiny, preset: str = "none"):
    """A run folder as a LoRA run leaves it: recipe, random adapter, and for a mask its template."""
    folder.mkdir(parents=True)
    changes = {"model.name": str(tiny), "name": "tiny-export"}
    if preset != "none":
        demo_template().save(folder / "template.json")
        changes.update({"template.path": str(folder / "template.json"), "mask.preset": preset,
                        "mask.components": [0, 1]})
    Recipe().replace(**changes).to_yaml(folder / "recipe.yaml")
    add_random_adapter(folder, str(tiny))
    return folder


def _full_run(folder, model_dir):
    """A run folder as full fine-tuning leaves it: recipe and model/ (here: ``model_dir`` itself)."""
    folder.mkdir(parents=True)
    Recipe().replace(**{"model.name": str(model_dir), "train.method": "full"}).to_yaml(folder / "recipe.yaml")
    import shutil

    shutil.copytree(model_dir, folder / "model")
    return folder


def _run_logits(run_dir, ids):
    """Logits of the run's model as trained: adapter in place, ablation hooks on."""
    trained = load_trained(run_dir)
    hooks = mask(trained.model, trained.ablation, train="all") if trained.ablation is not None \
        else contextlib.nullcontext()
    with hooks, torch.no_grad():
        return trained.model(ids).logits


def _ids(text=PROMPT):
    return torch.tensor([tiny_tokenizer()(text)["input_ids"]])


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- --to hf ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["none", "lesion"])
def test_the_hf_folder_answers_like_the_run_with_its_adapter_and_mask(tmp_path, tiny, preset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = _lora_run(tmp_path / "run", tiny, preset)
    sink = ListSink()
    result = export(run_dir, "hf", tmp_path / "out", sink=sink)

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    answers = ask_run(run_dir, PROMPT, max_new_tokens=8)
    assert answers.tuned != answers.base  # the adapter (and mask) change the answer, so parity means something
    assert answer(exported, tokenizer, PROMPT, max_new_tokens=8) == answers.tuned
    with torch.no_grad():
        assert torch.allclose(exported(_ids()).logits, _run_logits(run_dir, _ids()), atol=1e-4)
    assert result.max_abs_logit_diff is not None and result.max_abs_logit_diff <= result.tolerance
    assert result.top1_agreement == 1.0
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {f.path for f in result.files}
    assert result.bytes == sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    assert {"model", "merge", "write", "verify"} <= {e.stage for e in sink.of_type(StageStarted)}
    if preset == "lesion":  # the switched-off channels are zeros in the weights themselves
        for layer, channels in {0: [1, 2, 3, 10, 11], 1: [4, 5, 12, 13, 14, 15]}.items():
            down = exported.model.layers[layer].mlp.down_proj.weight
            assert not down[channels].any() and down.abs().sum() > 0
    assert _leftovers(tmp_path) == []


def test_a_full_fine_tuning_run_with_preserve_exports_its_model_with_the_ablation(tmp_path, tiny):
    from transformers import AutoModelForCausalLM

    base = save_tiny("llama", tmp_path / "trained", seed=3)
    run_dir = _full_run(tmp_path / "run", base)
    demo_template().save(run_dir / "template.json")
    recipe = Recipe.from_yaml(run_dir / "recipe.yaml").replace(**{
        "template.path": str(run_dir / "template.json"), "mask.preset": "preserve", "mask.components": [0]})
    recipe.to_yaml(run_dir / "recipe.yaml")
    code = main(["export", str(run_dir), "--to", "hf", str(tmp_path / "out")])
    assert code == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(exported(_ids()).logits, _run_logits(run_dir, _ids()), atol=1e-4)
    kept = {0: [1, 2, 3], 1: [4, 5]}  # preserve: only the networks' neurons stay on
    for layer, channels in kept.items():
        down = exported.model.layers[layer].mlp.down_proj.weight
        assert down[channels].abs().sum() > 0
        assert not down[[c for c in range(64) if c not in channels]].any()


def test_an_existing_folder_is_refused_unless_overwrite(tmp_path, tiny, capsys):
    run_dir = _lora_run(tmp_path / "run", tiny)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", str(run_dir), "--to", "hf", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert main(["export", str(run_dir), "--to", "hf", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "mine.txt").exists()
    assert _leftovers(tmp_path) == []


# ---- --to gguf -------------------------------------------------------------------------------------------

#: What each type may cost at most, as max |logit difference| over the largest |logit| (at least 1).
GGUF_BOUNDS = {"f32": 1e-5, "f16": 5e-3, "q8_0": 5e-2}


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory, tiny):
    return _lora_run(tmp_path_factory.mktemp("gguf") / "run", tiny, "lesion")


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "q8_0"])
def test_gguf_round_trips_through_transformers_within_its_type_tolerance(tmp_path, gguf_run, gguf_type):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = tmp_path / f"model.{gguf_type}.gguf"
    result = export(gguf_run, "gguf", file, gguf_type=gguf_type)
    assert result.path == file and result.bytes == file.stat().st_size
    assert result.tokens_match is True

    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=file.name, dtype=torch.float32).eval()
    reference = _run_logits(gguf_run, _ids())
    with torch.no_grad():
        diff = float((back(_ids()).logits - reference).abs().max())
    assert diff <= GGUF_BOUNDS[gguf_type] * max(1.0, float(reference.abs().max()))
    assert result.max_abs_logit_diff is not None and result.max_abs_logit_diff >= diff * 0.5
    assert result.top1_agreement == 1.0 if gguf_type == "f32" else result.top1_agreement > 0.9

    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=file.name)
    original = tiny_tokenizer()
    for text in (PROMPT, "The capital of France is Paris.", "12 + 30 = 42 <|im_end|>"):
        assert tokenizer(text)["input_ids"] == original(text)["input_ids"]
    assert tokenizer.chat_template == original.chat_template

    reader = gguf.GGUFReader(file)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_norm.weight"] == "F32"  # norms stay f32, as llama.cpp expects
    assert kinds["blk.0.ffn_down.weight"] == gguf_type.upper()
    assert kinds["token_embd.weight"] == gguf_type.upper() and "output.weight" in kinds  # not tied
    assert str(reader.fields["tokenizer.ggml.model"].contents()) == "gpt2"
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == original.eos_token_id
    if gguf_type == "f32":  # lossless: the same greedy answer as the run
        assert answer(back, original, PROMPT, max_new_tokens=8) == ask_run(gguf_run, PROMPT, max_new_tokens=8).tuned


def test_gguf_sizes_follow_the_type(tmp_path, gguf_run):
    sizes = {t: export(gguf_run, "gguf", tmp_path / f"m.{t}.gguf", gguf_type=t).bytes for t in ("f32", "f16", "q8_0")}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_q8_0_is_refused_for_rows_that_are_not_blocks_of_32_and_f16_still_works(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=120, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    odd = tmp_path / "odd"
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(odd)
    tokenizer.save_pretrained(odd)
    run_dir = _full_run(tmp_path / "run", odd)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["export", str(run_dir), "--to", "gguf", str(out / "odd.gguf"), "--type", "q8_0"])
    assert code == 2
    assert list(out.iterdir()) == []
    assert main(["export", str(run_dir), "--to", "gguf", str(out / "odd.gguf"), "--type", "f16"]) == 0
    assert [p.name for p in out.iterdir()] == ["odd.gguf"]


def test_q8_0_refusal_names_the_widths(tmp_path, capsys):
    from transformers import LlamaConfig

    from fnapi.errors import ExportError
    from fnapi.exporting import _check_gguf_config

    config = LlamaConfig(hidden_size=48, intermediate_size=128, num_attention_heads=4)
    with pytest.raises(ExportError, match=r"blocks of 32 .*hidden_size 48"):
        _check_gguf_config(config, "q8_0")
    _check_gguf_config(config, "f16")


def test_an_architecture_gguf_export_does_not_cover_is_refused_by_name(tmp_path, capsys):
    run_dir = _full_run(tmp_path / "run", save_tiny("gpt_neox", tmp_path / "neox"))
    start = time.monotonic()
    code = main(["export", str(run_dir), "--to", "gguf", str(tmp_path / "neox.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 20
    assert "GPTNeoXForCausalLM" in err and "LlamaForCausalLM" in err and "--to hf" in err
    assert not (tmp_path / "neox.gguf").exists() and _leftovers(tmp_path) == []


def test_a_failed_check_leaves_no_file_behind(tmp_path, gguf_run, monkeypatch):
    from fnapi import exporting
    from fnapi.errors import ExportError

    def broken(*args, **kwargs):
        raise ExportError("the exported GGUF file does not reproduce the run's model")

    monkeypatch.setattr(exporting, "_verify_gguf", broken)
    with pytest.raises(ExportError):
        export(gguf_run, "gguf", tmp_path / "model.gguf")
    assert list(tmp_path.iterdir()) == []


# ---- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--to", "onnx", "x"], "--to 'onnx' is not an export target"),
    (["--to", "gguf", "x.gguf", "--type", "q4_k"], "--type 'q4_k' is not a GGUF type"),
    (["--to", "hub", "not a repo id", "--dry-run"], "is not a repository id"),
])
def test_bad_options_exit_2_with_a_clear_message(tmp_path, tiny, capsys, args, message):
    run_dir = _lora_run(tmp_path / "run", tiny)
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["export", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("to, dest", [("hf", "out"), ("gguf", "out.gguf"), ("hub", "me/model")])
def test_a_run_without_weights_exits_2(tmp_path, tiny, capsys, to, dest):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Recipe().replace(**{"model.name": str(tiny)}).to_yaml(run_dir / "recipe.yaml")
    assert main(["export", str(run_dir), "--to", to, str(tmp_path / dest) if to != "hub" else dest, "--dry-run"]
                if to == "hub" else ["export", str(run_dir), "--to", to, str(tmp_path / dest)]) == 2
    assert "has no trained weights" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--to", "hf", str(tmp_path / "out")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


# ---- --to hub --------------------------------------------------------------------------------------------

def _add_report(run_dir):
    report = ForgettingReport(
        name="tiny-export",
        task=Score(0.1, 0.8, 50, "exact match", [0.05, 0.2], [0.7, 0.9], [0.55, 0.8]),
        probes=Score(0.6, 0.58, 120, "accuracy", [0.5, 0.7], [0.49, 0.67], [-0.05, 0.01]),
        kl_to_base=0.0123, kl_ci95=[0.01, 0.015], trainable_parameters=1_000, total_parameters=140_096, steps=4,
        method="lora", mask={"preset": "lesion", "ablate": "selected", "train": "all", "components": [0, 1],
                             "in_words": "2 networks, 11 neurons at mlp.out in 2 layers: switched off in the forward "
                                         "pass while the whole model trains"})
    (run_dir / "report.json").write_text(json.dumps(report.to_dict()))


def test_a_hub_dry_run_lists_the_upload_and_writes_the_card_without_network(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any contact would fail loudly
    run_dir = _lora_run(tmp_path / "run", tiny, "lesion")
    _add_report(run_dir)
    result = export(run_dir, "hub", "me/tiny-export", dry_run=True)
    names = {f.path for f in result.files}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= names
    assert result.private is True and result.repo_id == "me/tiny-export" and result.url is None
    assert all(f.bytes > 0 for f in result.files)
    card = result.card
    assert "library_name: transformers" in card and "- **Method:** lora" in card
    assert "switched off in the forward pass while the whole model trains" in card  # mask in words
    assert "zeroed in these weights" in card
    assert "3 networks found by ica at `mlp.out` (width 64)" in card and "builtin:text" in card  # template
    assert "| task (exact match), n=50 | 0.100 | 0.800 [0.700, 0.900] | +0.700 [0.550, 0.800] |" in card
    assert "Probe score retained" in card
    assert _leftovers(run_dir) == []  # the staged upload is gone

    assert main(["export", str(run_dir), "--to", "hub", "me/tiny-export", "--dry-run", "--public"]) == 0
    out = capsys.readouterr().out
    assert "me/tiny-export (public)" in out and "model.safetensors" in out and "README.md" in out
    assert "- **Method:** lora" in out  # the card is shown for review before an upload


def test_an_adapter_only_dry_run_lists_the_adapter_and_a_peft_card(tmp_path, tiny):
    run_dir = _lora_run(tmp_path / "run", tiny)
    result = export(run_dir, "hub", "me/tiny-adapter", adapter_only=True, dry_run=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} == {f.path for f in result.files}
    assert "library_name: peft" in result.card and "PeftModel.from_pretrained" in result.card
    assert "no scores" in result.card  # this run has no report.json


def test_adapter_only_is_refused_for_a_run_that_ablates(tmp_path, tiny, capsys):
    run_dir = _lora_run(tmp_path / "run", tiny, "lesion")
    assert main(["export", str(run_dir), "--to", "hub", "me/x", "--adapter-only", "--dry-run"]) == 2
    assert "an adapter cannot carry" in capsys.readouterr().err


def test_an_unreachable_hub_exits_2_in_seconds_and_never_prints_the_token(tmp_path, tiny, capsys, monkeypatch):
    token = "hf_exportTestTokenAbcdefgh12345"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", token)
    run_dir = _lora_run(tmp_path / "run", tiny)
    start = time.monotonic()
    code = main(["export", str(run_dir), "--to", "hub", "me/x"])
    captured = capsys.readouterr()
    assert code == 2 and time.monotonic() - start < 15
    assert "cannot be reached" in captured.err
    assert token not in captured.err + captured.out and token[-8:] not in captured.err + captured.out
    assert _leftovers(run_dir) == []


def test_offline_flag_and_missing_token_exit_2(tmp_path, tiny, capsys, monkeypatch):
    run_dir = _lora_run(tmp_path / "run", tiny)
    assert main(["export", str(run_dir), "--to", "hub", "me/x"]) == 2  # no token in the test environment
    assert "no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setenv("HF_TOKEN", "hf_exportTestTokenAbcdefgh12345")
    start = time.monotonic()
    assert main(["export", str(run_dir), "--to", "hub", "me/x"]) == 2  # HF_HUB_OFFLINE=1 from conftest
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err and time.monotonic() - start < 5
