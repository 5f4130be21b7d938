"""Peak memory of a recipe's stages, predicted before anything heavy is loaded.

For each stage (template ``capture``, ``ica``, ``train``) the estimate is a list of named terms
whose sum is the peak of one process, on the device that does the work (``cpu``: RAM of the
process; ``cuda``: GPU memory, with the capture buffer and the ICA held in host RAM):

* ``runtime``: Python with torch, transformers and fnapi imported (CPU), or the CUDA context (GPU);
* ``weights``: parameters x bytes per parameter (4-bit: NF4 linear layers, the rest in 16/32 bit);
* ``capture buffer``: captured tokens x neurons x 2 bytes (float16), plus row bookkeeping;
* ``forward working set``: one capture batch's hidden and MLP activations;
* ``moments pass`` / ``PCA pass`` / ``FastICA``: the ICA's chunked passes over the buffer;
* ``optimizer state``: trainable parameters x (weight + gradient + two Adam moments);
* ``activations``: per token and layer ``9 h + 4 i`` values kept for the backward pass of a
  Llama-style block (norm inputs and outputs, q/k/v, attention output, four MLP tensors), or one
  block's worth plus a hidden state per layer with gradient checkpointing;
* ``logits``: tokens x vocabulary, the logits, their log-softmax and its gradient in float32;
  both per-token terms are scaled by :data:`BACKWARD_OVERHEAD` for the backward pass's temporaries.

Token counts come from the recipe's data, tokenised as the run will (the captured tokens, and the
longest training example, which makes the biggest batch); when the data cannot be read the upper
bounds ``samples x max_length`` and ``max_length`` are used and the estimate says so. The model's
shapes come from its config alone (a meta-device skeleton, no weights).

The constants were measured on CPU with torch 2.13 and transformers 5 against
``benchmarks/memory_estimate.py``; see that script for the error on the embedded model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fnapi.errors import FnapiError

MiB = 2**20
#: Resident memory of a Python process with torch, transformers, peft and fnapi loaded (CPU build).
CPU_RUNTIME = 525 * MiB
#: GPU memory taken by the CUDA context and kernels before any tensor exists.
CUDA_CONTEXT = 500 * MiB
#: Host memory of the same process on a CUDA machine (the CUDA libraries are large).
CUDA_HOST_RUNTIME = 2500 * MiB
#: Resident memory per byte of tensors kept for the backward pass: the backward pass's temporaries and
#: allocator slack add about half again (measured on CPU, see benchmarks/memory_estimate.py).
BACKWARD_OVERHEAD = 1.5
#: Bytes per parameter of a bitsandbytes NF4 linear layer with double quantization (4 bits + scales).
NF4_BYTES = 0.5 + 0.5 / 64 * 1.0
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
STAGES = ("capture", "ica", "train")


@dataclass(frozen=True)
class Term:
    """One named share of a stage's peak. ``where`` is ``device`` or ``host`` (the same on CPU)."""

    name: str
    bytes: int
    where: str = "device"
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "mib": round(self.bytes / MiB, 1), "where": self.where,
                "detail": self.detail}


@dataclass
class StageEstimate:
    """Predicted peak of one stage: the sum of its terms on the device (and in host RAM on a GPU)."""

    stage: str
    terms: list[Term]
    device: str

    @property
    def total(self) -> int:
        """Peak on the working device (all terms on CPU)."""
        return sum(t.bytes for t in self.terms if self.device == "cpu" or t.where == "device")

    @property
    def host_total(self) -> int:
        """Peak in host RAM (equal to :attr:`total` on CPU)."""
        return sum(t.bytes for t in self.terms if self.device == "cpu" or t.where == "host")

    def biggest(self, count: int = 3) -> list[Term]:
        """The largest terms, largest first."""
        return sorted(self.terms, key=lambda t: -t.bytes)[:count]

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "total": self.total, "total_mib": round(self.total / MiB, 1),
                "host_total": self.host_total, "terms": [t.to_dict() for t in self.biggest(len(self.terms))]}


