"""Export a run so other tools can use it: ``fnapi export RUN --to hf|gguf|hub``.

Every export starts from the run's model as trained (:func:`fnapi.eval_target.load_trained`: the
saved full model, or the base model with the saved LoRA adapter) and makes it a plain model: the
adapter is merged into the weights, and neurons the run switched off in the forward pass (mask
presets ``lesion`` and ``preserve``) are zeroed in the weights (:func:`fnapi.masking.bake_lesion`),
so the exported model behaves like the run's model without any fnapi code.

- ``hf``: a ``save_pretrained`` folder (weights, config, tokenizer, a model card), loadable with
  ``AutoModelForCausalLM.from_pretrained(DIR)``.
- ``gguf``: one GGUF file (``f32``, ``f16`` or ``q8_0``) with the tokenizer and chat template in its
  metadata, for llama.cpp and the tools built on it. Llama-family models only.
- ``hub``: the ``hf`` folder (or with ``adapter_only`` the LoRA adapter) uploaded to the Hugging
  Face hub as a private repository unless asked otherwise, with a model card from ``report.json``.

Each export is checked before it is put in place: the written model is read back (GGUF through
transformers' GGUF reader) and its logits on a few prompts are compared with those of the run's
model as trained; :attr:`ExportResult.max_abs_logit_diff` says how close they came. Files and
folders are built under a temporary name beside the destination and renamed at the end.

>>> result = export("runs/quickstart", "gguf", "quickstart.q8_0.gguf", gguf_type="q8_0")  # doctest: +SKIP
>>> result.bytes, result.max_abs_logit_diff                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnapi.errors import ExportError, OfflineError
from fnapi.events import EventSink, Log, NullSink, stage
from fnapi.paths import staged

TARGETS = ("hf", "gguf", "hub")
GGUF_TYPES = ("f32", "f16", "q8_0")
#: Largest |logit difference| an export may show against the run's model, as a fraction of the
#: largest |logit| of the run's model on the same prompts. f32 only differs by float rounding
#: (merging the adapter reorders sums); f16 rounds every weight to 11 bits; q8_0 to 8 bits per block.
TOLERANCE = {"hf": 1e-4, "f32": 1e-4, "f16": 2e-2, "q8_0": 8e-2}
#: What the exported model is checked on (the chat one goes through the run's chat template).
CHECK_PROMPTS = ("The capital of France is", "Question: what is 12 plus 30?\nAnswer:")
CHECK_CHAT = "What is two plus two?"
#: Architectures fnapi writes as GGUF: model_type -> (gguf architecture, q/k rows permuted the
#: way llama.cpp's converter does it). transformers' GGUF reader undoes exactly that permutation.
GGUF_ARCHITECTURES = {"llama": ("llama", True)}


@dataclass(frozen=True)
class ExportedFile:
    """One file an export wrote (or would upload), relative to the export's folder."""

    path: str
    bytes: int


@dataclass
class ExportResult:
    """What an export wrote, how long it took and how closely the written model matches the run.

    ``path`` is the folder (``hf``) or file (``gguf``); for ``hub`` it is None and ``repo_id`` names
    the repository. ``max_abs_logit_diff`` is the largest difference between the logits of the
    written model and those of the run's model as trained, over :data:`CHECK_PROMPTS`;
    ``tolerance`` is the limit it was held to (already scaled to these logits); ``top1_agreement``
    the share of prompt positions where both models rank the same token first.
    """

    target: str
    run_dir: Path
    path: Path | None = None
    repo_id: str | None = None
    gguf_type: str | None = None
    files: list[ExportedFile] = field(default_factory=list)
    seconds: float = 0.0
    max_abs_logit_diff: float | None = None
    tolerance: float | None = None
    top1_agreement: float | None = None
    tokens_match: bool | None = None
    private: bool | None = None
    dry_run: bool = False
    url: str | None = None
    card: str | None = None

    @property
    def bytes(self) -> int:
        """Total size of :attr:`files`."""
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "run_dir": str(self.run_dir), "path": str(self.path) if self.path else None,
                "repo_id": self.repo_id, "gguf_type": self.gguf_type, "bytes": self.bytes,
                "files": [{"path": f.path, "bytes": f.bytes} for f in self.files], "seconds": round(self.seconds, 3),
                "max_abs_logit_diff": self.max_abs_logit_diff, "tolerance": self.tolerance,
                "top1_agreement": self.top1_agreement,
                "tokens_match": self.tokens_match, "private": self.private, "dry_run": self.dry_run, "url": self.url}


