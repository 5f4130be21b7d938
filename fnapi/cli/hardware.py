"""``fnapi detect``: what this machine has, and the training settings that fit it."""

from __future__ import annotations

import json

import typer


def detect(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object {hardware, recommendation}"),
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model",
        help="the model to size the batch for, read from its config alone: the embedded name, a local folder, "
             "a .gguf file or a cached hub id"),
    method: str = typer.Option("lora", "--method", help="lora, qlora or full"),
    seq_len: int = typer.Option(256, "--max-length", min=1, help="tokens per training sequence"),
) -> None:
    """Show devices, memory, disk and bitsandbytes, then recommended device/dtype/quantization/batch with reasons."""
    from fnapi.errors import FnapiError
    from fnapi.estimate import model_shape
    from fnapi.hardware import detect_hardware
    from fnapi.sizing import recommend

    if method not in ("lora", "qlora", "full"):
        raise FnapiError(f"--method: unknown method {method!r}; use lora, qlora or full")
    shape = model_shape(model)  # the same memory model as `fnapi estimate` and `fnapi run`
    report = detect_hardware()
    rec = recommend(report, shape, method=method, seq_len=seq_len)
    if as_json:
        payload = {"hardware": report.to_dict(),
                   "recommendation": {**rec.to_dict(), "model": model, "model_parameters": shape.parameters}}
        print(json.dumps(payload, indent=2))
        return
    _print_tables(report, rec, model, shape.parameters)


def _print_tables(report, rec, model: str, parameters: int) -> None:
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
    console.print(f"\nRecommended for {model} ({parameters:,} parameters, {rec.method}):", markup=False)
    console.print(
        f"  device {device}, dtype {rec.dtype}, quantization {rec.quantization}, batch {rec.batch_size} "
        f"x accumulation {rec.gradient_accumulation} (effective {rec.effective_batch}), "
        f"~{format_bytes(rec.estimated_memory)} of {format_bytes(rec.memory_budget)} budget", markup=False)
    console.print("Why:", markup=False)
    for reason in rec.reasons:
        console.print(f"  - {reason}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("detect")(detect)
