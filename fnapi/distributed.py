"""Several processes, one run: who am I, who writes, and how the others wait.

fnapi does not launch processes itself: ``torchrun``, ``accelerate launch`` and SLURM's ``srun``
do, and they describe the process to it through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). Everything here reads that environment, so a plain single process needs no
set-up and pays nothing (no ``torch.distributed`` call is made when ``WORLD_SIZE`` is 1).

Rules the rest of fnapi follows with these helpers:

* only the main process (rank 0) writes files and events (:func:`is_main_process`,
  :func:`main_process_sink`);
* work that only the main process does (claiming the run directory, evaluation, ICA) runs through
  :func:`on_main`: the others wait and receive its result, or its error, so every process fails
  the same way instead of hanging;
* shared work (activation capture) is split, and the pieces meet on the main process through
  :func:`gather_on_main`.

Waiting happens on a separate gloo group with a long timeout, so a rank that waits for an hour of
evaluation on rank 0 is not killed by the NCCL watchdog.

>>> world_size(), is_main_process()   # a plain process
(1, True)
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fnapi.errors import DataError, HardwareError, RecipeError
from fnapi.events import EventSink, NullSink

T = TypeVar("T")

#: How long a process may wait for the main process (evaluation, ICA, saving) before giving up.
WAIT_TIMEOUT = datetime.timedelta(hours=12)

_state: dict[str, Any] = {"created": False, "objects": None}


# ---- who am I ------------------------------------------------------------------------------------

def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise RecipeError(f"environment variable {name}={value!r} is not a whole number",
                          "it is set by the launcher (torchrun, accelerate launch, srun); unset it to run "
                          "as a single process") from None


def world_size() -> int:
    """Number of processes in this run (``WORLD_SIZE``, 1 when not launched by a launcher)."""
    return max(_env_int("WORLD_SIZE", 1), 1)


def rank() -> int:
    """This process's number among all processes (``RANK``, 0 for a plain process)."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's number on its machine (``LOCAL_RANK``): which GPU it uses."""
    return _env_int("LOCAL_RANK", 0)


def is_distributed() -> bool:
    """True when a launcher started more than one process."""
    return world_size() > 1


def is_main_process() -> bool:
    """True for the process that writes outputs (rank 0, or the only process)."""
    return rank() == 0


def device_for(device: str) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` when several processes share a machine's GPUs.

    >>> device_for("cpu")
    'cpu'
    """
    if device == "cuda" and is_distributed():
        return f"cuda:{local_rank()}"
    return device


# ---- the process group -----------------------------------------------------------------------------

def ensure_process_group() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA) if not joined yet.

    Does nothing for a single process. The Hugging Face Trainer later reuses the same group.
    """
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise RecipeError(f"WORLD_SIZE is {world_size()} but {' and '.join(missing)} is not set",
                          "start several processes with torchrun, accelerate launch or srun, which set them")
    backend = "gloo"
    if torch.cuda.is_available():
        if local_rank() >= torch.cuda.device_count():
            raise HardwareError(
                f"process {rank()} has LOCAL_RANK {local_rank()} but this machine has "
                f"{torch.cuda.device_count()} CUDA devices",
                "start at most one process per GPU (torchrun --nproc_per_node, SLURM --gpus-per-node)")
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    dist.init_process_group(backend=backend)
    _state["created"] = True


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the process group for the duration of a ``with`` block; leave it afterwards if we joined it."""
    created_before = _state["created"]
    ensure_process_group()
    try:
        yield
    finally:
        if _state["created"] and not created_before:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            _state.update(created=False, objects=None)


def _objects_group() -> Any:
    """A gloo group for Python objects and waiting, with :data:`WAIT_TIMEOUT` (created once)."""
    import torch.distributed as dist

    ensure_process_group()
    if _state["objects"] is None:
        _state["objects"] = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return _state["objects"]


def barrier() -> None:
    """Wait until every process got here (no-op for a single process)."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier(group=_objects_group())


def broadcast_from_main(obj: T | None) -> T:
    """The main process's ``obj`` on every process (pickled; keep it small)."""
    if not is_distributed():
        return obj  # type: ignore[return-value]
    import torch.distributed as dist

    box = [obj if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, group=_objects_group())
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every process's ``obj``, in rank order, on every process."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_objects_group())
    return out


# ---- work done by one process, or split between all -------------------------------------------------