def export(run_dir: str | Path, to: str, dest: str | Path, *, gguf_type: str = "f16", overwrite: bool = False,
           private: bool = True, adapter_only: bool = False, dry_run: bool = False, sink: EventSink | None = None,
           cancel: threading.Event | None = None) -> ExportResult:
    """Export the run in ``run_dir`` ``to`` ``"hf"`` (a folder ``dest``), ``"gguf"`` (a file ``dest``
    of ``gguf_type`` f32, f16 or q8_0) or ``"hub"`` (the repository id ``dest``).

    ``overwrite`` replaces an existing non-empty folder or an existing file. For the hub,
    ``private`` chooses the visibility of a new repository, ``adapter_only`` uploads the LoRA
    adapter instead of the merged model, and ``dry_run`` lists what would be uploaded without any
    network. Bad input raises :class:`~fnapi.errors.ExportError` (exit code 2) before anything is
    written; stages are reported to ``sink``.
    """
    from fnapi.eval_target import run_recipe, trained_weights
    from fnapi.models.runtime import quiet_progress_bars

    started = time.monotonic()
    sink = sink if sink is not None else NullSink()
    if to not in TARGETS:
        raise ExportError(f"--to {to!r} is not an export target; use one of {', '.join(TARGETS)}",
                          "hf: a transformers folder, gguf: a llama.cpp file, hub: a Hugging Face repository")
    if to == "gguf" and gguf_type not in GGUF_TYPES:
        raise ExportError(f"--type {gguf_type!r} is not a GGUF type fnapi writes; use one of {', '.join(GGUF_TYPES)}")
    folder = Path(run_dir)
    recipe = run_recipe(folder)
    weights = trained_weights(folder)
    with quiet_progress_bars():
        if to == "hub":
            result = _export_hub(folder, recipe, str(dest), private=private, adapter_only=adapter_only,
                                 dry_run=dry_run, sink=sink, cancel=cancel)
        else:
            target = Path(dest).expanduser()
            _check_destination(target, folder=to == "hf", overwrite=overwrite)
            if to == "gguf":
                _check_gguf_config(_run_config(recipe, weights), gguf_type)
            result = _export_local(folder, to, target, gguf_type, sink=sink, cancel=cancel)
    result.seconds = time.monotonic() - started
    return result


# ---- the run's model, made plain ----------------------------------------------------------------------

@dataclass
class _PlainModel:
    """The run's model with adapter merged and ablation baked in, and the logits it must reproduce."""

    model: Any
    tokenizer: Any
    recipe: Any
    prompts: list[list[int]]
    reference: list[Any]  # float32 CPU logits per prompt, of the run's model as trained


def _plain_model(folder: Path, sink: EventSink, cancel: threading.Event | None) -> _PlainModel:
    import contextlib

    from fnapi.eval_target import load_trained
    from fnapi.masking import bake_lesion, mask

    trained = load_trained(folder, sink=sink, cancel=cancel)
    with stage(sink, "merge", total=2, cancel=cancel, description="adapter and mask into the weights") as progress:
        prompts = _check_prompts(trained.tokenizer)
        hooks = mask(trained.model, trained.ablation, train="all") if trained.ablation is not None \
            else contextlib.nullcontext()
        with hooks:
            reference = _logits(trained.model, prompts)
        progress.advance(message="reference logits of the run's model")
        model = trained.model.merge_and_unload() if trained.adapter else trained.model
        if trained.ablation is not None:
            bake_lesion(model, trained.ablation)
            progress.log(f"ablation baked into the weights: {trained.ablation.describe()}")
        progress.advance(message="merged" if trained.adapter else "plain model")
    return _PlainModel(model.eval(), trained.tokenizer, trained.recipe, prompts, reference)


def _check_prompts(tokenizer: Any) -> list[list[int]]:
    prompts = [tokenizer(text)["input_ids"] for text in CHECK_PROMPTS]
    if getattr(tokenizer, "chat_template", None):
        chat = tokenizer.apply_chat_template([{"role": "user", "content": CHECK_CHAT}], add_generation_prompt=True,
                                             tokenize=False)
        prompts.append(tokenizer(chat, add_special_tokens=False)["input_ids"])
    return [list(p) for p in prompts if p]


