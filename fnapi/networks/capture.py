"""Streaming activation capture at a site of the MLP down-projection.

``mlp.out`` is the OUTPUT of each block's down-projection (width = hidden size), ``mlp.hidden`` its
INPUT (width = intermediate size). :func:`capture_activations` runs the model over token sequences
in batches and writes the chosen layers' activations, for real tokens only (no padding, no special
tokens), straight into one preallocated token-by-neuron buffer (float16 by default): the layers'
blocks side by side, one row per kept token. That buffer is the only large allocation.

Only the blocks up to the last chosen layer run: a hook on that layer raises a private exception
after storing its activations, so later blocks and the LM head never compute. Hooks live only
inside a context manager that removes them even when something fails.

>>> from fnapi.models.tiny import tiny_model
>>> acts = capture_activations(tiny_model("llama"), [[5, 6, 7, 8]], site="mlp.hidden", layers=[1])
>>> tuple(acts.values.shape)
(4, 160)
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fnapi.errors import DataError, TemplateError
from fnapi.events import EventSink, stage
from fnapi.models.registry import ArchitectureAdapter, get_adapter
from fnapi.models.runtime import eval_mode
from fnapi.networks.ica import NeuronLayout
from fnapi.sites import site as site_of

#: Tokens per forward batch (sequences x padded length); bounds the model's working memory.
BATCH_TOKENS = 4096


@dataclass
class Activations:
    """A captured token-by-neuron matrix and where each row came from.

    ``values`` is (rows, len(layers) * width): the block of columns ``i*width:(i+1)*width`` holds
    layer ``layers[i]``. Row ``r`` is token ``token_ids[r]`` at ``positions[r]`` of sequence
    ``sequence_index[r]`` (an index into ``sequences``).
    """

    values: torch.Tensor
    site: str
    layers: list[int]
    width: int
    token_ids: torch.Tensor
    sequence_index: torch.Tensor
    positions: torch.Tensor
    sequences: list[list[int]] = field(repr=False)

    @property
    def layout(self) -> NeuronLayout:
        return NeuronLayout(tuple(self.layers), self.width)

    @property
    def n_rows(self) -> int:
        return int(self.values.shape[0])


class ActivationOverflowError(TemplateError):
    """Activations too large for the float16 buffer (capture again into float32)."""


class _StopForward(Exception):
    """Raised by the last needed block's hook so that nothing after it runs."""


def site_width(adapter: ArchitectureAdapter, model: torch.nn.Module, name: str) -> int:
    """Neurons per layer at site ``name``."""
    return site_of(name).width({"hidden_size": adapter.hidden_size(model),
                             "intermediate_size": adapter.intermediate_size(model)})


