"""What this machine can do: devices, memory, disk, quantization, and the settings that fit.

:func:`detect_hardware` asks a :class:`SystemProbe` a few cheap questions (no model is loaded, no
network is used). Every question may fail on some machine; a failure becomes a ``reason`` string in
the report instead of an exception. Tests pass their own probe object with the same methods.

:func:`recommend` turns a report and a model size into device, dtype, quantization and batch
settings, each with a sentence saying why.

>>> report = detect_hardware()                      # doctest: +SKIP
>>> recommend(report, EMBEDDED_MODEL_PARAMETERS).dtype  # doctest: +SKIP
'float32'
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fnapi.errors import HardwareError
from fnapi.paths import cache_dir

#: Parameters of the embedded default model (SmolLM2-135M-Instruct, tied embeddings counted once).
EMBEDDED_MODEL_PARAMETERS = 134_515_008

#: Effective batch (per-device batch x gradient accumulation) that recommendations aim for.
TARGET_EFFECTIVE_BATCH = 16


class Unavailable(Exception):
    """Raised by a probe method when the thing it looks for is absent; the message is the reason."""


# ---- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA GPU. Memory in bytes; ``free_memory`` is None when it could not be read."""

    index: int
    name: str
    total_memory: int
    capability: tuple[int, int]
    free_memory: int | None = None

    @property
    def supports_bf16(self) -> bool:
        """bfloat16 runs natively from compute capability 8.0 (Ampere) on."""
        return tuple(self.capability) >= (8, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "total_memory": self.total_memory,
            "free_memory": self.free_memory,
            "capability": f"{self.capability[0]}.{self.capability[1]}",
            "bf16": self.supports_bf16,
        }


@dataclass(frozen=True)
class CpuInfo:
    """The processor: model name and core counts (None when unknown)."""

    model: str
    physical_cores: int | None
    logical_cores: int | None


@dataclass(frozen=True)
class BitsAndBytesStatus:
    """Whether 4/8-bit loading can work: ``usable`` needs bitsandbytes importable and a CUDA GPU."""

    installed: bool
    importable: bool
    usable: bool = False
    version: str | None = None
    reason: str | None = None


@dataclass
class HardwareReport:
    """Everything :func:`detect_hardware` found. Sizes are bytes; ``*_reason`` says why a value is missing."""

    cuda_devices: list[CudaDevice] = field(default_factory=list)
    cuda_reason: str | None = None
    mps_available: bool = False
    mps_reason: str | None = None
    cpu: CpuInfo | None = None
    cpu_reason: str | None = None
    ram_total: int | None = None
    ram_available: int | None = None
    ram_reason: str | None = None
    disk_path: str | None = None
    disk_free: int | None = None
    disk_reason: str | None = None
    bitsandbytes: BitsAndBytesStatus = field(
        default_factory=lambda: BitsAndBytesStatus(installed=False, importable=False, reason="not checked")
    )
    torch_version: str | None = None
    torch_reason: str | None = None

    @property
    def has_cuda(self) -> bool:
        return bool(self.cuda_devices)

    def best_cuda_device(self) -> CudaDevice | None:
        """The GPU with the most memory (ties: the lowest index)."""
        if not self.cuda_devices:
            return None
        return max(self.cuda_devices, key=lambda d: (d.total_memory, -d.index))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "cuda": {
                "available": self.has_cuda,
                "devices": [d.to_dict() for d in self.cuda_devices],
                "reason": self.cuda_reason,
            },
            "mps": {"available": self.mps_available, "reason": self.mps_reason},
            "cpu": {
                **(dataclasses.asdict(self.cpu) if self.cpu else {"model": None, "physical_cores": None, "logical_cores": None}),
                "reason": self.cpu_reason,
            },
            "ram": {"total": self.ram_total, "available": self.ram_available, "reason": self.ram_reason},
            "disk": {"path": self.disk_path, "free": self.disk_free, "reason": self.disk_reason},
            "bitsandbytes": dataclasses.asdict(self.bitsandbytes),
            "torch": {"version": self.torch_version, "reason": self.torch_reason},
        }