def on_main(fn: Callable[..., T], *args: Any, share: Callable[[T], Any] | None = None, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` on the main process only; every process returns its result.

    The other processes wait and receive ``share(result)`` (default: the result itself; pass
    ``share`` to leave out large parts they do not need). If ``fn`` raises, every process raises
    the same error, so all of them stop alike.
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    outcome: tuple[str, Any] | None = None
    result: Any = None
    if is_main_process():
        try:
            result = fn(*args, **kwargs)
            outcome = ("ok", share(result) if share is not None else result)
        except Exception as exc:  # sent to the others, then raised here too
            outcome = ("error", _portable(exc))
            broadcast_from_main(outcome)
            raise
    outcome = broadcast_from_main(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return result if is_main_process() else outcome[1]


def gather_on_main(compute: Callable[[], T]) -> list[T] | None:
    """Every process runs ``compute()``; the main process gets all results in rank order.

    Other processes get None. If ``compute`` raised anywhere, every process raises that error
    (the lowest rank's, when several failed).
    """
    if not is_distributed():
        return [compute()]
    import torch.distributed as dist

    try:
        part: tuple[str, Any] = ("ok", compute())
    except Exception as exc:
        part = ("error", _portable(exc))
    parts: list[Any] | None = [None] * world_size() if is_main_process() else None
    dist.gather_object(part, parts, dst=0, group=_objects_group())
    failure = None
    if is_main_process():
        failure = next((p for p in parts if p[0] == "error"), None)
    failure = broadcast_from_main(failure)
    if failure is not None:
        raise failure[1]
    return [p[1] for p in parts] if parts is not None else None


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError with its text (sent to other processes)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# ---- outputs ---------------------------------------------------------------------------------------

def main_process_sink(sink: EventSink | None) -> EventSink:
    """``sink`` on the main process, a sink that drops everything on the others.

    Events describe the run once; N processes reporting the same step would be noise.
    """
    if is_main_process() and sink is not None:
        return sink
    return NullSink()


def check_enough_examples(count: int, what: str) -> None:
    """Refuse data that cannot give every process at least one example.

    >>> check_enough_examples(8, "training examples")
    """
    processes = world_size()
    if count < processes:
        raise DataError(
            f"{what}: {count} for {processes} processes; every process needs at least one",
            f"start at most {max(count, 1)} processes (torchrun --nproc_per_node / --nnodes), or add data")


# ---- FSDP and DeepSpeed from an accelerate config -----------------------------------------------------

#: accelerate ``distributed_type`` values that need no Trainer settings (the launcher's process layout is enough).
_DATA_PARALLEL = ("NO", "MULTI_GPU", "MULTI_CPU")
#: accelerate FSDP sharding strategies -> FSDP2's reshard_after_forward.
_RESHARD = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False}


def read_accelerate_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings in an accelerate config file (YAML or JSON), checked for a known ``distributed_type``."""
    import json
    from pathlib import Path

    import yaml

    where = f"distributed.accelerate_config {path}"
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{where}: file not found",
                          "write one with `accelerate config --config_file PATH`, or remove the setting for plain "
                          "data-parallel training") from None
    except OSError as exc:
        raise RecipeError(f"{where}: cannot read it: {exc}") from None
    try:
        config = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RecipeError(f"{where}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{where}: an accelerate config is a mapping of settings")
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind not in (*_DATA_PARALLEL, "FSDP", "DEEPSPEED"):
        raise RecipeError(f"{where}: distributed_type {kind} is not supported by fnapi",
                          "use FSDP, DEEPSPEED or MULTI_GPU")
    return {**config, "distributed_type": kind}


def accelerate_kind(path: str | os.PathLike | None) -> str:
    """``DDP``, ``FSDP`` or ``DEEPSPEED``: what an accelerate config (or none) sets up."""
    if path is None:
        return "DDP"
    kind = read_accelerate_config(path)["distributed_type"]
    return "DDP" if kind in _DATA_PARALLEL else kind


def check_accelerate_config(path: str | os.PathLike | None, has_cuda: bool) -> None:
    """Refuse, before anything slow starts, an accelerate config this machine cannot run."""
    kind = accelerate_kind(path)
    if kind == "DDP":
        return
    label = "FSDP" if kind == "FSDP" else "DeepSpeed"
    if not has_cuda:
        # On CPU the Trainer would quietly fall back to plain data parallelism; say so instead.
        raise HardwareError(f"distributed.accelerate_config {path} asks for {label}, which shards the model "
                            "across CUDA GPUs; this machine has none",
                            "remove distributed.accelerate_config to train data-parallel (DDP) on CPU, or run on GPUs")
    if kind == "DEEPSPEED":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise HardwareError(f"distributed.accelerate_config {path} asks for DeepSpeed, which is not installed",
                                "install it with `pip install deepspeed`, or use an FSDP config")


def trainer_options(path: str | os.PathLike | None) -> dict[str, Any]:
    """``TrainingArguments`` settings for the FSDP or DeepSpeed set-up of an accelerate config file.

    Empty when no file is given, when it asks for plain data parallelism (the launcher's process
    layout is all DDP needs), or when ``accelerate launch`` already configured this process (its
    environment then wins, so both never fight).
    """
    if path is None or _launched_by_accelerate():
        return {}
    config = read_accelerate_config(path)
    kind = config["distributed_type"]
    options: dict[str, Any] = {}
    precision = str(config.get("mixed_precision", "no")).lower()
    if precision in ("bf16", "fp16"):
        options[precision] = True
    if kind == "FSDP":
        fsdp = {key.removeprefix("fsdp_"): value for key, value in (config.get("fsdp_config") or {}).items()}
        if "offload_params" in fsdp:
            fsdp["cpu_offload"] = bool(fsdp.pop("offload_params"))
        strategy = str(fsdp.pop("sharding_strategy", "FULL_SHARD")).upper()
        if strategy not in _RESHARD:
            raise RecipeError(f"distributed.accelerate_config {path}: fsdp_sharding_strategy {strategy} is not "
                              "supported with FSDP2; use FULL_SHARD or SHARD_GRAD_OP")
        fsdp.setdefault("reshard_after_forward", _RESHARD[strategy])
        fsdp["version"] = int(fsdp.get("version", 2))
        options.update(fsdp=True, fsdp_config=fsdp)
    elif kind == "DEEPSPEED":
        settings = config.get("deepspeed_config") or {}
        if settings.get("deepspeed_config_file"):
            options["deepspeed"] = str(settings["deepspeed_config_file"])
        else:
            # "auto" lets the Trainer fill in batch size, accumulation and clipping from the recipe.
            zero: dict[str, Any] = {"stage": int(settings.get("zero_stage", 2))}
            for part in ("optimizer", "param"):
                device = settings.get(f"offload_{part}_device", "none")
                if device and device != "none":
                    zero[f"offload_{part}"] = {"device": device}
            options["deepspeed"] = {
                "zero_optimization": zero,
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "bf16": {"enabled": "auto"},
                "fp16": {"enabled": "auto"},
            }
    return options


def _launched_by_accelerate() -> bool:
    return any(os.environ.get(name, "").lower() == "true"
               for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