@dataclass
class Estimate:
    """Per-stage peaks for a recipe on one device, checked against that device's memory."""

    device: str
    memory: int | None
    host_memory: int | None
    stages: list[StageEstimate]
    model: dict[str, Any]
    tokens: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StageEstimate:
        for stage in self.stages:
            if stage.stage == name:
                return stage
        raise KeyError(f"no stage {name!r}; the estimate has {', '.join(s.stage for s in self.stages)}")

    @property
    def warnings(self) -> list[str]:
        """One sentence per stage that will not fit (device memory, or host RAM on a GPU machine)."""
        found = []
        for stage in self.stages:
            if self.memory is not None and stage.total > self.memory:
                terms = ", ".join(f"{t.name} {_fmt(t.bytes)}" for t in stage.biggest())
                found.append(f"{stage.stage} needs about {_fmt(stage.total)} but the {self.device} has "
                             f"{_fmt(self.memory)}; biggest terms: {terms}")
            if self.device != "cpu" and self.host_memory is not None and stage.host_total > self.host_memory:
                found.append(f"{stage.stage} needs about {_fmt(stage.host_total)} of host RAM but "
                             f"{_fmt(self.host_memory)} is available")
        return found

    @property
    def fits(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "memory": self.memory, "host_memory": self.host_memory, "fits": self.fits,
                "warnings": self.warnings, "notes": self.notes, "model": self.model, "tokens": self.tokens,
                "stages": [s.to_dict() for s in self.stages]}


# ---- the model's shape, from its config ------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model; read from its config, no weights loaded."""

    name: str
    family: str
    num_layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    parameters: int
    linear_parameters: int  # in the decoder blocks' linear layers (what 4-bit quantizes)
    lora_shapes: dict[str, list[tuple[int, int]]]  # target suffix -> (in, out) of each matching linear layer

    def lora_parameters(self, rank: int, targets: list[str]) -> int:
        """Trainable parameters of a LoRA adapter of ``rank`` on modules ending in ``targets``."""
        return sum(rank * (i + o) for target in targets for i, o in self.lora_shapes.get(target, []))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "num_layers": self.num_layers, "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "vocab_size": self.vocab, "parameters": self.parameters}


def model_shape(name: str, *, trust_remote_code: bool = False) -> ModelShape:
    """The shape of model ``name`` (embedded name, folder, ``.gguf`` file or cached hub id), offline.

    Kept per process while the files behind ``name`` are unchanged: reading a GGUF file's config
    takes seconds, and ``fnapi validate`` over several recipes asks for the same model each time.
    """
    from fnapi.models.source import ModelSource

    source = ModelSource.parse(name, trust_remote_code=trust_remote_code)
    key = (source, _files_stamp(source))
    if key not in _SHAPES:
        _SHAPES[key] = shape_of_config(source.config(), name, trust_remote_code=trust_remote_code)
    return _SHAPES[key]


_SHAPES: dict[tuple, ModelShape] = {}


def _files_stamp(source: Any) -> tuple:
    """What changes when the files a parsed model data_spec reads change: their paths and modification times."""
    from fnapi.models import loading

    if source.kind == "embedded":
        candidates = [loading.embedded_cache_dir() / "config.json"]
    elif source.kind == "folder":
        candidates = [source.path / "config.json"]
    elif source.kind == "gguf":
        candidates = [source.path]
    else:  # a hub id reads the local cache, which a run does not change
        candidates = []
    return tuple((str(p), p.stat().st_mtime_ns) for p in candidates if p.exists())


