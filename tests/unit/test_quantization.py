"""4-bit/8-bit loading decisions on faked hardware: refused clearly without CUDA before anything is read,
the QLoRA settings on a (faked) GPU, one GPU per process under a launcher; CUDA-only recipes exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from fnapi import hardware
from fnapi.cli import main
from fnapi.errors import HardwareError
from fnapi.hardware import BitsAndBytesStatus, CudaDevice, HardwareReport
from fnapi.models import loading
from fnapi.models.loading import load_model
from fnapi.models.tiny import save_tiny, tiny_model, tiny_tokenizer
from fnapi.recipe import ModelSection

GiB = 2**30


def report(cuda: bool, bnb: bool) -> HardwareReport:
    machine = HardwareReport(cuda_reason=None if cuda else "no CUDA device is visible")
    if cuda:
        machine.cuda_devices = [CudaDevice(0, "Fake A100", 80 * GiB, (8, 0), 80 * GiB),
                                CudaDevice(1, "Fake A100", 80 * GiB, (8, 0), 80 * GiB)]
    machine.bitsandbytes = BitsAndBytesStatus(installed=bnb, importable=bnb, usable=bnb and cuda,
                                              reason=None if bnb and cuda else "bitsandbytes is not installed")
    return machine


@pytest.fixture
def machine(monkeypatch):
    """Set the faked machine with ``machine(cuda=..., bnb=...)``; records what the loader would load."""
    loads = []

    def fake_load(source, options, progress):
        loads.append(options)
        return tiny_model("llama"), tiny_tokenizer(), "fake:"

    monkeypatch.setattr(loading, "_load", fake_load)

    def configure(cuda: bool, bnb: bool):
        monkeypatch.setattr(hardware, "detect_hardware", lambda probe=None: report(cuda, bnb))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda)
        return loads

    return configure


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_no_cuda_refuses_before_loading_anything(machine, kind):
    loads = machine(cuda=False, bnb=True)
    with pytest.raises(HardwareError) as info:
        load_model(ModelSection(name="org/any", quantization=kind))
    assert "needs a CUDA GPU" in info.value.message and "no CUDA device is visible" in info.value.message
    assert "model.quantization: none" in info.value.hint
    assert loads == []


def test_cuda_without_bitsandbytes_says_how_to_install(machine):
    loads = machine(cuda=True, bnb=False)
    with pytest.raises(HardwareError, match="bitsandbytes is not installed") as info:
        load_model(ModelSection(name="org/any", quantization="4bit"))
    assert "pip install" in info.value.hint
    assert loads == []


def test_4bit_on_a_gpu_uses_the_qlora_settings(machine):
    loads = machine(cuda=True, bnb=True)
    load_model(ModelSection(name="org/any", quantization="4bit"))
    (options,) = loads
    config = options["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 == options["dtype"]
    assert options["device_map"] == {"": "cuda"}


def test_8bit_and_each_process_on_its_own_gpu(machine, monkeypatch):
    loads = machine(cuda=True, bnb=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    load_model(ModelSection(name="org/any", quantization="8bit", dtype="float16"))
    (options,) = loads
    assert options["quantization_config"].load_in_8bit
    assert options["device_map"] == {"": "cuda:1"}


def test_quantization_on_an_explicit_cpu_device_is_refused(machine):
    machine(cuda=True, bnb=True)
    with pytest.raises(HardwareError, match="runs on a CUDA GPU, but model.device is cpu"):
        load_model(ModelSection(name="org/any", quantization="4bit", device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("extra, message", [
    ("model: {name: MODEL, quantization: 4bit}", "4-bit loading needs a CUDA GPU"),
    ("model: {name: MODEL}\ntrain: {method: qlora}", "train.method qlora needs a CUDA GPU"),
    ("model: {name: MODEL}\ndistributed: {accelerate_config: fsdp.yaml}", "asks for FSDP"),
])
def test_cuda_only_recipes_exit_2_on_this_cpu_machine(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    save_tiny("llama", tmp_path / "model")
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    (tmp_path / "recipe.yaml").write_text(f"version: 1\nname: gpu-only\ndata: {{path: data.jsonl}}\n"
                                          f"eval: {{enabled: false}}\n{extra.replace('MODEL', 'model')}\n")
    assert main(["run", "recipe.yaml"]) == 2
    assert message in capsys.readouterr().err