def _logits(model: Any, prompts: list[list[int]]) -> list[Any]:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(torch.tensor([ids], device=device)).logits[0].float().cpu() for ids in prompts]


def _compare(plain: _PlainModel, logits: list[Any], what: str, tolerance: float, result: ExportResult) -> None:
    """Fill ``result``'s check numbers from ``logits`` against the reference; an error over the limit."""
    scale = max(1.0, max(float(r.abs().max()) for r in plain.reference))
    diff = max(float((a - b).abs().max()) for a, b in zip(logits, plain.reference))
    limit = tolerance * scale
    if not diff <= limit:
        raise ExportError(f"the exported {what} does not reproduce the run's model: logits differ by up to "
                          f"{diff:.3g} (allowed {limit:.3g})", "nothing was written; this is a bug in fnapi's export")
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(logits, plain.reference))
    result.max_abs_logit_diff, result.tolerance = diff, limit
    result.top1_agreement = same / sum(len(r) for r in plain.reference)


# ---- hf and gguf ----------------------------------------------------------------------------------------

def _check_destination(target: Path, *, folder: bool, overwrite: bool) -> None:
    if folder:
        if target.exists() and not target.is_dir():
            raise ExportError(f"{target} is a file; --to hf writes a folder", "give a folder path")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise ExportError(f"{target} exists and is not empty", "pass --overwrite to replace it, or choose another folder")
        return
    if target.is_dir():
        raise ExportError(f"{target} is a folder; --to gguf writes a file", "give a file path ending in .gguf")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists", "pass --overwrite to replace it, or choose another file name")


def _export_local(folder: Path, to: str, target: Path, gguf_type: str, *, sink: EventSink,
                  cancel: threading.Event | None) -> ExportResult:
    plain = _plain_model(folder, sink, cancel)
    result = ExportResult(target=to, run_dir=folder, path=target, gguf_type=gguf_type if to == "gguf" else None)
    if to == "hf":
        with staged(target, folder=True) as tmp:
            _write_hf(plain, folder, tmp, sink, cancel)
            _verify_hf(plain, tmp, result, sink, cancel)
            result.files = _listing(tmp)
    else:
        with staged(target, suffix=".partial.gguf") as tmp:
            write_gguf(plain.model, plain.tokenizer, tmp, gguf_type, name=plain.recipe.name,
                       pre=_source_gguf_pre(plain.recipe), sink=sink, cancel=cancel)
            _verify_gguf(plain, tmp, gguf_type, result, sink, cancel)
            result.files = [ExportedFile(target.name, tmp.stat().st_size)]
    sink.emit(Log(message=f"exported {folder} to {target} ({_size(result.bytes)}); logits within "
                          f"{result.max_abs_logit_diff:.3g} of the run's model", stage="export"))
    return result


def _write_hf(plain: _PlainModel, folder: Path, tmp: Path, sink: EventSink, cancel: threading.Event | None) -> None:
    from fnapi.paths import atomic_write_text

    with stage(sink, "write", total=3, cancel=cancel, description="transformers folder") as progress:
        plain.model.save_pretrained(tmp)
        progress.advance(message="weights and config")
        plain.tokenizer.save_pretrained(tmp)
        progress.advance(message="tokenizer")
        atomic_write_text(tmp / "README.md", model_card(folder, adapter_only=False))
        progress.advance(message="model card")


def _verify_hf(plain: _PlainModel, tmp: Path, result: ExportResult, sink: EventSink,
               cancel: threading.Event | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    with stage(sink, "verify", total=1, cancel=cancel, description="the folder read back against the run") as progress:
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, local_files_only=True)
        _compare(plain, _logits(reloaded.eval(), plain.prompts), "folder", TOLERANCE["hf"], result)
        _report_check(progress, result)