def shape_of_config(config: Any, name: str, *, trust_remote_code: bool = False) -> ModelShape:
    """The :class:`ModelShape` of a model built from ``config`` on the meta device (no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return shape_of(skeleton, name)


def shape_of(model: Any, name: str) -> ModelShape:
    """The :class:`ModelShape` of a model instance (real or on the meta device)."""
    from fnapi.models.registry import get_adapter, unwrap_model

    skeleton = unwrap_model(model)
    config = skeleton.config
    adapter = get_adapter(skeleton)
    blocks = adapter.blocks(skeleton)
    linear_parameters = 0
    lora_shapes: dict[str, list[tuple[int, int]]] = {}
    for block in blocks:
        for module_name, module in block.named_modules():
            if not hasattr(module, "weight") or module.weight is None or module.weight.ndim != 2:
                continue
            linear_parameters += module.weight.numel()
            suffix = module_name.rsplit(".", 1)[-1]
            if suffix in adapter.lora_targets:
                shape = tuple(module.weight.shape)
                # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out)
                in_out = (shape[0], shape[1]) if type(module).__name__ == "Conv1D" else (shape[1], shape[0])
                lora_shapes.setdefault(suffix, []).append(in_out)
    return ModelShape(
        name=name, family=adapter.family, num_layers=adapter.num_layers(skeleton),
        hidden=adapter.hidden_size(skeleton), intermediate=adapter.intermediate_size(skeleton),
        vocab=int(getattr(config, "vocab_size", 0) or skeleton.get_input_embeddings().weight.shape[0]),
        heads=int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1)),
        parameters=sum(p.numel() for p in skeleton.parameters()), linear_parameters=linear_parameters,
        lora_shapes=lora_shapes,
    )


# ---- the terms -------------------------------------------------------------------------------------

def weight_bytes(shape: ModelShape, dtype: str, quantization: str) -> int:
    """Bytes of the loaded weights."""
    full = _DTYPE_BYTES[dtype]
    if quantization == "none":
        return shape.parameters * full
    per_linear = NF4_BYTES if quantization == "4bit" else 1.0 + 4 / 4096  # int8 plus per-row scales
    return int(shape.linear_parameters * per_linear + (shape.parameters - shape.linear_parameters) * full)


def capture_terms(shape: ModelShape, *, rows: int, layers: int, width: int, batch_tokens: int, batch_size: int,
                  longest: int, runtime: list[Term], weights: Term) -> list[Term]:
    """Terms of the capture stage: the float16 buffer and one forward batch."""
    buffer = rows * layers * width * 2
    # a few hidden-size and intermediate-size tensors of the batch exist at once, plus attention scores
    forward = batch_tokens * (4 * shape.hidden + 3 * shape.intermediate) * 4
    forward += batch_size * shape.heads * longest * longest * 4 * 2
    return [*runtime, weights,
            Term("capture buffer", buffer, "host", f"{rows:,} tokens x {layers * width:,} neurons x 2 bytes"),
            Term("row bookkeeping", rows * 16, "host", "token id, sequence and position of each row"),
            Term("forward working set", forward, "device", f"one batch of {batch_tokens:,} tokens")]


def ica_terms(*, rows: int, neurons: int, pca_dims: int, capture: list[Term]) -> list[Term]:
    """Terms of the ICA stage: the capture's memory stays, plus the largest chunked pass."""
    from fnapi.networks.ica import default_chunk_rows

    chunk = min(rows, default_chunk_rows(neurons))
    held = [t for t in capture if t.name != "forward working set"]
    moments = 2 * chunk * neurons * 8  # a float64 chunk and its square
    pca = chunk * neurons * 4 + rows * pca_dims * 4 * 2 + neurons * pca_dims * 4 * 3
    fastica = rows * pca_dims * 8 * 4  # scikit-learn copies of the reduced data in float64
    working = max(("moments pass", moments, f"{chunk:,} rows x {neurons:,} neurons in float64, twice"),
                  ("PCA pass", pca, f"{chunk:,}-row float32 chunk and the reduced data"),
                  ("FastICA", fastica, f"{rows:,} x {pca_dims} reduced data in float64"), key=lambda t: t[1])
    return [*held, Term(working[0], working[1], "host", working[2])]


