"""Attribution templates: the LoKI way of choosing neurons, as a second way to build a template.

Where ICA groups neurons that fire together, attribution asks which MLP output channels matter for
producing the answers of a dataset. Three steps, each a public function:

1. :func:`attribution_scores` — integrated gradients per sample and per (layer, channel) at the
   ``mlp.out`` site. Every selected block's down-projection output is multiplied channel-wise by a
   gate ``s`` that goes from 0 to 1 along a straight path; the attribution of a channel is the
   path integral of d(objective)/d(s), approximated with the trapezoid rule on ``steps`` points
   (LoKI's default, ``riemann_trapezoid``). The objective is the mean log-probability of the answer
   tokens (``labels != -100``). By completeness the attributions of one sample add up to
   objective(all gates 1) - objective(all gates 0), up to the quadrature error.
   (LoKI uses Captum's LayerIntegratedGradients on the same modules; gating all layers at once
   makes one backward pass per step give every layer's attribution.)
2. :func:`select_layer_balanced` — LoKI's layer-balanced strategy: the same quota in every layer.
   Per sample and layer, the ``k`` least (or most) important channels by ``|attribution|`` get a
   vote; per layer the ``k`` channels with the most votes are chosen.
3. :func:`attribution_template` — runs both and returns a :class:`Template` with one component per
   selection (by default component 0 = most important, component 1 = least important; LoKI trains
   the least important ones).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from fnapi.errors import DataError, TemplateError
from fnapi.events import EventSink, stage
from fnapi.models.registry import get_adapter
from fnapi.networks.template import Component, Template, model_identity

#: Points of the integrated-gradients path (the trapezoid rule's nodes), run as one batch per example.
DEFAULT_STEPS = 8

SELECTIONS = ("most", "least")
OBJECTIVE = "mean log-prob of answer tokens"
# Tokens whose component activation is highest are kept as a description of each component.
_TOP_TOKENS = 8
_CONTEXT_TOKENS = 6


def attribution_scores(model: torch.nn.Module, examples: Any, *, steps: int = DEFAULT_STEPS,
                       layers: Sequence[int] | None = None,
                       sink: EventSink | None = None, cancel: threading.Event | None = None) -> torch.Tensor:
    """Integrated-gradients attribution of every ``mlp.out`` channel, per sample.

    ``examples`` is tokenised data with ``input_ids`` and ``labels`` (a ``TokenizedData``, a list
    of dicts, or ``(input_ids, labels)`` pairs); samples without answer tokens are skipped. Returns a float32 tensor
    ``[samples, len(layers), hidden]`` (signed; larger magnitude = more important).
    """
    if steps < 2:
        raise TemplateError(f"attribution steps must be at least 2 (got {steps}): the trapezoid rule needs both ends")
    pairs = _answerable(examples)
    adapter = get_adapter(model)
    layers = _layers(layers, adapter.num_layers(model))
    hidden = adapter.hidden_size(model)
    device = next(model.parameters()).device
    alphas = torch.linspace(0.0, 1.0, steps, device=device)
    weights = torch.full((steps,), 1.0 / (steps - 1), device=device)
    weights[0] = weights[-1] = 0.5 / (steps - 1)

    scores = torch.zeros(len(pairs), len(layers), hidden)
    with stage(sink, "attribution", total=len(pairs), unit="sample", cancel=cancel,
               description=f"integrated gradients, {steps} steps, {len(layers)} layers") as progress, \
            frozen_eval(model):
        for index, (ids, labels) in enumerate(pairs):
            # one batch row per integration step; the gates are the leaves we differentiate
            gates = [alphas.view(steps, 1, 1).expand(steps, 1, hidden).clone().requires_grad_(True) for _ in layers]
            input_ids = torch.tensor([ids], device=device).expand(steps, -1)
            with _gated(model, adapter, layers, gates):
                logits = model(input_ids=input_ids).logits
            objective = _answer_log_prob(logits, torch.tensor(labels, device=device))
            grads = torch.autograd.grad((objective * weights).sum(), gates)
            scores[index] = torch.stack([g.sum(dim=(0, 1)) for g in grads]).float().cpu()
            progress.advance()
        progress.summary.update(samples=len(pairs), layers=len(layers), steps=steps)
    return scores


def select_layer_balanced(scores: torch.Tensor, quota_percent: float, select: str, layers: Sequence[int]) -> dict[int, list[int]]:
    """Per layer, the ``quota_percent`` % of channels most often among the least/most important.

    ``scores`` is ``[samples, len(layers), hidden]`` from :func:`attribution_scores`; importance is
    ``|attribution|``. Ties in votes go to the lower (``least``) or higher (``most``) mean
    importance, then to the lower index, so the choice is deterministic.
    """
    if select not in SELECTIONS:
        raise TemplateError(f"select {select!r} is not a selection; use one of {', '.join(SELECTIONS)}")
    k = quota_size(quota_percent, scores.shape[-1])
    importance = scores.abs()
    order = importance.argsort(dim=-1, descending=select == "most", stable=True)[..., :k]
    votes = torch.zeros(importance.shape[1:]).scatter_add_(
        -1, order.permute(1, 0, 2).reshape(len(layers), -1),
        torch.ones(len(layers), order.shape[0] * k))
    mean = importance.mean(dim=0)
    chosen = {}
    for slot, layer in enumerate(layers):
        # stable sorts, least significant key first: index, then mean importance, then votes
        ranking = torch.arange(scores.shape[-1])
        tie = mean[slot] if select == "least" else -mean[slot]
        ranking = ranking[tie[ranking].argsort(stable=True)]
        ranking = ranking[(-votes[slot][ranking]).argsort(stable=True)]
        chosen[layer] = sorted(ranking[:k].tolist())
    return chosen


def quota_size(quota_percent: float, width: int) -> int:
    """Channels per layer for a quota in percent of the width (at least one)."""
    if not 0 < quota_percent <= 100:
        raise TemplateError(f"quota must be a percentage in (0, 100] (got {quota_percent})")
    return max(1, round(quota_percent / 100 * width))


def attribution_template(loaded: Any, examples: Any, *, quota_percent: float = 10.0, steps: int = DEFAULT_STEPS,
                         layers: Sequence[int] | None = None, select: Sequence[str] = SELECTIONS,
                         sources: list[str] | None = None, sink: EventSink | None = None,
                         cancel: threading.Event | None = None) -> Template:
    """Build an ``attribution`` template: one component per entry of ``select``.

    ``loaded`` is a ``LoadedModel``, or a tuple ``(model, tokenizer)`` / ``(model, tokenizer,
    info)`` where ``info`` is a ``ModelInfo`` or a dict with its keys. ``examples`` are tokenised
    (``input_ids`` and ``labels``); those without answer tokens are skipped. ``sources`` names the
    datasets for the template's provenance.
    """
    model, tokenizer, info = _unpack(loaded)
    adapter = get_adapter(model)
    layers = _layers(layers, adapter.num_layers(model))
    # check the cheap arguments before the expensive pass
    unknown = [how for how in select if how not in SELECTIONS]
    if unknown or not select:
        raise TemplateError(f"select {list(select)!r}: give one or more of {', '.join(SELECTIONS)}")
    quota_size(quota_percent, adapter.hidden_size(model))
    pairs = _answerable(examples)
    scores = attribution_scores(model, pairs, steps=steps, layers=layers, sink=sink, cancel=cancel)
    hidden = scores.shape[-1]
    importance = scores.abs().mean(dim=0)
    components = []
    for cid, how in enumerate(select):
        neurons = select_layer_balanced(scores, quota_percent, how, layers)
        picked = torch.cat([importance[slot, neurons[layer]] for slot, layer in enumerate(layers)])
        components.append(Component(cid, neurons, None, {
            "selection": how,
            "mean_abs_attribution": float(picked.mean()),
        }))
    if tokenizer is not None:
        _add_top_tokens(model, tokenizer, adapter, pairs, components, sink=sink, cancel=cancel)
    answer_tokens = sum(sum(1 for t in labels[1:] if t != -100) for _, labels in pairs)
    return Template(
        site="mlp.out", width=hidden, num_layers=adapter.num_layers(model), layers=list(layers),
        components=components, model=model_identity(info),
        method={"name": "attribution", "steps": steps, "quota": quota_percent,
                "per_layer": quota_size(quota_percent, hidden), "integration": "riemann_trapezoid",
                "objective": OBJECTIVE, "importance": "abs", "selections": list(select)},
        data={"sources": list(sources or []), "rows": len(pairs),
              "tokens": sum(len(ids) for ids, _ in pairs), "answer_tokens": answer_tokens,
              "fingerprint": _data_fingerprint(pairs)},
    )


# ---- hooks -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _gated(model, adapter, layers: Sequence[int], gates: Sequence[torch.Tensor]) -> Iterator[None]:
    """Multiply each chosen block's down-projection output by its gate while inside."""
    handles = []
    try:
        for layer, gate in zip(layers, gates):
            def hook(module, inputs, output, gate=gate):
                # some families (OPT) flatten batch and time before the MLP: gate per batch row
                rows = output.reshape(gate.shape[0], -1, output.shape[-1])
                return (rows * gate.to(output.dtype)).reshape(output.shape)
            handles.append(adapter.down_proj(model, layer).register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def frozen_eval(model) -> Iterator[None]:
    """Eval mode, and no parameter gradients (only what an attribution differentiates needs them),
    restored afterwards."""
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)