def _verify_gguf(plain: _PlainModel, tmp: Path, gguf_type: str, result: ExportResult, sink: EventSink,
                 cancel: threading.Event | None) -> None:
    from fnapi.models.loading import load_model
    from fnapi.models.source import ModelSource

    back = load_model(ModelSource("gguf", str(tmp), tmp), dtype="float32", device="cpu", sink=sink, cancel=cancel)
    with stage(sink, "verify", total=1, cancel=cancel, description="the GGUF read back against the run") as progress:
        _compare(plain, _logits(back.model, plain.prompts), f"GGUF file ({gguf_type})", TOLERANCE[gguf_type], result)
        texts = [*CHECK_PROMPTS, CHECK_CHAT]
        same_tokens = all(back.tokenizer(t)["input_ids"] == plain.tokenizer(t)["input_ids"] for t in texts)
        if not same_tokens:
            progress.log("the tokenizer read back from the GGUF file splits the check prompts differently from the "
                         "run's tokenizer", level="warning")
        result.tokens_match = same_tokens
        progress.summary.update(tokens_match=same_tokens)
        _report_check(progress, result)


def _report_check(progress: Any, result: ExportResult) -> None:
    progress.summary.update(max_abs_logit_diff=result.max_abs_logit_diff, tolerance=result.tolerance,
                            top1_agreement=result.top1_agreement)
    progress.advance(message=f"max |logit difference| {result.max_abs_logit_diff:.3g}, same top token at "
                             f"{100 * result.top1_agreement:.1f}% of positions")


def _listing(root: Path) -> list[ExportedFile]:
    return [ExportedFile(str(p.relative_to(root)), p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()]


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 1024:.1f} KiB"


def _run_config(recipe: Any, weights: Path) -> Any:
    """The run's model config, read without the weights (the full model's own, else the base's)."""
    from fnapi.models.source import ModelSource

    if weights.name == "model":
        return ModelSource.parse(str(weights)).config()
    return ModelSource.parse(recipe.model.name, revision=recipe.model.revision,
                             trust_remote_code=recipe.model.trust_remote_code).config()


# ---- GGUF ------------------------------------------------------------------------------------------------

def _check_gguf_config(config: Any, gguf_type: str) -> None:
    """Refuse, before any weight loads, a model fnapi cannot write as GGUF of ``gguf_type``."""
    model_type = getattr(config, "model_type", None)
    architecture = (getattr(config, "architectures", None) or [model_type])[0]
    if model_type not in GGUF_ARCHITECTURES:
        supported = ", ".join(f"{name} ({'Llama' if name == 'llama' else name}ForCausalLM)" for name in GGUF_ARCHITECTURES)
        raise ExportError(f"--to gguf: fnapi writes GGUF files for {supported}; this run's model is {architecture} "
                          f"(model_type {model_type})", "export it with --to hf instead (a transformers folder)")
    problems = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("it has attention or MLP biases")
    if _rope(config)[1] != "default":
        problems.append(f"it uses {_rope(config)[1]} rope scaling")
    if problems:
        raise ExportError(f"--to gguf: this {architecture} cannot be written as GGUF by fnapi: {'; '.join(problems)}",
                          "export it with --to hf instead")
    if gguf_type == "q8_0":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        widths = {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
                  "head_dim x heads": head_dim * config.num_attention_heads}
        odd = {name: value for name, value in widths.items() if value % 32}
        if odd:
            raise ExportError(f"--type q8_0 quantizes rows in blocks of 32 values, but this {architecture} has "
                              + ", ".join(f"{k} {v}" for k, v in odd.items()),
                              "use --type f16 or f32 for this model")


def _rope(config: Any) -> tuple[float, str]:
    """(rope theta, rope type), from ``rope_parameters`` (transformers 5) or the older fields."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind


def _source_gguf_pre(recipe: Any) -> str | None:
    """The pre-tokenizer name of the GGUF the base model came from (embedded or ``.gguf``), if any:
    the tokenizer was read from it, so writing the same name back keeps llama.cpp's text split."""
    import gguf

    from fnapi.models.loading import embedded_gguf_path
    from fnapi.models.source import ModelSource

    source = ModelSource.parse(recipe.model.name)
    path = embedded_gguf_path() if source.kind == "embedded" else source.path if source.kind == "gguf" else None
    if path is None:
        return None
    field_ = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return str(field_.contents()) if field_ is not None else None


def _infer_pre(state: dict) -> str:
    """llama.cpp's name for the text split a byte-level BPE tokenizer does before merging."""
    pre = state.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(s.get("type"), s.get("individual_digits")) for s in steps]
    if kinds == [("ByteLevel", None)] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == [("Digits", True), ("ByteLevel", None)]:
        return "smollm"
    return "default"