def train_terms(shape: ModelShape, *, method: str, dtype: str, quantization: str, lora_rank: int,
                lora_targets: list[str], batch_size: int, seq_len: int, gradient_checkpointing: bool,
                runtime: list[Term], weights: Term) -> list[Term]:
    """Terms of the training stage: weights, optimizer state, activations, logits."""
    width = _DTYPE_BYTES[dtype]
    if method == "full":
        trainable = shape.parameters
        # weight and gradient in the model's dtype, two Adam moments (kept in the parameter's dtype)
        state = trainable * 3 * width
        state_detail = f"{trainable:,} parameters x (gradient + 2 Adam moments)"
    else:
        trainable = shape.lora_parameters(lora_rank, lora_targets)
        state = trainable * 16  # adapters train in float32: weight, gradient, 2 moments
        state_detail = f"{trainable:,} LoRA parameters x 16 bytes"
    tokens = batch_size * seq_len
    act = 4 if dtype == "float32" else 2
    per_layer = 9 * shape.hidden + 4 * shape.intermediate
    if gradient_checkpointing:
        kept = tokens * (shape.num_layers * shape.hidden + per_layer) * act
        act_detail = f"{tokens:,} tokens: one hidden state per layer + one block recomputed"
    else:
        kept = tokens * shape.num_layers * per_layer * act
        act_detail = f"{tokens:,} tokens x {shape.num_layers} layers x {per_layer:,} values"
    activations = int(kept * BACKWARD_OVERHEAD)
    logits = int(tokens * shape.vocab * (act + 8) * BACKWARD_OVERHEAD)
    terms = [*runtime, weights, Term("optimizer state", state, "device", state_detail),
             Term("activations", activations, "device", act_detail),
             Term("logits", logits, "device", f"{tokens:,} tokens x {shape.vocab:,} vocabulary")]
    if quantization != "none" and method != "full":
        # prepare_model_for_kbit_training keeps the layers 4-bit cannot hold in float32
        upcast = (shape.parameters - shape.linear_parameters) * (4 - width)
        terms.append(Term("float32 copies for k-bit training", max(upcast, 0), "device", "embeddings and norms"))
    return terms


# ---- a whole recipe ------------------------------------------------------------------------------------

def runtime_terms(device: str) -> list[Term]:
    """What a process holds before the model loads: Python and the libraries, or the CUDA context."""
    if device == "cuda":
        return [Term("runtime", CUDA_CONTEXT, "device", "CUDA context"),
                Term("host runtime", CUDA_HOST_RUNTIME, "host", "Python, torch and CUDA libraries")]
    return [Term("runtime", CPU_RUNTIME, "device", "Python with torch, transformers and fnapi")]


def training_memory(shape: ModelShape, *, device: str, batch_size: int, seq_len: int, method: str = "lora",
                    dtype: str = "float32", quantization: str = "none", lora_rank: int = 8,
                    lora_targets: Any = "auto", gradient_checkpointing: bool = False) -> StageEstimate:
    """The training stage's peak for a model of ``shape``: the one memory model that ``fnapi run``
    checks a batch with, ``fnapi estimate`` reports and :func:`fnapi.sizing.recommend` sizes a
    batch by. ``device`` is ``cpu``, ``mps`` (counted like the CPU) or ``cuda``; ``lora_targets``
    is a list of module suffixes or ``auto`` (every linear layer the adapter knows)."""
    device = "cpu" if device == "mps" else device
    weights = Term("weights", weight_bytes(shape, dtype, quantization), "device",
                   f"{shape.parameters:,} parameters in {quantization if quantization != 'none' else dtype}")
    targets = list(shape.lora_shapes) if lora_targets == "auto" else list(lora_targets)
    return StageEstimate("train", train_terms(
        shape, method=method, dtype=dtype, quantization=quantization, lora_rank=lora_rank, lora_targets=targets,
        batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
        runtime=runtime_terms(device), weights=weights), device)


def added_by_training(peak: StageEstimate) -> int:
    """Bytes training adds to a process that already holds the runtime and the weights (on CPU the
    memory still available must hold this much)."""
    return sum(t.bytes for t in peak.terms if t.name not in ("runtime", "host runtime", "weights"))


def training_peak(recipe: Any, model: Any, longest: int, device: str) -> StageEstimate:
    """The training stage of ``recipe`` for a model already loaded and data already tokenised."""
    shape = shape_of(model, recipe.model.name)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    dtype = dtype if dtype in _DTYPE_BYTES else "bfloat16"
    return recipe_training_memory(recipe, shape, device=device, dtype=dtype, seq_len=longest)