# ---- probing ---------------------------------------------------------------------------------


class SystemProbe:
    """Cheap questions to the real machine. Each method returns a value or raises :class:`Unavailable`.

    Tests replace it with an object that has the same methods (see :func:`detect_hardware`).
    """

    def torch_version(self) -> str:
        try:
            import torch
        except ImportError as exc:
            raise Unavailable(f"torch is not installed ({exc})") from None
        return torch.__version__

    def cuda_devices(self) -> list[CudaDevice]:
        import torch

        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                raise Unavailable(f"this torch build ({torch.__version__}) has no CUDA support")
            raise Unavailable("no CUDA device is visible (no driver, or CUDA_VISIBLE_DEVICES hides them)")
        devices = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            try:
                free, _total = torch.cuda.mem_get_info(index)
            except Exception:  # some drivers refuse the query; total memory is still useful
                free = None
            devices.append(CudaDevice(index=index, name=props.name, total_memory=int(props.total_memory),
                                      capability=(props.major, props.minor), free_memory=free))
        return devices

    def mps_available(self) -> bool:
        import torch

        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_built():
            raise Unavailable("this torch build has no MPS (Apple GPU) support")
        if not mps.is_available():
            raise Unavailable("MPS is built into torch but no Apple GPU is usable here")
        return True

    def cpu(self) -> CpuInfo:
        import psutil

        return CpuInfo(model=_cpu_model_name(), physical_cores=psutil.cpu_count(logical=False),
                       logical_cores=psutil.cpu_count(logical=True))

    def memory(self) -> tuple[int, int]:
        """(total, available) RAM in bytes."""
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)

    def disk_free(self, path: Path) -> int:
        return int(shutil.disk_usage(path).free)

    def bitsandbytes(self) -> BitsAndBytesStatus:
        if importlib.util.find_spec("bitsandbytes") is None:
            return BitsAndBytesStatus(installed=False, importable=False,
                                      reason="bitsandbytes is not installed (pip install 'fntui[quant]')")
        try:
            import bitsandbytes
        except Exception as exc:  # broken CUDA libraries surface here as all kinds of errors
            return BitsAndBytesStatus(installed=True, importable=False,
                                      reason=f"bitsandbytes is installed but fails to import: {type(exc).__name__}: {exc}")
        return BitsAndBytesStatus(installed=True, importable=True, version=getattr(bitsandbytes, "__version__", None))


def _cpu_model_name() -> str:
    # /proc/cpuinfo names the CPU on Linux; platform.processor() is often empty there.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware")) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _existing_parent(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the cache may not be created yet)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _ask(question, *args):
    """Run one probe question: (value, None) or (None, reason). Never raises."""
    try:
        return question(*args), None
    except Unavailable as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"could not be detected: {type(exc).__name__}: {exc}"


def detect_hardware(probe: Any = None) -> HardwareReport:
    """Look at this machine's devices, memory, disk and bitsandbytes; never raises.

    ``probe`` answers the questions (default: :class:`SystemProbe`); pass a fake to test.
    """
    probe = probe if probe is not None else SystemProbe()
    report = HardwareReport()
    report.torch_version, report.torch_reason = _ask(probe.torch_version)
    if report.torch_version is None:
        # Without torch there is no device to ask about; say so once per device kind.
        report.cuda_reason = report.mps_reason = "torch is not available"
    else:
        devices, report.cuda_reason = _ask(probe.cuda_devices)
        report.cuda_devices = list(devices or [])
        if not report.cuda_devices and report.cuda_reason is None:
            report.cuda_reason = "no CUDA device found"
        available, report.mps_reason = _ask(probe.mps_available)
        report.mps_available = bool(available)
    report.cpu, report.cpu_reason = _ask(probe.cpu)
    memory, report.ram_reason = _ask(probe.memory)
    if memory is not None:
        report.ram_total, report.ram_available = memory
    disk_path = _existing_parent(cache_dir())
    report.disk_path = str(disk_path)
    report.disk_free, report.disk_reason = _ask(probe.disk_free, disk_path)
    bnb, reason = _ask(probe.bitsandbytes)
    if bnb is None:
        bnb = BitsAndBytesStatus(installed=False, importable=False, reason=reason)
    report.bitsandbytes = _with_usability(bnb, report.has_cuda)
    return report


