"""``fnapi detect``: what this machine has, and the training settings that fit it."""

from __future__ import annotations

import json
from typing import Optional

import typer

EMBEDDED_MODEL = "smollm2-135m-instruct"


def detect(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object {hardware, recommendation}"),
    model_params: Optional[int] = typer.Option(None, "--model-params", min=1, help="model size in parameters"),
    model: Optional[str] = typer.Option(
        None, "--model", help="count the parameters of this model from its config (local folder or cached hub id)"),
    method: str = typer.Option("lora", "--method", help="lora, qlora or full"),
    seq_len: int = typer.Option(256, "--max-length", min=1, help="tokens per training sequence"),
) -> None:
    """Show devices, memory, disk and bitsandbytes, then recommended device/dtype/quantization/batch with reasons."""
    from fnapi.errors import FnapiError
    from fnapi.hardware import EMBEDDED_MODEL_PARAMETERS, detect_hardware, recommend

    if model_params is not None and model is not None:
        raise FnapiError("--model-params and --model both give the model size; pass only one")
    if method not in ("lora", "qlora", "full"):
        raise FnapiError(f"--method: unknown method {method!r}; use lora, qlora or full")
    if model_params is None:
        model_params = _parameters_of(model) if model is not None else EMBEDDED_MODEL_PARAMETERS
    report = detect_hardware()
    rec = recommend(report, model_params, method=method, seq_len=seq_len)
    if as_json:
        payload = {"hardware": report.to_dict(), "recommendation": {**rec.to_dict(), "model_parameters": model_params}}
        print(json.dumps(payload, indent=2))
        return
    _print_tables(report, rec, model_params)


def _parameters_of(spec: str) -> int:
    """Parameter count of ``spec`` from its config alone (weights are never loaded)."""
    from fnapi.errors import ModelError
    from fnapi.hardware import EMBEDDED_MODEL_PARAMETERS

    if spec == EMBEDDED_MODEL:
        return EMBEDDED_MODEL_PARAMETERS
    hint = "Pass the size with --model-params N instead."
    if spec.lower().endswith(".gguf"):
        raise ModelError(f"--model {spec}: a .gguf file has no config to count parameters from", hint=hint)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        # local_files_only: a hub that cannot be reached would otherwise stall for a long time.
        config = AutoConfig.from_pretrained(spec, local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"--model {spec}: cannot read its config offline ({type(exc).__name__}: {exc})", hint=hint) from None
    return sum(p.numel() for p in skeleton.parameters())


def _print_tables(report, rec, model_params: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from fnapi.hardware import format_bytes

    console = Console(highlight=False)
    table = Table(title="Hardware", show_lines=False)
    table.add_column("item")
    table.add_column("value")
    table.add_column("notes")
    for gpu in report.cuda_devices:
        free = f"{format_bytes(gpu.free_memory)} free" if gpu.free_memory is not None else ""
        table.add_row(f"cuda:{gpu.index}", f"{gpu.name}, {format_bytes(gpu.total_memory)}",
                      f"cc {gpu.capability[0]}.{gpu.capability[1]}, bf16 {'yes' if gpu.supports_bf16 else 'no'} {free}".strip())
    if not report.cuda_devices:
        table.add_row("cuda", "none", report.cuda_reason or "")
    table.add_row("mps", "available" if report.mps_available else "no", report.mps_reason or "")
    cpu = report.cpu
    if cpu is not None:
        table.add_row("cpu", cpu.model, f"{cpu.physical_cores} physical / {cpu.logical_cores} logical cores")
    else:
        table.add_row("cpu", "unknown", report.cpu_reason or "")
    table.add_row("ram", f"{format_bytes(report.ram_available)} available of {format_bytes(report.ram_total)}",
                  report.ram_reason or "")
    table.add_row("disk", f"{format_bytes(report.disk_free)} free", report.disk_reason or f"at {report.disk_path}")
    bnb = report.bitsandbytes
    table.add_row("bitsandbytes", "usable" if bnb.usable else ("installed" if bnb.installed else "not installed"),
                  bnb.reason or (bnb.version or ""))
    table.add_row("torch", report.torch_version or "missing", report.torch_reason or "")
    console.print(table, markup=False)

    device = rec.device if rec.device_index is None else f"{rec.device}:{rec.device_index}"
    console.print(f"\nRecommended for {model_params:,} parameters ({rec.method}):", markup=False)
    console.print(
        f"  device {device}, dtype {rec.dtype}, quantization {rec.quantization}, batch {rec.batch_size} "
        f"x accumulation {rec.gradient_accumulation} (effective {rec.effective_batch}), "
        f"~{format_bytes(rec.estimated_memory)} of {format_bytes(rec.memory_budget)} budget", markup=False)
    console.print("Why:", markup=False)
    for reason in rec.reasons:
        console.print(f"  - {reason}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("detect")(detect)