def tokenizer_metadata(tokenizer: Any, vocab_size: int, pre: str | None = None) -> dict[str, Any]:
    """The GGUF tokenizer keys of a byte-level BPE (GPT-2 style) tokenizer: tokens, token types,
    merges, special ids, whether bos/eos are added, and the chat template. ``vocab_size`` is the
    model's embedding rows (token slots the tokenizer does not use become ``[PADn]``, type unused)."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model") or {}
    byte_level = "ByteLevel" in json.dumps(state.get("pre_tokenizer")) or (state.get("decoder") or {}).get("type") == "ByteLevel"
    if model.get("type") != "BPE" or not byte_level:
        raise ExportError(f"--to gguf: fnapi writes byte-level BPE (GPT-2 style) tokenizers; this run's tokenizer is "
                          f"{model.get('type')}{'' if byte_level else ' without byte-level encoding'}",
                          "export it with --to hf instead")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"--to gguf: the tokenizer has ids up to {max(vocab.values())} but the model only "
                          f"{vocab_size} embedding rows")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token, index in vocab.items():
        tokens[index], types[index] = token, int(gguf.TokenType.NORMAL)
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = int(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    probe = "hello"
    with_special = tokenizer(probe)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    extra = len(with_special) > len(plain)
    meta: dict[str, Any] = {
        "model": "gpt2", "pre": pre or _infer_pre(state), "tokens": tokens, "token_types": types, "merges": merges,
        "add_bos": bool(extra and tokenizer.bos_token_id is not None and with_special[0] == tokenizer.bos_token_id),
        "add_eos": bool(extra and tokenizer.eos_token_id is not None and with_special[-1] == tokenizer.eos_token_id),
        "chat_template": tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else None,
    }
    for name in ("bos", "eos", "unk", "pad"):
        meta[f"{name}_id"] = getattr(tokenizer, f"{name}_token_id", None)
    return meta


def write_gguf(model: Any, tokenizer: Any, path: str | Path, gguf_type: str = "f16", *, name: str = "model",
               pre: str | None = None, sink: EventSink | None = None, cancel: threading.Event | None = None) -> Path:
    """Write a plain (merged) Llama-family ``model`` and its tokenizer as one GGUF file at ``path``.

    Tensor names come from gguf's own map (``gguf.get_tensor_name_map``); q and k projections get
    the row permutation llama.cpp's converter applies (and transformers' reader undoes). 1-D
    tensors (norms) stay f32, as llama.cpp expects; the others take ``gguf_type``. The file is
    written in place: callers that need it atomic write to a temporary name (:func:`export` does).
    """
    import gguf
    import numpy as np

    config = model.config
    _check_gguf_config(config, gguf_type)
    arch_name, permute = GGUF_ARCHITECTURES[config.model_type]
    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch_name)
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = config.num_hidden_layers
    tie = bool(getattr(config, "tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(arch, layers)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]

    plan: list[tuple[str, str, tuple[int, ...], Any]] = []  # (hf name, gguf name, shape, ggml type)
    for hf_name, tensor in model.state_dict().items():
        if tie and hf_name == "lm_head.weight":
            continue  # tied: readers take the output projection from the token embedding
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"--to gguf: the tensor {hf_name} of this {config.model_type} model has no GGUF name")
        kind = gguf.GGMLQuantizationType.F32 if tensor.dim() == 1 else qtype
        plan.append((hf_name, gguf_name, tuple(tensor.shape), kind))

    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope(config)[0])
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(file_type))
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    meta = tokenizer_metadata(tokenizer, config.vocab_size, pre)
    writer.add_tokenizer_model(meta["model"])
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["token_types"])
    writer.add_token_merges(meta["merges"])
    for key, add in (("bos_id", writer.add_bos_token_id), ("eos_id", writer.add_eos_token_id),
                     ("unk_id", writer.add_unk_token_id), ("pad_id", writer.add_pad_token_id)):
        if meta[key] is not None:
            add(int(meta[key]))
    writer.add_add_bos_token(meta["add_bos"])
    writer.add_add_eos_token(meta["add_eos"])
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])

    for _, gguf_name, shape, kind in plan:
        numel = int(np.prod(shape))
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), numel // block * type_size, raw_dtype=kind)
    state = model.state_dict()
    try:
        with stage(sink, "write", total=len(plan), unit="tensor", cancel=cancel,
                   description=f"GGUF {gguf_type}, {len(plan)} tensors") as progress:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for hf_name, gguf_name, _, kind in plan:
                data = state[hf_name].detach().to("cpu").float().numpy()
                if permute and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
                    data = _permute_rows(data, heads if "attn_q" in gguf_name else kv_heads)
                writer.write_tensor_data(gguf.quants.quantize(np.ascontiguousarray(data), kind))
                progress.advance(message=gguf_name)
    finally:
        writer.close()
    return Path(path)


def _permute_rows(weights: Any, heads: int) -> Any:
    """llama.cpp's q/k permutation: each head's rotary halves interleaved (HF keeps them apart)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