def _with_usability(bnb: BitsAndBytesStatus, has_cuda: bool) -> BitsAndBytesStatus:
    if bnb.importable and has_cuda:
        return dataclasses.replace(bnb, usable=True, reason=None)
    reason = bnb.reason
    if bnb.importable and not has_cuda:
        reason = "bitsandbytes is importable but there is no CUDA GPU to run it on"
    return dataclasses.replace(bnb, usable=False, reason=reason or "bitsandbytes cannot be used")


# ---- recommendation --------------------------------------------------------------------------

Method = Literal["lora", "qlora", "full"]

_BYTES_PER_WEIGHT = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "4bit": 0.55}
#: Share of a GPU's memory we plan to use (the CUDA context and fragmentation take the rest).
_GPU_BUDGET = 0.85
#: Share of available RAM we plan to use on CPU/MPS (the OS and other programs keep the rest).
_RAM_BUDGET = 0.7
_ASSUMED_VOCAB = 50_000


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


def estimate_training_memory(model_parameters: int, *, weight_format: str, method: str,
                             batch_size: int, seq_len: int) -> int:
    """Rough bytes needed to fine-tune: static part (weights, gradients, optimizer) + activations.

    The estimate, in bytes, with ``P`` parameters and ``w`` bytes per weight (4 float32, 2 for
    16-bit, 0.55 for 4-bit):

    * LoRA/QLoRA: ``P * w`` frozen weights + about 1% of ``P`` trainable at 16 bytes each (fp32
      weight, gradient and two Adam moments) -> ``P * (w + 0.16)``.
    * Full: weights + gradients + two fp32 Adam moments + an fp32 master copy when the weights are
      16-bit -> ``P * 16`` either way.
    * Activations per sample: ``17 * seq_len * layers * hidden`` values (Korthikanti et al. 2022,
      attention scores excluded as fused attention does not keep them), with ``layers * hidden``
      taken as ``1.5 * sqrt(P)`` (true within ~30% from 135M to 70B for Llama-like shapes), plus
      fp32 logits and their gradient for a ~50k vocabulary.
    """
    w = _BYTES_PER_WEIGHT[weight_format]
    if method == "full":
        static = model_parameters * 16.0
    else:
        static = model_parameters * (w + 0.16)
    return int(static + batch_size * activation_bytes_per_sample(model_parameters, weight_format, seq_len))


def activation_bytes_per_sample(model_parameters: int, weight_format: str, seq_len: int) -> int:
    """Activation memory of one sequence (see :func:`estimate_training_memory`)."""
    act_bytes = 4 if weight_format == "float32" else 2
    layers_times_hidden = 1.5 * math.sqrt(model_parameters)
    hidden_states = 17 * seq_len * layers_times_hidden * act_bytes
    logits = seq_len * _ASSUMED_VOCAB * 4 * 2
    return int(hidden_states + logits)