def recipe_training_memory(recipe: Any, shape: ModelShape, *, device: str, dtype: str, seq_len: int,
                           batch_size: int | None = None) -> StageEstimate:
    """:func:`training_memory` with the recipe's method, quantization, LoRA and batch settings."""
    train = recipe.train
    return training_memory(shape, device=device, batch_size=train.batch_size if batch_size is None else batch_size,
                           seq_len=seq_len, method=train.method, dtype=dtype,
                           quantization=recipe.model.quantization, lora_rank=train.lora.r,
                           lora_targets=train.lora.target_modules,
                           gradient_checkpointing=train.gradient_checkpointing)


def estimate_recipe(recipe: Any, *, device: str | None = None, memory: int | None = None,
                    read_data: bool = True) -> Estimate:
    """Estimate the stages of ``recipe`` (a :class:`~fnapi.recipe.Recipe` or a path to one).

    ``device`` is ``cpu`` or ``cuda`` (default: a CUDA GPU when this machine has one). ``memory``
    overrides the detected memory of that device (bytes). With ``read_data`` the data are read and
    tokenised to count tokens; otherwise the upper bounds from the recipe's limits are used.
    """
    from fnapi.hardware import detect_hardware
    from fnapi.recipe import Recipe

    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    report = detect_hardware()
    if device is None:
        device = "cuda" if report.has_cuda else "cpu"
    if device not in ("cpu", "cuda"):
        raise FnapiError(f"--device {device!r}: use cpu or cuda")
    if device == "cpu" and (recipe.model.quantization != "none" or recipe.train.method == "qlora"):
        what = f"model.quantization {recipe.model.quantization}" if recipe.model.quantization != "none" else "qlora"
        from fnapi.errors import HardwareError

        raise HardwareError(f"the recipe asks for {what}, which runs on CUDA GPUs only; there is nothing to "
                            "estimate on cpu", "estimate with --device cuda, or set model.quantization: none")
    gpu = report.best_cuda_device()
    if memory is None:
        memory = (gpu.total_memory if gpu is not None else None) if device == "cuda" else report.ram_available
    host_memory = report.ram_available

    shape = model_shape(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code)
    dtype = recipe.model.dtype if recipe.model.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    counts, notes = _token_counts(recipe, shape, read_data)
    runtime = runtime_terms(device)
    quantization = recipe.model.quantization
    weights = Term("weights", weight_bytes(shape, dtype, quantization), "device",
                   f"{shape.parameters:,} parameters in {quantization if quantization != 'none' else dtype}")

    stages: list[StageEstimate] = []
    section = recipe.template
    if section is not None and not section.path and section.method == "ica":
        from fnapi.networks.ica import default_pca_dims
        from fnapi.recipe import parse_layers
        from fnapi.sites import site

        layers = len(parse_layers(section.layers, shape.num_layers))
        width = site(section.site).width(shape)
        capture = capture_terms(shape, rows=counts["capture_rows"], layers=layers, width=width,
                                batch_tokens=counts["capture_batch_tokens"], batch_size=counts["capture_batch_size"],
                                longest=counts["capture_longest"], runtime=runtime, weights=weights)
        stages.append(StageEstimate("capture", capture, device))
        dims = min(default_pca_dims(section.components), max(counts["capture_rows"] - 1, 1), layers * width)
        stages.append(StageEstimate("ica", ica_terms(rows=counts["capture_rows"], neurons=layers * width,
                                                     pca_dims=dims, capture=capture), device))
    elif section is not None and not section.path:
        notes.append("attribution templates are not estimated (they take one gradient pass per example)")
    stages.append(recipe_training_memory(recipe, shape, device=device, dtype=dtype, seq_len=counts["train_longest"]))
    return Estimate(device=device, memory=memory, host_memory=host_memory, stages=stages, model=shape.to_dict(),
                    tokens=counts, notes=notes)