# ---- the hub ---------------------------------------------------------------------------------------------

def _export_hub(folder: Path, recipe: Any, repo_id: str, *, private: bool, adapter_only: bool,
                dry_run: bool, sink: EventSink, cancel: threading.Event | None) -> ExportResult:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from fnapi import auth

    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("it has no owner part")
    except HFValidationError as exc:
        raise ExportError(f"--to hub {repo_id!r} is not a repository id ({exc})",
                          "use owner/name, for example my-user/smollm2-arithmetic") from None
    if adapter_only:
        adapter = folder / "adapter"
        if not adapter.is_dir():
            raise ExportError(f"--adapter-only: run {folder} has no LoRA adapter (it trained the full model)",
                              "upload the full model (leave out --adapter-only)")
        if recipe.mask.switches()[0] != "none":
            raise ExportError(f"--adapter-only: run {folder} switches neurons off in the forward pass "
                              f"(mask ablate: {recipe.mask.switches()[0]}), which an adapter cannot carry",
                              "upload the merged model (leave out --adapter-only): the ablation is baked into it")
    token = auth.resolve_token()
    if not dry_run:
        if not token.found:
            raise ExportError("--to hub: no Hugging Face token found to upload with",
                              "set HF_TOKEN or run `fnapi auth login`; `--dry-run` shows what would be uploaded")
        problem = auth.hub_problem()
        if problem:
            raise OfflineError(f"--to hub: the Hugging Face hub cannot be reached: {problem}",
                               "nothing was uploaded; export with --to hf now and upload later")
    result = ExportResult(target="hub", run_dir=folder, repo_id=repo_id, private=private, dry_run=dry_run)
    root = Path(tempfile.mkdtemp(prefix=".hub-upload.", suffix=".tmp", dir=folder))
    staging = root / "upload"
    try:
        if adapter_only:
            shutil.copytree(folder / "adapter", staging)
            from fnapi.paths import atomic_write_text

            atomic_write_text(staging / "README.md", model_card(folder, adapter_only=True))
        else:
            result = _export_local(folder, "hf", staging, "f16", sink=sink, cancel=cancel)
            result.target, result.path, result.repo_id = "hub", None, repo_id
            result.private, result.dry_run = private, dry_run
        result.files = _listing(staging)
        result.card = (staging / "README.md").read_text(encoding="utf-8")
        if dry_run:
            sink.emit(Log(message=f"dry run: would upload {len(result.files)} files ({_size(result.bytes)}) to "
                                  f"{'private' if private else 'public'} {repo_id}; "
                                  + ("a token was found" if token.found else "no token found (an upload would fail)"),
                          stage="export"))
            return result
        result.url = _upload(staging, repo_id, private, token.token, recipe.name, result.bytes, sink, cancel)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _upload(staging: Path, repo_id: str, private: bool, token: str | None, name: str, size: int, sink: EventSink,
            cancel: threading.Event | None) -> str:
    from huggingface_hub import HfApi

    from fnapi.auth import hub_endpoint
    from fnapi.redaction import redact

    with stage(sink, "upload", total=2, cancel=cancel, description=f"{repo_id} ({_size(size)})") as progress:
        api = HfApi(endpoint=hub_endpoint(), token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            progress.advance(message=f"repository {repo_id} ({'private' if private else 'public'})")
            api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="model",
                              commit_message=f"fnapi export of the run {name}")
        except Exception as exc:  # huggingface_hub raises HTTP, OS and validation errors alike
            raise ExportError(redact(f"--to hub: the upload to {repo_id} failed: {type(exc).__name__}: {exc}"),
                              "check the token's write permission (`fnapi auth status`) and the repository id") from None
        progress.advance(message="uploaded")
    return str(url)


