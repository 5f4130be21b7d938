"""Build a template from data: capture activations, find components, cut neuron sets, describe them.

:func:`build_template` is the one entry point (the CLI, the runner and the wizard call it):

1. read up to ``section.samples`` rows of each dataset and tokenise them (``section.max_length``),
2. capture the ``section.site`` activations of ``section.layers`` into one float16 buffer,
3. fit :class:`~fnapi.networks.stability.ConsensusICA` (``section.runs`` FastICA runs over seeds and
   bootstrap resamples, clustered ICASSO-style; components ordered by stability),
4. select each component's neurons by ``section.selection``,
5. record the tokens where each component is most active, reading the buffer chunk by chunk.

``method: attribution`` goes to :func:`fnapi.networks.attribution.attribution_template` instead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fnapi import distributed
from fnapi.errors import TemplateError
from fnapi.events import EventSink, stage
from fnapi.networks.capture import (
    ActivationOverflowError,
    Activations,
    capture_distributed,
    load_sequences,
)
from fnapi.networks.ica import check_selection, default_chunk_rows
from fnapi.networks.stability import ConsensusICA
from fnapi.networks.template import Component, Template, model_identity
from fnapi.recipe import TemplateSection, parse_layers

if TYPE_CHECKING:
    from fnapi.models.loading import LoadedModel

#: Where templates go when no output path is given (relative to the working directory).
TEMPLATES_DIR = Path("ica_templates")
#: Top-activating tokens kept per component, and tokens of context shown before each.
TOP_TOKENS = 8
CONTEXT_TOKENS = 8
#: Per neuron of a component: the tokens of its ``NEURON_TOP_ROWS`` strongest rows, the
#: ``NEURON_TOKENS`` most frequent of them kept with their counts (the browser's neuron detail).
NEURON_TOP_ROWS = 32
NEURON_TOKENS = 3


def build_template(loaded: LoadedModel, section: TemplateSection, data_specs: Sequence[str] | None = None, *, seed: int,
                   pca_dims: int | None = None, precision: str = "auto", sink: EventSink | None = None,
                   cancel: threading.Event | None = None) -> Template:
    """Build a template for ``loaded`` (a ``LoadedModel``) from ``data_specs`` (default ``section.data``).

    ``seed`` fixes every random choice (PCA projection, bootstrap resamples, FastICA starts); the
    data are the first ``section.samples`` rows of each dataset whatever the seed. ``pca_dims``
    overrides the randomized PCA rank. ``precision`` ``auto`` runs the capture forward under
    bfloat16 autocast where the CPU supports it (about 3x faster; activations differ by < 1%),
    ``float32`` never does. Progress and cancellation go through ``sink`` and ``cancel``.

    Under a launcher (torchrun, accelerate launch, srun) every process captures a share of the
    batches; the main process fits the ICA on the gathered matrix (the same one a single process
    captures, so the template is the same) and every process returns its template.
    """
    sink = distributed.main_process_sink(sink)
    data_specs = list(data_specs or section.data)
    if not data_specs:
        raise TemplateError("no data to build the template from", "give --data PATH or template.data in the recipe")
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    adapter = loaded.adapter
    num_layers = adapter.num_layers(model)
    layers = parse_layers(section.layers, num_layers)
    if section.method == "attribution":
        return _build_attribution(loaded, section, data_specs, layers, sink=sink, cancel=cancel)
    if section.method == "loki":
        return _build_loki(loaded, section, data_specs, layers, sink=sink, cancel=cancel)
    if section.method != "ica":
        raise TemplateError(f"template.method {section.method!r} is unknown; use ica, loki or attribution")
    selection = section.selection
    check_selection(selection.rule, selection.value, selection.sign)

    data = load_sequences(data_specs, tokenizer, samples=section.samples, max_length=section.max_length)
    autocast = _autocast_dtype(model, precision)
    capture_kwargs = dict(site=section.site, layers=layers, pad_token_id=tokenizer.pad_token_id,
                          exclude_token_ids=tokenizer.all_special_ids, max_length=section.max_length,
                          autocast=autocast, adapter=adapter, sink=sink, cancel=cancel)
    try:
        acts = capture_distributed(model, data.sequences, dtype=torch.float16, **capture_kwargs)
        buffer_dtype = "float16"
    except ActivationOverflowError as exc:
        _log(sink, f"{exc.message}; capturing again into a float32 buffer", "warning")
        acts = capture_distributed(model, data.sequences, dtype=torch.float32, **capture_kwargs)
        buffer_dtype = "float32"
    # Only the main process holds the whole matrix: it fits the ICA, the others receive the template.
    return distributed.on_main(_fit_ica, acts, buffer_dtype, data, section, data_specs, layers, num_layers, info,
                               tokenizer, seed=seed, pca_dims=pca_dims, autocast=autocast, sink=sink,
                               cancel=cancel)


def _fit_ica(acts: Activations, buffer_dtype: str, data: Any, section: TemplateSection, data_specs: list[str],
             layers: list[int], num_layers: int, info: Any, tokenizer: Any, *, seed: int, pca_dims: int | None,
             autocast: torch.dtype | None, sink: EventSink | None, cancel: threading.Event | None) -> Template:
    """ICA, neuron selection and top tokens on a captured matrix: the template."""
    selection = section.selection
    blocks = 1 if section.mode == "global" else len(layers)
    with stage(sink, "ica", total=blocks * section.runs, unit="run", cancel=cancel,
               description=f"{section.components} components, {section.runs} runs, {section.mode}") as progress:
        consensus = ConsensusICA(
            n_components=section.components, runs=section.runs, pca_dims=pca_dims, mode=section.mode,
            layer_width=acts.width, random_state=seed, progress=progress.advance,
        ).fit(acts.values)
        progress.summary["explained_variance"] = [round(v, 4) for v in consensus.explained_variance_ratio_]
    neuron_sets = consensus.neuron_sets(acts.layout, rule=selection.rule, value=selection.value, sign=selection.sign)
    tokens = top_tokens(consensus, acts, tokenizer, sink=sink, cancel=cancel)
    details = neuron_details(consensus, acts, tokenizer, neuron_sets)

    components = []
    for index, neurons in enumerate(neuron_sets):
        stats: dict[str, Any] = {
            "runs_found": int(consensus.runs_present_[index]),
            "cluster_size": int(consensus.cluster_size_[index]),
            "top_tokens": tokens[index],
            "neuron_detail": details[index],
        }
        if section.mode == "per_layer":
            stats["layer"] = layers[int(consensus.component_block_[index])]
        stability = float(consensus.stability_[index])
        components.append(Component(index, neurons, None if np.isnan(stability) else round(stability, 6), stats))

    warnings = []
    asked = section.components * blocks
    if len(components) < asked:
        # The PCA before ICA cannot have more dimensions than token rows - 1: the rest is noise.
        warnings.append(
            f"asked for {section.components} components{' per layer' if blocks > 1 else ''}, but "
            f"{acts.n_rows} captured token rows allow only {len(components) // blocks}; the template holds "
            f"{len(components)}. Capture more tokens (template.samples x template.max_length) for more.")
        _log(sink, warnings[-1], "warning")
    positional = [c.id for c in components if c.one_position is not None]
    if positional:
        # Such components follow a token's position (massive activations), not the text's content.
        warnings.append(f"component{'s' if len(positional) > 1 else ''} {', '.join(f'#{i}' for i in positional)}: "
                        "every top token sits at one position (usually the first token); protecting "
                        "such a component keeps little knowledge")
        _log(sink, warnings[-1], "warning")

    return Template(
        site=section.site, width=acts.width, num_layers=num_layers, layers=layers, components=components,
        model=model_identity(info), warnings=warnings,
        method={
            "name": "ica", "mode": section.mode, "components": section.components,
            "selection": {"rule": selection.rule, "value": selection.value, "sign": selection.sign},
            "runs": section.runs, "bootstrap": consensus.bootstrap, "resample_seed": consensus.resample_seed,
            "seed": seed, "pca_dims": int(consensus.pca_dims_[0]), "power_iters": consensus.power_iters,
            "stability": "icasso-iq",
            "explained_variance": [round(v, 4) for v in consensus.explained_variance_ratio_],
            "capture": {"buffer": buffer_dtype, "autocast": str(autocast).replace("torch.", "") if autocast else None},
        },
        data={
            "sources": data_specs, "rows": len(data.sequences), "tokens": acts.n_rows,
            "fingerprint": data.fingerprint, "samples": section.samples, "max_length": section.max_length,
            "per_source": data.sources,
        },
    )


def top_tokens(decomposition: Any, acts: Activations, tokenizer: Any, *, k: int = TOP_TOKENS,
               context: int = CONTEXT_TOKENS, sink: EventSink | None = None,
               cancel: threading.Event | None = None) -> list[list[dict[str, Any]]]:
    """The ``k`` tokens where each component's signal is highest, with the text just before them.

    Reads ``acts.values`` in row chunks, keeping only a running top list per component. Repeats of
    the same token in the same context (common in templated data) are shown once.
    """
    n_components = decomposition.weights_.shape[0]
    keep = 8 * k  # room for repeats, dropped at the end
    best_values = torch.full((n_components, 0), -torch.inf)
    best_rows = torch.zeros((n_components, 0), dtype=torch.long)
    chunk_rows = default_chunk_rows(acts.values.shape[1])
    chunks = range(0, acts.n_rows, chunk_rows)
    with stage(sink, "top_tokens", total=len(chunks), unit="chunk", cancel=cancel) as progress:
        for start in chunks:
            stop = min(start + chunk_rows, acts.n_rows)
            signal = torch.from_numpy(decomposition.transform(acts.values[start:stop])).T  # (components, rows)
            values = torch.cat([best_values, signal], dim=1)
            rows = torch.cat([best_rows, torch.arange(start, stop).expand(n_components, -1)], dim=1)
            top = values.topk(min(keep, values.shape[1]), dim=1)
            best_values, best_rows = top.values, rows.gather(1, top.indices)
            progress.advance()
    result = []
    for values, rows in zip(best_values.tolist(), best_rows.tolist()):
        entries: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for value, row in zip(values, rows):
            sequence = acts.sequences[int(acts.sequence_index[row])]
            position = int(acts.positions[row])
            token = tokenizer.decode([sequence[position]])
            text = tokenizer.decode(sequence[max(0, position - context):position + 1])
            if (token, text) in seen:
                continue
            seen.add((token, text))
            entries.append({"token": token, "context": text, "activation": round(float(value), 4),
                            "sequence": int(acts.sequence_index[row]), "position": position})
            if len(entries) == k:
                break
        result.append(entries)
    return result


def neuron_details(decomposition: Any, acts: Activations, tokenizer: Any, neuron_sets: Sequence[dict[int, list[int]]],
                   *, top_rows: int = NEURON_TOP_ROWS, tokens: int = NEURON_TOKENS,
                   column_chunk: int = 256) -> list[dict[str, list]]:
    """What the browser shows for each neuron of each component, as columns (one entry per neuron,
    in the component's layer and channel order): ``layer``, ``channel``, ``loading`` (the neuron's
    weight in the component), ``mean`` and ``std`` of its captured activation, and ``top_tokens``:
    the most frequent tokens among its ``top_rows`` strongest rows (in the direction of its
    loading), as ``[token, count]`` pairs."""
    layout = acts.layout
    position = {layer: i for i, layer in enumerate(layout.layers)}
    token_ids = acts.token_ids
    found: dict[tuple[int, int], tuple[float, float, list[list[Any]]]] = {}
    wanted: list[tuple[int, int, int]] = []  # (column, component, sign)
    for index, neurons in enumerate(neuron_sets):
        for layer, channels in neurons.items():
            for channel in channels:
                column = position[layer] * layout.width + channel
                sign = 1 if decomposition.weights_[index, column] >= 0 else -1
                wanted.append((column, index, sign))
    needed = sorted({(column, sign) for column, _, sign in wanted})
    for start in range(0, len(needed), column_chunk):
        part = needed[start:start + column_chunk]
        columns = torch.tensor([c for c, _ in part])
        signs = torch.tensor([float(s) for _, s in part])
        values = acts.values[:, columns].float()  # (rows, part)
        means, stds = values.mean(dim=0), values.std(dim=0, unbiased=False)
        top = (values * signs).topk(min(top_rows, values.shape[0]), dim=0).indices  # (top_rows, part)
        for j, (column, sign) in enumerate(part):
            counts: dict[int, int] = {}
            for row in top[:, j].tolist():
                token = int(token_ids[row])
                counts[token] = counts.get(token, 0) + 1
            best = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:tokens]
            found[(column, sign)] = (float(means[j]), float(stds[j]),
                                     [[tokenizer.decode([token]), count] for token, count in best])
    result = [{"layer": [], "channel": [], "loading": [], "mean": [], "std": [], "top_tokens": []}
              for _ in neuron_sets]
    for column, index, sign in wanted:
        mean, std, top_tokens_ = found[(column, sign)]
        entry = result[index]
        entry["layer"].append(layout.layers[column // layout.width])
        entry["channel"].append(column % layout.width)
        entry["loading"].append(round(float(decomposition.weights_[index, column]), 5))
        entry["mean"].append(round(mean, 5))
        entry["std"].append(round(std, 5))
        entry["top_tokens"].append(top_tokens_)
    return result


def default_template_path(model_name: str, data_specs: Sequence[str], section: TemplateSection, seed: int,
                          root: str | Path = TEMPLATES_DIR) -> Path:
    """``ica_templates/<model>/<data>/<method>-<site>-<mode>-k<components>-seed<seed>.json``.

    >>> str(default_template_path("smollm2-135m-instruct", ["builtin:text"], TemplateSection(), 0))
    'ica_templates/smollm2-135m-instruct/text/ica-mlp.out-global-k10-seed0.json'
    """
    from fnapi.data.loading import dataset_name

    model = _slug(Path(model_name.rstrip("/")).name if Path(model_name).exists() else model_name.replace("/", "--"))
    data = "+".join(_slug(dataset_name(data_spec)) for data_spec in data_specs)[:80] or "data"
    name = f"{section.method}-{section.site}-{section.mode}-k{section.components}-seed{seed}.json"
    return Path(root) / model / data / name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "unnamed"


def _autocast_dtype(model: torch.nn.Module, precision: str) -> torch.dtype | None:
    """bfloat16 autocast for a float32 model on a CPU with native bf16 matmuls, when ``precision`` is auto."""
    if precision == "float32":
        return None
    if precision != "auto":
        raise TemplateError(f"precision {precision!r} is unknown; use auto or float32")
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
        return None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _build_attribution(loaded: Any, section: TemplateSection, data_specs: list[str], layers: list[int], *,
                       sink: EventSink | None, cancel: threading.Event | None) -> Template:
    """Attribution templates choose a share of each layer's ``mlp.out`` channels (LoKI's rule)."""
    from fnapi.data.loading import read_conversations
    from fnapi.data.templating import tokenize
    from fnapi.networks.attribution import attribution_template

    quota = row_quota(section, loaded.adapter.hidden_size(loaded.model))
    examples: dict[str, list] = {"input_ids": [], "labels": []}
    for data_spec in data_specs:
        conversations, _ = read_conversations(data_spec, max_samples=section.samples)
        tokenized = tokenize(conversations, loaded.tokenizer, max_length=section.max_length, cache=False)
        examples["input_ids"].extend(tokenized.input_ids)
        examples["labels"].extend(tokenized.labels)
    if not examples["input_ids"]:
        raise TemplateError(f"no usable rows in {', '.join(data_specs)} to attribute")
    pairs = list(zip(examples["input_ids"], examples["labels"]))
    return attribution_template(loaded, pairs, quota_percent=quota, layers=layers, select=section.select,
                                sources=data_specs, sink=sink, cancel=cancel)


def row_quota(section: TemplateSection, width: int) -> float:
    """The share of each layer's rows, in percent, that a ``loki`` or ``attribution`` template selects:
    ``template.quota``, else from the selection rule (percentile 80 is 20%, topk k is k of ``width``)."""
    if section.site != "mlp.out":
        raise TemplateError(f"method {section.method} works at site mlp.out only (got {section.site})")
    if section.quota is not None:
        return section.quota
    selection = section.selection
    if selection.rule == "percentile":
        return 100.0 - selection.value
    if selection.rule == "topk":
        return 100.0 * selection.value / width
    raise TemplateError(f"method {section.method} selects a share of each layer: set template.quota, or use "
                        "selection rule percentile or topk")


def _build_loki(loaded: Any, section: TemplateSection, data_specs: list[str], layers: list[int], *,
                sink: EventSink | None, cancel: threading.Event | None) -> Template:
    """LoKI's rows, attributed over the multiple-choice items of ``data_specs`` (any probe layout)."""
    from fnapi.data.probes import load_probes
    from fnapi.networks.loki import loki_template

    quota = row_quota(section, loaded.adapter.hidden_size(loaded.model))
    items = [item for spec in data_specs for item in load_probes(spec, limit=section.samples).items]
    return loki_template(loaded, items, quota_percent=quota, layers=layers, sources=data_specs, sink=sink,
                         cancel=cancel)


def _log(sink: EventSink | None, message: str, level: str = "info") -> None:
    if sink is not None:
        from fnapi.events import Log

        sink.emit(Log(message=message, level=level, stage="capture"))