@contextlib.contextmanager
def site_hooks(model: torch.nn.Module, adapter: ArchitectureAdapter, layers: Sequence[int], name: str,
               store: Callable[[int, torch.Tensor], None], *, stop_after_last: bool = True) -> Iterator[None]:
    """Call ``store(slot, activation)`` for each chosen layer's site ``name`` during a forward pass.

    ``slot`` is the position of the layer in ``layers``. With ``stop_after_last`` the hook of the
    last layer raises :class:`_StopForward` (catch it around the forward call). Hooks are removed on
    exit, whatever happened inside.
    """
    where = site_of(name)
    handles = []
    last = max(layers)
    try:
        for slot, layer in enumerate(layers):
            def see(activations, slot=slot, stop=stop_after_last and layer == last):
                store(slot, activations)
                if stop:
                    raise _StopForward
            handles.append(where.observe(adapter.down_proj(model, layer), see))
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture_activations(model: torch.nn.Module, sequences: Sequence[Sequence[int]], *, site: str = "mlp.out",
                        layers: Sequence[int] | None = None, pad_token_id: int | None = None,
                        exclude_token_ids: Sequence[int] = (), max_length: int | None = None,
                        dtype: torch.dtype = torch.float16, autocast: torch.dtype | None = None,
                        batch_tokens: int = BATCH_TOKENS, batches: Sequence[Sequence[int]] | None = None,
                        adapter: ArchitectureAdapter | None = None,
                        sink: EventSink | None = None, cancel: threading.Event | None = None) -> Activations:
    """Capture ``site`` activations of ``layers`` (default: all) for every kept token of ``sequences``.

    Tokens in ``exclude_token_ids`` (pass the tokenizer's special ids) and padding are not kept;
    sequences are cut to ``max_length``. ``dtype`` is the buffer's dtype; ``autocast`` (for example
    ``torch.bfloat16``) runs the forward under autocast, which is several times faster on CPUs with
    bf16 support. Non-finite activations raise :class:`TemplateError` naming layer and sequence.
    Progress goes to ``sink`` as stage ``capture``; setting ``cancel`` stops between batches.
    ``batches`` (lists of indices into ``sequences``, see :func:`batch_plan`) captures only those
    batches, in that order, instead of every sequence grouped by length.
    """
    site_of(site)  # an unknown site is refused before any work
    adapter = adapter or get_adapter(model)
    num_layers = adapter.num_layers(model)
    layers = sorted({int(layer) for layer in (range(num_layers) if layers is None else layers)})
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise TemplateError(f"layers {list(layers)} must be non-empty and within 0-{num_layers - 1}")
    width = site_width(adapter, model, site)
    sequences = [[int(t) for t in seq[:max_length]] for seq in sequences]
    excluded = torch.tensor(sorted({int(t) for t in exclude_token_ids}), dtype=torch.long)
    keep = [~torch.isin(torch.tensor(seq, dtype=torch.long), excluded) for seq in sequences]
    batches = batch_plan(sequences, batch_tokens=batch_tokens) if batches is None else [[int(i) for i in b] for b in batches]
    n_rows = int(sum(int(keep[i].sum()) for batch in batches for i in batch))
    if n_rows == 0:
        raise DataError(f"nothing to capture: the {len(sequences)} sequences hold no tokens besides padding and "
                        "special tokens", "check that the dataset has text and max_length is not tiny")

    values = torch.empty(n_rows, len(layers) * width, dtype=dtype)
    token_ids = torch.empty(n_rows, dtype=torch.int64)
    sequence_index = torch.empty(n_rows, dtype=torch.int32)
    positions = torch.empty(n_rows, dtype=torch.int32)
    device = next(model.parameters()).device
    pad = 0 if pad_token_id is None else int(pad_token_id)

    state: dict[str, Any] = {}

    def store(slot: int, activation: torch.Tensor) -> None:
        rows = activation.detach().reshape(-1, activation.shape[-1]).index_select(0, state["flat"])
        block = values[state["row"]:state["row"] + rows.shape[0], slot * width:(slot + 1) * width]
        block.copy_(rows)
        if not bool(torch.isfinite(block).all()):
            bad = ~torch.isfinite(block).all(dim=1)
            first = int(state["seq_of_row"][int(torch.nonzero(bad)[0])])
            if bool(torch.isfinite(rows).all()):
                raise ActivationOverflowError(
                    f"layer {layers[slot]} ({site}) gave activations beyond the {dtype} range on sequence {first}",
                    "capture into a float32 buffer instead",
                )
            raise TemplateError(
                f"layer {layers[slot]} ({site}) gave NaN or infinite activations on sequence {first}",
                "the model's weights or dtype are broken for this input; try loading it in float32",
            )

    with stage(sink, "capture", total=len(batches), unit="batch", cancel=cancel,
               description=f"{n_rows} tokens x {len(layers)} layers x {width} ({site})") as progress, \
            eval_mode(model), torch.inference_mode(), \
            site_hooks(model, adapter, layers, site, store):
        row = 0
        for batch in batches:
            length = max(len(sequences[i]) for i in batch)
            ids = torch.full((len(batch), length), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            kept = torch.zeros((len(batch), length), dtype=torch.bool)
            for b, i in enumerate(batch):
                ids[b, :len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
                mask[b, :len(sequences[i])] = 1
                kept[b, :len(sequences[i])] = keep[i]
            flat = torch.nonzero(kept.reshape(-1)).squeeze(1)
            n = flat.shape[0]
            seq_of_row = torch.tensor(batch, dtype=torch.int32).repeat_interleave(length)[flat]
            state.update(flat=flat.to(device), row=row, seq_of_row=seq_of_row)
            token_ids[row:row + n] = ids.reshape(-1)[flat]
            sequence_index[row:row + n] = seq_of_row
            positions[row:row + n] = (flat % length).to(torch.int32)
            with _maybe_autocast(autocast, device):
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                except _StopForward:
                    pass
            row += n
            progress.advance()
        progress.summary.update(rows=n_rows, neurons=len(layers) * width, sequences=len(sequences))
    return Activations(values=values, site=site, layers=layers, width=width, token_ids=token_ids,
                       sequence_index=sequence_index, positions=positions, sequences=sequences)


def capture_distributed(model: torch.nn.Module, sequences: Sequence[Sequence[int]], *,
                        max_length: int | None = None, batch_tokens: int = BATCH_TOKENS,
                        **kwargs: Any) -> Activations | None:
    """:func:`capture_activations` split across the processes of a distributed run.

    Each process captures every ``world_size``-th batch of :func:`batch_plan`; the pieces are
    gathered on the main process and put back in plan order, so it holds the same matrix, row
    for row and bit for bit, as one process capturing everything. Other processes get None.
    Without a launcher this is just :func:`capture_activations`. Keyword arguments go to it.
    """
    from fnapi import distributed

    if not distributed.is_distributed():
        return capture_activations(model, sequences, max_length=max_length, batch_tokens=batch_tokens, **kwargs)
    plan = batch_plan(sequences, max_length=max_length, batch_tokens=batch_tokens)
    world, rank = distributed.world_size(), distributed.rank()
    mine = plan[rank::world]
    parts = distributed.gather_on_main(
        lambda: capture_activations(model, sequences, max_length=max_length, batch_tokens=batch_tokens,
                                    batches=mine, **kwargs) if mine else None)
    if parts is None:
        return None
    return _merge_shards(parts, plan)


def _merge_shards(parts: list[Activations | None], plan: list[list[int]]) -> Activations:
    """Interleave per-process captures (process ``r`` holds batches ``r, r+W, ...``) back into plan order."""
    world = len(parts)
    pieces: list[list[tuple[int, int]]] = [[] for _ in range(world)]  # per process: (start, stop) of each batch
    for owner, part in enumerate(parts):
        start = 0
        for batch in plan[owner::world]:
            count = int(torch.isin(part.sequence_index[start:], torch.tensor(batch, dtype=torch.int32)).sum())
            pieces[owner].append((start, start + count))
            start += count
    first = next(p for p in parts if p is not None)
    rows = sum(p.n_rows for p in parts if p is not None)
    merged = {name: torch.empty((rows, *getattr(first, name).shape[1:]), dtype=getattr(first, name).dtype)
              for name in ("values", "token_ids", "sequence_index", "positions")}
    row = 0
    for index in range(len(plan)):
        owner = index % world
        start, stop = pieces[owner][index // world]
        for name, tensor in merged.items():
            tensor[row:row + stop - start] = getattr(parts[owner], name)[start:stop]
        row += stop - start
    return Activations(site=first.site, layers=first.layers, width=first.width, sequences=first.sequences, **merged)


def batch_plan(sequences: Sequence[Sequence[int]], *, max_length: int | None = None,
               batch_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """The batches :func:`capture_activations` runs, as lists of sequence indices, in row order.

    Sequences of similar length go together (less padding), longest first, each batch within
    ``batch_tokens`` (its padded size is its first sequence's length, cut to ``max_length``). Rows of
    the captured matrix follow these batches, so capturing any subset of them with the ``batches``
    argument gives exactly those rows of the full capture (same padding, same values).
    """
    lengths = [len(seq[:max_length]) for seq in sequences]
    order = sorted((i for i, length in enumerate(lengths) if length), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _maybe_autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---- sequences from datasets -------------------------------------------------------------------

@dataclass
class CaptureData:
    """Token sequences from one or more datasets, and their provenance for the template."""

    sequences: list[list[int]]
    sources: list[dict[str, Any]]  # per dataset: source, rows, tokens

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for seq in self.sequences:
            digest.update(len(seq).to_bytes(4, "little"))
            digest.update(torch.tensor(seq, dtype=torch.int64).numpy().tobytes())
        return digest.hexdigest()[:12]


def load_sequences(data_specs: Sequence[str], tokenizer: Any, *, samples: int, max_length: int,
                   chat_template: str = "auto") -> CaptureData:
    """Read up to ``samples`` rows of each dataset and tokenise them (cut to ``max_length``).

    Any data spec the data layer reads works (files, folders, ``builtin:NAME``). A dataset that yields
    no rows raises :class:`DataError` naming it.
    """
    from fnapi.data.loading import read_conversations
    from fnapi.data.templating import tokenize

    if not data_specs:
        raise DataError("no dataset given to capture activations from", "pass --data PATH (for example builtin:text)")
    sequences: list[list[int]] = []
    sources = []
    for data_spec in data_specs:
        conversations, _report = read_conversations(data_spec, max_samples=samples)
        if not conversations:
            raise DataError(f"dataset {data_spec} has no usable rows to capture activations from")
        tokenized = tokenize(conversations, tokenizer, chat_template=chat_template, max_length=max_length,
                             cache=False)
        rows = [list(ids) for ids in tokenized.input_ids if ids]
        if not rows:
            raise DataError(f"dataset {data_spec}: every row tokenised to nothing")
        sequences.extend(rows)
        sources.append({"source": data_spec, "rows": len(rows), "tokens": sum(len(r) for r in rows)})
    return CaptureData(sequences=sequences, sources=sources)