def _token_counts(recipe: Any, shape: ModelShape, read_data: bool) -> tuple[dict[str, Any], list[str]]:
    """Captured tokens, capture batches and the longest training example: measured, or upper bounds."""
    from fnapi.networks.capture import BATCH_TOKENS

    section = recipe.template
    data_specs = (list(section.data) or [recipe.data.path]) if section is not None else []
    bound_len = section.max_length if section is not None else 0
    counts: dict[str, Any] = {
        "capture_rows": len(data_specs) * (section.samples if section is not None else 0) * bound_len,
        "capture_batch_tokens": BATCH_TOKENS, "capture_batch_size": max(BATCH_TOKENS // max(bound_len, 1), 1),
        "capture_longest": bound_len, "train_longest": recipe.data.max_length, "measured": False,
    }
    if not read_data:
        return counts, ["token counts are upper bounds (samples x max_length, max_length)"]
    try:
        from fnapi.data import load_data, tokenize
        from fnapi.models.source import ModelSource

        model = recipe.model
        tokenizer = ModelSource.parse(model.name, revision=model.revision,
                                      trust_remote_code=model.trust_remote_code).tokenizer()
        if data_specs:
            counts.update(capture_counts(data_specs, section, tokenizer))
        data = load_data(recipe.data, seed=recipe.seed)
        tokens = tokenize(data.train, tokenizer, chat_template=recipe.data.chat_template,
                          max_length=recipe.data.max_length)
        if len(tokens):
            counts["train_longest"] = max(len(ids) for ids in tokens.input_ids)
        counts["measured"] = True
        return counts, []
    except FnapiError as exc:
        return counts, [f"token counts are upper bounds: the data could not be read ({exc.message})"]


def capture_counts(data_specs: list[str], section: Any, tokenizer: Any) -> dict[str, int]:
    """Captured token rows (special tokens excluded) and the biggest capture batch of a template build."""
    import torch

    from fnapi.networks.capture import batch_plan, load_sequences

    sequences = load_sequences(data_specs, tokenizer, samples=section.samples, max_length=section.max_length).sequences
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    rows = sum(int((~torch.isin(torch.tensor(seq[:section.max_length]), special)).sum()) for seq in sequences)
    plan = batch_plan(sequences, max_length=section.max_length)
    biggest = max(plan, key=lambda batch: len(batch) * len(sequences[batch[0]][:section.max_length]))
    longest = len(sequences[biggest[0]][:section.max_length])
    return {"capture_rows": rows, "capture_batch_tokens": len(biggest) * longest, "capture_batch_size": len(biggest),
            "capture_longest": longest}


# ---- text --------------------------------------------------------------------------------------------

def render_text(estimate: Estimate) -> str:
    """A short report: per stage the total and its biggest terms, then warnings."""
    where = f"{estimate.device} with {_fmt(estimate.memory)}" if estimate.memory else estimate.device
    lines = [f"peak memory per process on {where} (model {estimate.model['name']}, "
             f"{estimate.model['parameters']:,} parameters)"]
    for stage in estimate.stages:
        lines.append(f"  {stage.stage:<8} {_fmt(stage.total):>10}" +
                     (f"   (host RAM {_fmt(stage.host_total)})" if estimate.device != "cpu" else ""))
        for term in stage.biggest():
            lines.append(f"      {term.name:<22} {_fmt(term.bytes):>10}  {term.detail}")
    lines += [f"  note: {note}" for note in estimate.notes]
    lines += [f"warning: {warning}" for warning in estimate.warnings]
    if estimate.warnings:
        lines.append("lower train.batch_size or data.max_length (raise train.gradient_accumulation to keep the "
                     "effective batch), turn on train.gradient_checkpointing, or capture fewer template samples")
    return "\n".join(lines)


def parse_size(text: str) -> int:
    """``"24G"`` -> bytes (K, M, G, T with an optional ``i``/``B``; plain numbers are bytes).

    >>> parse_size("1.5G") == int(1.5 * 2**30)
    True
    """
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not found:
        raise FnapiError(f"--memory {text!r}: use a size like 24G or 512M")
    number, unit = float(found.group(1)), found.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def _fmt(n: int | None) -> str:
    from fnapi.hardware import format_bytes

    return format_bytes(n)
