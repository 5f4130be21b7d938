"""The settings that fit a model on this machine: device, dtype, quantization and batch.

:func:`recommend` turns a :class:`~fnapi.hardware.HardwareReport` and a model's shape into
settings, each with a sentence saying why. The batch is sized by the memory model of
:mod:`fnapi.estimate`, the one ``fnapi run`` checks a batch against, so a recommended batch is one
the run accepts.

>>> from fnapi.estimate import model_shape             # doctest: +SKIP
>>> recommend(detect_hardware(), model_shape("smollm2-135m-instruct")).dtype  # doctest: +SKIP
'float32'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fnapi.hardware import HardwareReport, format_bytes

if TYPE_CHECKING:
    from fnapi.estimate import ModelShape

#: Effective batch (per-device batch x gradient accumulation) that recommendations aim for.
TARGET_EFFECTIVE_BATCH = 16

Method = Literal["lora", "qlora", "full"]

#: Share of a GPU's memory we plan to use (the CUDA context and fragmentation take the rest).
_GPU_BUDGET = 0.85
#: Share of available RAM we plan to use on CPU/MPS (the OS and other programs keep the rest).
_RAM_BUDGET = 0.7


@dataclass
class Recommendation:
    """Settings that should fit this machine, and ``reasons`` (one sentence per choice)."""

    device: Literal["cuda", "mps", "cpu"]
    device_index: int | None
    dtype: Literal["bfloat16", "float16", "float32"]
    quantization: Literal["none", "4bit"]
    method: str
    batch_size: int
    gradient_accumulation: int
    estimated_memory: int  # bytes: weights + training state + one batch of activations
    memory_budget: int | None  # bytes we plan to use on the chosen device (None: unknown)
    fits: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.gradient_accumulation

    def recipe_changes(self) -> dict[str, Any]:
        """Dotted recipe paths and values, for ``Recipe.replace(**changes)``."""
        return {
            "model.device": self.device,
            "model.dtype": self.dtype,
            "model.quantization": self.quantization,
            "train.batch_size": self.batch_size,
            "train.gradient_accumulation": self.gradient_accumulation,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "effective_batch": self.effective_batch}


def recommend(report: HardwareReport, shape: ModelShape, method: str = "lora", seq_len: int = 256, *,
              lora_rank: int = 8, lora_targets: list[str] | Literal["auto"] = "auto",
              gradient_checkpointing: bool = False) -> Recommendation:
    """Device, dtype, quantization and batch settings for fine-tuning a model of ``shape`` here.

    Aims for an effective batch of :data:`TARGET_EFFECTIVE_BATCH` with the largest power-of-two
    per-device batch whose training peak (:func:`fnapi.estimate.training_memory`, the memory model
    ``fnapi run`` and ``fnapi estimate`` use) fits the memory budget. ``shape`` comes from
    :func:`fnapi.estimate.model_shape` (a config, no weights).
    """
    from fnapi.estimate import training_memory

    def peak(batch: int, weights_dtype: str, quantization: str) -> int:
        return training_memory(shape, device=device, batch_size=batch, seq_len=seq_len, method=method,
                               dtype=weights_dtype, quantization=quantization, lora_rank=lora_rank,
                               lora_targets=lora_targets, gradient_checkpointing=gradient_checkpointing).total

    reasons: list[str] = []
    gpu = report.best_cuda_device()
    device_index = None
    if gpu is not None:
        device, device_index = "cuda", gpu.index
        others = f" ({len(report.cuda_devices)} GPUs found; `fnapi cluster` can launch on all)" if len(report.cuda_devices) > 1 else ""
        reasons.append(f"device cuda:{gpu.index}: {gpu.name} with {format_bytes(gpu.total_memory)}{others}")
        if gpu.supports_bf16:
            dtype = "bfloat16"
            reasons.append(f"dtype bfloat16: compute capability {gpu.capability[0]}.{gpu.capability[1]} supports bf16 natively (>= 8.0)")
        else:
            dtype = "float16"
            reasons.append(f"dtype float16: compute capability {gpu.capability[0]}.{gpu.capability[1]} has no native bf16 (needs 8.0)")
        free = gpu.free_memory if gpu.free_memory is not None else gpu.total_memory
        budget = int(min(free, gpu.total_memory * _GPU_BUDGET))
        budget_note = f"{int(_GPU_BUDGET * 100)}% of GPU memory"
    else:
        device = "mps" if report.mps_available else "cpu"
        dtype = "float32"
        if device == "mps":
            reasons.append("device mps: Apple GPU available (no CUDA)")
            reasons.append("dtype float32: half-precision training on MPS is unreliable")
        else:
            reasons.append(f"device cpu: no GPU; {report.cuda_reason or 'no CUDA device found'}")
            reasons.append("dtype float32: CPUs train in float32 (half precision is slow or unsupported there)")
        budget = int(report.ram_available * _RAM_BUDGET) if report.ram_available else None
        budget_note = f"{int(_RAM_BUDGET * 100)}% of available RAM"

    quantization = "none"
    one_sample = peak(1, dtype, "none")
    bnb = report.bitsandbytes
    if device == "cuda" and method != "full":
        too_big = budget is not None and one_sample > budget
        if method == "qlora" or too_big:
            why = "method qlora asks for 4-bit weights" if not too_big else (
                f"{dtype} weights plus training need ~{format_bytes(one_sample)}, more than {format_bytes(budget)} "
                f"({budget_note})")
            if bnb.usable:
                quantization = "4bit"
                reasons.append(f"quantization 4bit: {why}")
            else:
                reasons.append(f"quantization none: {why}, but 4-bit is unavailable ({bnb.reason})")
        else:
            reasons.append(f"quantization none: {dtype} weights fit in {format_bytes(budget)} ({budget_note})")
    elif device == "cuda":
        reasons.append("quantization none: full fine-tuning updates every weight, so they cannot be 4-bit")
    else:
        reasons.append("quantization none: 4-bit loading needs a CUDA GPU")

    static = peak(0, dtype, quantization)
    per_sample = peak(1, dtype, quantization) - static
    if budget is None:
        batch = 1
        fits = True
        reasons.append("batch size 1: free memory is unknown, so the smallest batch is the safe choice")
    else:
        room = (budget - static) // per_sample
        fits = room >= 1
        batch = _power_of_two_at_most(int(max(1, min(room, TARGET_EFFECTIVE_BATCH))))
        reasons.append(
            f"batch size {batch}: each sequence of {seq_len} tokens needs ~{format_bytes(per_sample)} of activations "
            f"on top of ~{format_bytes(static)} for the runtime, weights and training state, within {format_bytes(budget)} ({budget_note})")
        if not fits:
            reasons.append(f"warning: the estimate exceeds the budget even at batch size 1; use a smaller model, "
                           f"a shorter max_length{', or 4-bit on a CUDA GPU' if device != 'cuda' else ''}")
    accumulation = math.ceil(TARGET_EFFECTIVE_BATCH / batch)
    reasons.append(f"gradient accumulation {accumulation}: {batch} x {accumulation} = {batch * accumulation} "
                   f"sequences per optimizer step (target {TARGET_EFFECTIVE_BATCH})")
    return Recommendation(
        device=device, device_index=device_index, dtype=dtype, quantization=quantization, method=method,
        batch_size=batch, gradient_accumulation=accumulation,
        estimated_memory=static + batch * per_sample, memory_budget=budget, fits=fits, reasons=reasons,
    )


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)