def _answer_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the answer tokens, per batch row (labels are not yet shifted)."""
    targets = labels[1:]
    keep = targets != -100
    log_probs = torch.log_softmax(logits[:, :-1][:, keep].float(), dim=-1)
    return log_probs.gather(-1, targets[keep].view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1).mean(-1)


def _add_top_tokens(model, tokenizer, adapter, pairs, components: list[Component], *,
                    sink: EventSink | None, cancel: threading.Event | None) -> None:
    """Record, per component, the tokens where its channels' mean |output| is highest."""
    layers = sorted({layer for c in components for layer in c.neurons})
    best: list[list[tuple[float, int, int]]] = [[] for _ in components]  # (activation, sample, position)
    with stage(sink, "attribution_tokens", total=len(pairs), unit="sample", cancel=cancel) as progress, \
            torch.no_grad():
        for index, (ids, _) in enumerate(pairs):
            outputs: dict[int, torch.Tensor] = {}
            handles = [adapter.down_proj(model, layer).register_forward_hook(
                lambda module, inputs, output, layer=layer, store=outputs: store.__setitem__(
                    layer, output.reshape(-1, output.shape[-1]).abs().float()))
                for layer in layers]
            try:
                model(input_ids=torch.tensor([ids], device=next(model.parameters()).device))
            finally:
                for handle in handles:
                    handle.remove()
            for slot, component in enumerate(components):
                total = sum(outputs[layer][:, channels].sum(-1) for layer, channels in component.neurons.items())
                activation = (total / max(component.size, 1)).cpu()
                for position in activation.topk(min(_TOP_TOKENS, len(ids))).indices.tolist():
                    best[slot].append((float(activation[position]), index, position))
                best[slot] = sorted(best[slot], key=lambda item: (-item[0], item[1], item[2]))[:_TOP_TOKENS]
            progress.advance()
    for component, found in zip(components, best):
        component.stats["top_tokens"] = [
            {"token": tokenizer.decode([pairs[i][0][p]]),
             "context": tokenizer.decode(pairs[i][0][max(0, p - _CONTEXT_TOKENS):p + 1]),
             "activation": round(value, 6)}
            for value, i, p in found
        ]