def recommend(report: HardwareReport, model_parameters: int, method: str = "lora",
              seq_len: int = 256) -> Recommendation:
    """Device, dtype, quantization and batch settings for fine-tuning a model of this size here.

    Aims for an effective batch of :data:`TARGET_EFFECTIVE_BATCH` with the largest power-of-two
    per-device batch that the memory estimate (:func:`estimate_training_memory`) allows.
    """
    if model_parameters <= 0:
        raise ValueError(f"model_parameters must be positive, got {model_parameters}")
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
    weights = dtype
    one_sample = estimate_training_memory(model_parameters, weight_format=weights, method=method, batch_size=1, seq_len=seq_len)
    bnb = report.bitsandbytes
    if device == "cuda" and method != "full":
        too_big = budget is not None and one_sample > budget
        if method == "qlora" or too_big:
            why = "method qlora asks for 4-bit weights" if not too_big else (
                f"{dtype} weights plus training need ~{format_bytes(one_sample)}, more than {format_bytes(budget)} "
                f"({budget_note})")
            if bnb.usable:
                quantization, weights = "4bit", "4bit"
                reasons.append(f"quantization 4bit: {why}")
            else:
                reasons.append(f"quantization none: {why}, but 4-bit is unavailable ({bnb.reason})")
        else:
            reasons.append(f"quantization none: {dtype} weights fit in {format_bytes(budget)} ({budget_note})")
    elif device == "cuda":
        reasons.append("quantization none: full fine-tuning updates every weight, so they cannot be 4-bit")
    else:
        reasons.append("quantization none: 4-bit loading needs a CUDA GPU")

    per_sample = activation_bytes_per_sample(model_parameters, weights, seq_len)
    static = estimate_training_memory(model_parameters, weight_format=weights, method=method, batch_size=0, seq_len=seq_len)
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
            f"on top of ~{format_bytes(static)} for weights and training state, within {format_bytes(budget)} ({budget_note})")
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


def format_bytes(n: int | float | None) -> str:
    """Human-readable size: ``format_bytes(1536) == '1.5 KiB'``."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


# ---- checks ----------------------------------------------------------------------------------


def require_cuda(feature: str, report: HardwareReport | None = None) -> CudaDevice:
    """The best CUDA GPU, or :class:`HardwareError` saying that ``feature`` needs one."""
    report = report if report is not None else detect_hardware()
    gpu = report.best_cuda_device()
    if gpu is None:
        raise HardwareError(
            f"{feature} needs a CUDA GPU; this machine has none ({report.cuda_reason or 'no CUDA device found'}).",
            hint="Run on a machine with an NVIDIA GPU, or choose a setting that works on "
                 f"{'MPS' if report.mps_available else 'CPU'}. `fnapi detect` shows what was found.",
        )
    return gpu


def check_quantization_supported(kind: str, report: HardwareReport | None = None) -> None:
    """Raise :class:`HardwareError` unless ``kind`` ("none", "4bit", "8bit") can be loaded here."""
    if kind == "none":
        return
    if kind not in ("4bit", "8bit"):
        raise HardwareError(f"model.quantization: unknown kind {kind!r}; use none, 4bit or 8bit")
    report = report if report is not None else detect_hardware()
    label = "4-bit" if kind == "4bit" else "8-bit"
    fix = "Use `model.quantization: none` in the recipe (a smaller model if it does not fit), or run on a CUDA machine."
    if not report.has_cuda:
        raise HardwareError(
            f"{label} loading needs a CUDA GPU and bitsandbytes; this machine has no CUDA device "
            f"({report.cuda_reason or 'none found'}).", hint=fix)
    if not report.bitsandbytes.usable:
        raise HardwareError(
            f"{label} loading needs bitsandbytes: {report.bitsandbytes.reason}.",
            hint="Install it with `pip install 'fntui[quant]'`, or use `model.quantization: none`.")


def check_method_supported(method: str, report: Any = None) -> None:
    """Raise :class:`HardwareError` if ``method`` cannot run here (QLoRA needs CUDA and bitsandbytes)."""
    if method != "qlora":
        return
    report = report if report is not None else detect_hardware()
    fix = "Use `train.method: lora` (or `full`) in the recipe, or run on a machine with an NVIDIA GPU."
    if not report.has_cuda:
        raise HardwareError(
            f"train.method qlora needs a CUDA GPU and bitsandbytes; this machine has no CUDA device "
            f"({report.cuda_reason or 'none found'}).", hint=fix)
    if not report.bitsandbytes.usable:
        raise HardwareError(f"train.method qlora needs bitsandbytes: {report.bitsandbytes.reason}.",
                            hint="Install it with `pip install 'fntui[quant]'`, or " + fix[0].lower() + fix[1:])
