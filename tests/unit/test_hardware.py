"""Hardware detection and recommendations, on faked machines (no GPU is needed to run these)."""

from __future__ import annotations

import json

import pytest

from fnapi import hardware
from fnapi.cli import main
from fnapi.errors import HardwareError
from fnapi.hardware import (
    BitsAndBytesStatus,
    CpuInfo,
    CudaDevice,
    Unavailable,
    check_quantization_supported,
    detect_hardware,
    require_cuda,
)
from fnapi.sizing import recommend

GiB = 1024**3


def llama_shape(hidden, intermediate, layers, heads, vocab, name):
    """A model's shape from a config alone (meta device), as `fnapi detect --model` reads it."""
    from transformers import LlamaConfig

    from fnapi.estimate import shape_of_config

    return shape_of_config(LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                                       num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab), name)


@pytest.fixture(scope="module")
def embedded():
    from fnapi.estimate import model_shape

    return model_shape("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def llama_7b():
    return llama_shape(4096, 11008, 32, 32, 32000, "llama-7b")


class FakeProbe:
    """Answers the probe questions from fixed values; ``None`` for a GPU list means "no CUDA"."""

    def __init__(self, gpus=(), mps=False, bnb=False, ram_available=16 * GiB, broken=()):
        self.gpus = list(gpus)
        self.mps = mps
        self.bnb = bnb
        self.ram_available = ram_available
        self.broken = set(broken)

    def _maybe_break(self, name):
        if name in self.broken:
            raise RuntimeError(f"{name} exploded")

    def torch_version(self):
        return "2.99.0+fake"

    def cuda_devices(self):
        self._maybe_break("cuda")
        if not self.gpus:
            raise Unavailable("no CUDA device is visible")
        return self.gpus

    def mps_available(self):
        if not self.mps:
            raise Unavailable("no Apple GPU")
        return True

    def cpu(self):
        self._maybe_break("cpu")
        return CpuInfo(model="Fake CPU 9000", physical_cores=6, logical_cores=12)

    def memory(self):
        return 32 * GiB, self.ram_available

    def disk_free(self, path):
        return 100 * GiB

    def bitsandbytes(self):
        if not self.bnb:
            return BitsAndBytesStatus(installed=False, importable=False, reason="bitsandbytes is not installed")
        return BitsAndBytesStatus(installed=True, importable=True, version="0.45.0")


def gpu(name, memory_gib, capability, index=0):
    return CudaDevice(index=index, name=name, total_memory=memory_gib * GiB, capability=capability,
                      free_memory=memory_gib * GiB)


A100 = gpu("NVIDIA A100-SXM4-80GB", 80, (8, 0))
T4 = gpu("Tesla T4", 16, (7, 5))


def test_no_gpu_recommends_cpu_float32_without_quantization(embedded):
    report = detect_hardware(FakeProbe())
    assert not report.has_cuda and report.cuda_reason == "no CUDA device is visible"
    assert report.cpu.physical_cores == 6 and report.cpu.logical_cores == 12
    assert not report.bitsandbytes.usable
    rec = recommend(report, embedded)
    assert (rec.device, rec.dtype, rec.quantization) == ("cpu", "float32", "none")
    assert rec.fits
    assert rec.batch_size * rec.gradient_accumulation >= 16
    text = "\n".join(rec.reasons)
    assert "device cpu" in text and "dtype float32" in text and "quantization none" in text


def test_a100_gets_bfloat16_and_large_batch(embedded):
    rec = recommend(detect_hardware(FakeProbe(gpus=[A100])), embedded)
    assert (rec.device, rec.device_index, rec.dtype, rec.quantization) == ("cuda", 0, "bfloat16", "none")
    assert rec.batch_size == 16 and rec.gradient_accumulation == 1
    assert any("8.0" in r and "bf16" in r for r in rec.reasons)


def test_t4_gets_float16_because_capability_7_5_lacks_bf16(embedded):
    report = detect_hardware(FakeProbe(gpus=[T4]))
    assert report.cuda_devices[0].supports_bf16 is False
    rec = recommend(report, embedded)
    assert rec.dtype == "float16"
    assert any("7.5" in r for r in rec.reasons)


def test_best_of_two_gpus_is_the_larger_one(embedded):
    report = detect_hardware(FakeProbe(gpus=[gpu("small", 8, (8, 6), 0), gpu("big", 24, (8, 9), 1)]))
    rec = recommend(report, embedded)
    assert rec.device_index == 1
    assert any("2 GPUs" in r for r in rec.reasons)


def test_small_gpu_and_large_model_uses_4bit_when_bitsandbytes_works(llama_7b):
    small = gpu("RTX 3060", 12, (8, 6))
    with_bnb = recommend(detect_hardware(FakeProbe(gpus=[small], bnb=True)), llama_7b)
    assert with_bnb.quantization == "4bit"
    assert with_bnb.dtype == "bfloat16"
    assert any(r.startswith("quantization 4bit") for r in with_bnb.reasons)

    without_bnb = recommend(detect_hardware(FakeProbe(gpus=[small], bnb=False)), llama_7b)
    assert without_bnb.quantization == "none"
    assert not without_bnb.fits
    assert any("4-bit is unavailable" in r for r in without_bnb.reasons)


def test_batch_shrinks_and_accumulation_grows_when_memory_is_tight(embedded):
    roomy = recommend(detect_hardware(FakeProbe(ram_available=64 * GiB)), embedded)
    tight = recommend(detect_hardware(FakeProbe(ram_available=3 * GiB)), embedded)
    assert tight.batch_size < roomy.batch_size
    assert tight.gradient_accumulation > roomy.gradient_accumulation
    assert tight.effective_batch >= 16 and tight.estimated_memory <= tight.memory_budget


def test_mps_uses_float32(embedded):
    rec = recommend(detect_hardware(FakeProbe(mps=True)), embedded)
    assert (rec.device, rec.dtype) == ("mps", "float32")


def test_a_failing_probe_becomes_a_reason_not_a_crash():
    report = detect_hardware(FakeProbe(broken={"cuda", "cpu"}))
    assert report.cuda_devices == [] and "cuda exploded" in report.cuda_reason
    assert report.cpu is None and "cpu exploded" in report.cpu_reason
    json.dumps(report.to_dict())  # still serialisable


def test_bitsandbytes_without_cuda_is_not_usable():
    report = detect_hardware(FakeProbe(bnb=True))
    assert report.bitsandbytes.importable and not report.bitsandbytes.usable
    assert "no CUDA" in report.bitsandbytes.reason


def test_quantization_check_raises_on_cpu():
    report = detect_hardware(FakeProbe(bnb=True))
    with pytest.raises(HardwareError, match="4-bit loading needs a CUDA GPU") as info:
        check_quantization_supported("4bit", report)
    assert "quantization: none" in info.value.hint
    with pytest.raises(HardwareError, match="8-bit"):
        check_quantization_supported("8bit", report)
    check_quantization_supported("none", report)


def test_quantization_check_on_gpu_needs_bitsandbytes():
    with pytest.raises(HardwareError, match="bitsandbytes"):
        check_quantization_supported("4bit", detect_hardware(FakeProbe(gpus=[T4])))
    check_quantization_supported("4bit", detect_hardware(FakeProbe(gpus=[T4], bnb=True)))


def test_require_cuda():
    with pytest.raises(HardwareError, match="multi-GPU launch needs a CUDA GPU"):
        require_cuda("multi-GPU launch", detect_hardware(FakeProbe()))
    assert require_cuda("x", detect_hardware(FakeProbe(gpus=[T4]))).name == "Tesla T4"


def test_disk_is_measured_at_the_nearest_existing_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("FNAPI_CACHE", str(tmp_path / "not" / "yet" / "there"))
    seen = []

    class Probe(FakeProbe):
        def disk_free(self, path):
            seen.append(path)
            return 1

    report = detect_hardware(Probe())
    assert seen == [tmp_path] and report.disk_path == str(tmp_path)


def test_real_machine_detection_does_not_crash():
    report = detect_hardware()
    data = report.to_dict()
    assert data["cpu"]["logical_cores"] >= 1
    assert data["ram"]["total"] > 0


@pytest.fixture
def fake_machine(monkeypatch):
    monkeypatch.setattr(hardware, "SystemProbe", lambda: FakeProbe(gpus=[T4]))


def test_detect_json_through_the_cli(fake_machine, capsys, embedded):
    assert main(["detect", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"hardware", "recommendation"}
    assert {"cuda", "mps", "cpu", "ram", "disk", "bitsandbytes", "torch"} <= set(data["hardware"])
    assert data["hardware"]["cuda"]["devices"][0]["capability"] == "7.5"
    rec = data["recommendation"]
    assert rec["dtype"] == "float16" and rec["model_parameters"] == embedded.parameters
    assert rec["model"] == "smollm2-135m-instruct"
    assert rec["reasons"] and rec["effective_batch"] >= 16


def test_detect_table_shows_cpu_cores_and_reasons(fake_machine, capsys, tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000).save_pretrained(tmp_path)
    assert main(["detect", "--model", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Fake CPU 9000" in out and "6 physical / 12 logical cores" in out
    assert "Tesla T4" in out and "6,738,415,616 parameters" in out
    assert "dtype float16" in out


def test_detect_refuses_a_model_it_cannot_read_offline(fake_machine, capsys, tmp_path):
    assert main(["detect", "--model", str(tmp_path / "nowhere")]) == 2
    assert f"model path {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert main(["detect", "--model", "nobody/not-in-the-cache"]) == 2
    assert "model nobody/not-in-the-cache: cannot read its config offline" in capsys.readouterr().err


def test_detect_counts_parameters_from_a_local_config(fake_machine, tmp_path, capsys):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4).save_pretrained(tmp_path)
    assert main(["detect", "--json", "--model", str(tmp_path)]) == 0
    params = json.loads(capsys.readouterr().out)["recommendation"]["model_parameters"]
    # 2 embeddings (untied) + 2 layers of attention, MLP and norms + final norm
    assert params == 2 * 100 * 32 + 2 * (4 * 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32


def test_the_batch_detect_recommends_is_one_that_estimate_says_fits(tmp_path, capsys, monkeypatch):
    """One memory model: `fnapi detect` sizes the batch with the estimate `fnapi estimate` and
    `fnapi run` use, so its batch fits by that estimate, and twice that batch does not."""
    from fnapi.estimate import estimate_recipe
    from fnapi.recipe import Recipe

    ram = 3 * GiB
    monkeypatch.setattr(hardware, "SystemProbe", lambda: FakeProbe(ram_available=ram))
    assert main(["detect", "--json", "--max-length", "256"]) == 0
    rec = json.loads(capsys.readouterr().out)["recommendation"]
    assert 1 <= rec["batch_size"] < 16  # the budget, not the target, limits it
    recipe = Recipe.model_validate({"version": 1, "name": "agree", "model": {"name": "smollm2-135m-instruct"},
                                    "data": {"path": "builtin:skill", "max_length": 256},
                                    "train": {"method": "lora", "batch_size": rec["batch_size"]}})
    fits = estimate_recipe(recipe, device="cpu", memory=rec["memory_budget"], read_data=False)
    assert fits.fits and fits.stage("train").total == rec["estimated_memory"]
    double = recipe.replace(**{"train.batch_size": 2 * rec["batch_size"]})
    assert not estimate_recipe(double, device="cpu", memory=rec["memory_budget"], read_data=False).fits