# ---- inputs ----------------------------------------------------------------------------------------

def _unpack(loaded: Any) -> tuple[Any, Any, Any]:
    if hasattr(loaded, "model") and hasattr(loaded, "info"):
        return loaded.model, getattr(loaded, "tokenizer", None), loaded.info
    if isinstance(loaded, (tuple, list)) and 1 <= len(loaded) <= 3:
        model, tokenizer, info = (*loaded, None, None)[:3]
    else:
        model, tokenizer, info = loaded, None, None
    if info is None:
        from fnapi.models.loading import describe

        info = describe(model, getattr(model, "name_or_path", "") or type(model).__name__)
    return model, tokenizer, info


def _pairs(examples: Any) -> Iterable[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` per example from TokenizedData, a list of dicts, or pairs."""
    if hasattr(examples, "input_ids") and hasattr(examples, "labels"):
        yield from zip((list(x) for x in examples.input_ids), (list(x) for x in examples.labels))
        return
    for row, example in enumerate(examples):
        if isinstance(example, dict):
            if "labels" not in example or "input_ids" not in example:
                raise DataError(f"example {row}: needs 'input_ids' and 'labels' (tokenise it with fnapi.data.tokenize)")
            ids, labels = example["input_ids"], example["labels"]
        else:
            ids, labels = example
        ids, labels = [int(t) for t in ids], [int(t) for t in labels]
        if len(ids) != len(labels):
            raise DataError(f"example {row}: {len(ids)} input ids but {len(labels)} labels")
        yield ids, labels


def _answerable(examples: Any) -> list[tuple[list[int], list[int]]]:
    """The examples that have answer tokens to explain (a DataError if none has)."""
    pairs = [(ids, labels) for ids, labels in _pairs(examples) if any(t != -100 for t in labels[1:])]
    if not pairs:
        raise DataError("no example has answer tokens (labels other than -100 after the first position); "
                        "attribution needs target tokens to explain")
    return pairs


def _layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    chosen = sorted(set(int(layer) for layer in layers))
    if not chosen or chosen[0] < 0 or chosen[-1] >= num_layers:
        raise TemplateError(f"layers {list(layers)} must be non-empty and within 0-{num_layers - 1}")
    return chosen


def _data_fingerprint(pairs: list[tuple[list[int], list[int]]]) -> str:
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()[:12]
