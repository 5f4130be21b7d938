"""What this machine has: devices, memory, disk and quantization, and the checks that refuse a
feature the hardware cannot give.

:func:`detect_hardware` asks a :class:`SystemProbe` a few cheap questions (no model is loaded, no
network is used). Every question may fail on some machine; a failure becomes a ``reason`` string in
the report instead of an exception. Tests pass their own probe object with the same methods.

This module sits below the model loader and the memory model; the settings that fit a model here
are :func:`fnapi.sizing.recommend`'s, which uses both.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnapi.errors import HardwareError
from fnapi.paths import cache_dir


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


def detect_hardware(probe: SystemProbe | None = None) -> HardwareReport:
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