# ---- the model card --------------------------------------------------------------------------------------

def model_card(folder: str | Path, *, adapter_only: bool = False) -> str:
    """README.md for an exported run: YAML metadata (base model, library, tags), then the base model,
    method, mask in words, template provenance and the forgetting table with its intervals, all
    from the run's ``recipe.yaml``, ``report.json`` and ``template.json``."""
    import yaml

    from fnapi.eval_target import run_recipe
    from fnapi.models.source import EMBEDDED_ORIGIN, ModelSource
    from fnapi.redaction import redact
    from fnapi.report import ForgettingReport

    folder = Path(folder)
    recipe = run_recipe(folder)
    report = None
    try:
        report = ForgettingReport.from_dict(json.loads((folder / "report.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        pass
    source = ModelSource.parse(recipe.model.name) if recipe.model.name else None
    base_id = EMBEDDED_ORIGIN if source and source.kind == "embedded" else recipe.model.name if source and source.kind == "hub" else None
    meta: dict[str, Any] = {}
    if base_id:
        meta["base_model"] = base_id
    meta["library_name"] = "peft" if adapter_only else "transformers"
    meta["tags"] = ["fnapi", "functional-networks", recipe.train.method]
    mask_info = (report.mask if report else {}) or {}
    preset, (ablate, train) = recipe.mask.preset, recipe.mask.switches()
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {recipe.name}", "",
             f"Fine-tuned with [fnapi](https://pypi.org/project/fntui/) from the recipe `{recipe.name}`"
             + (" (the LoRA adapter alone)." if adapter_only else "."), "",
             f"- **Base model:** `{recipe.model.name}`" + (f" ({base_id})" if base_id and base_id != recipe.model.name else ""),
             f"- **Method:** {recipe.train.method}, {report.steps if report else recipe.train.steps} steps, "
             f"learning rate {recipe.train.learning_rate:g}"]
    if (ablate, train) == ("none", "all") and (preset in (None, "none")):
        lines.append("- **Mask:** none (the whole model trained)")
    else:
        words = mask_info.get("in_words") or f"ablate {ablate}, train {train}"
        lines.append(f"- **Mask:** preset `{preset}`: {words}")
        if ablate != "none" and not adapter_only:
            lines.append("  The neurons it switches off are zeroed in these weights, so the model behaves as it "
                         "did in the run.")
    lines.append(f"- **Template:** {_template_words(folder)}")
    lines += ["", "## Forgetting", ""]
    if report is not None and any(s.before is not None for s in (report.task, report.probes, report.text_nll)):
        lines += ["Scores before and after fine-tuning, with 95% bootstrap intervals (paired for the change).", "",
                  *report.forgetting_markdown()]
    else:
        lines.append("This run wrote no scores (evaluation was off, or it has no report.json).")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", ""]
    if adapter_only:
        lines += ["from peft import PeftModel", "",
                  f"base = AutoModelForCausalLM.from_pretrained({base_id or recipe.model.name!r})",
                  "model = PeftModel.from_pretrained(base, \"REPO_ID\")"]
    else:
        lines += ["model = AutoModelForCausalLM.from_pretrained(\"REPO_ID\")",
                  "tokenizer = AutoTokenizer.from_pretrained(\"REPO_ID\")"]
    lines += ["```", ""]
    return redact("\n".join(lines))


def _template_words(folder: Path) -> str:
    """Where the run's functional networks came from, in one line."""
    from fnapi.errors import FnapiError
    from fnapi.networks.template import Template

    file = folder / "template.json"
    if not file.is_file():
        return "none (no functional networks were used)"
    try:
        template = Template.load(file)
    except FnapiError:
        return "template.json (unreadable)"
    method = template.method.get("name") or "ica"
    sources = template.data.get("sources") or template.data.get("source") or []
    sources = ", ".join(map(str, sources)) if isinstance(sources, list) else str(sources)
    rows = template.data.get("rows")
    return (f"{len(template.components)} networks found by {method} at `{template.site}` (width {template.width}) "
            f"of `{template.model.get('name', '?')}`"
            + (f", from {sources}" if sources else "") + (f" ({rows} rows)" if rows else "")
            + f", made {template.created}")
