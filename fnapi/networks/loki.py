"""LoKI's own selection of trainable down-projection rows (Knowledge-Value Attribution + its
layer-balanced rule), computed as LoKI's code computes it.

Two steps, each a public function:

1. :func:`kva_scores` — per multiple-choice item, the item is asked in LoKI's MMLU prompt (the
   question, the lettered choices, "Answer:", in the chat template with the assistant turn opened)
   and the model's most likely next token is taken as its prediction. Then, one layer at a time,
   that layer's down-projection output (every position) is moved along the straight line from its
   value on a baseline input (the same length of token id 0) to its value on the item, while the
   rest of the network sees the item; the attribution of a channel is the path integral of
   d p(predicted token at the last position) / d output, times (output - baseline output), at the
   last position (integrated gradients on a layer's output, trapezoid rule on ``steps`` points).
   Scores are kept in float16, as LoKI stores them.
2. :func:`select_loki_rows` — LoKI's layer-balanced rule: the quota is split equally over the
   layers; per item and layer the *signed* scores are min-max normalised and the ``k`` lowest get a
   vote; per layer the ``k`` rows with the most votes are chosen. The lowest signed scores are mostly
   strongly negative rows, not rows near zero (ranking by ``|score|`` picks a different set: the
   ``attribution`` template method does that, and is not LoKI).

:func:`loki_template` runs both and returns a template with one component, id 0: the rows LoKI
trains, the same id an imported LoKI position file gets.

Why not Captum: it would be one more dependency for a single formula, and a layer's forward before
the patched one runs once per item here instead of once per layer and step.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from fnapi.errors import DataError, TemplateError
from fnapi.events import EventSink, stage
from fnapi.models.registry import get_adapter
from fnapi.networks.attribution import frozen_eval
from fnapi.networks.template import Component, Template, model_identity

#: LoKI's integration steps and rule (``riemann_trapezoid``).
DEFAULT_STEPS = 7
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
OBJECTIVE = "probability of the predicted token at the last position"


def kva_prompt(item: Any) -> list[dict[str, str]]:
    """LoKI's MMLU conversation for one multiple-choice item (its ``category`` is the subject)."""
    subject = str(getattr(item, "category", "") or "general knowledge").replace("_", " ").title()
    choices = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices))
    return [{"role": "user", "content": (
        f"There is a single choice question about {subject}. Answer the question by replying A, B, C or D.\n"
        f"Question: {item.question}\nChoices:\n{choices}\nAnswer: \n")}]


def kva_prompt_ids(tokenizer: Any, item: Any) -> list[int]:
    """The token ids LoKI attributes an item from: its conversation in the chat template, ending
    where the assistant's answer starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError("method loki asks items in the model's chat template, and this tokenizer has none")
    ids = tokenizer.apply_chat_template(kva_prompt(item), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def kva_scores(model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, steps: int = DEFAULT_STEPS,
               layers: Sequence[int] | None = None, sink: EventSink | None = None,
               cancel: threading.Event | None = None) -> np.ndarray:
    """LoKI's attribution of every down-projection row (``mlp.out`` channel) per item and layer:
    a float16 array ``[items, len(layers), hidden]`` (see the module docstring)."""
    if steps < 2:
        raise TemplateError(f"attribution steps must be at least 2 (got {steps}): the trapezoid rule needs both ends")
    if not prompts:
        raise DataError("method loki needs multiple-choice items to attribute")
    adapter = get_adapter(model)
    layers = list(range(adapter.num_layers(model))) if layers is None else sorted(set(layers))
    device = next(model.parameters()).device
    alphas = torch.linspace(0.0, 1.0, steps, device=device)
    weights = torch.full((steps,), 1.0 / (steps - 1), device=device)
    weights[0] = weights[-1] = 0.5 / (steps - 1)
    out = np.zeros((len(prompts), len(layers), adapter.hidden_size(model)), dtype=np.float16)
    with stage(sink, "attribution", total=len(prompts) * len(layers), unit="layer", cancel=cancel,
               description=f"LoKI's KVA: {len(prompts)} items, {len(layers)} layers, {steps} steps") as progress, \
            frozen_eval(model):
        for index, ids in enumerate(prompts):
            input_ids = torch.tensor([list(ids)], device=device)
            with torch.no_grad():
                actual, logits = _outputs(model, adapter, layers, input_ids)
                baseline, _ = _outputs(model, adapter, layers, torch.zeros_like(input_ids))
            predicted = int(logits[0, -1].argmax())
            for slot, layer in enumerate(layers):
                delta = actual[layer] - baseline[layer]
                path = (baseline[layer] + alphas.view(steps, 1, 1) * delta).detach().requires_grad_(True)
                with _replaced(adapter.down_proj(model, layer), path):
                    logits = model(input_ids=input_ids.expand(steps, -1)).logits
                probability = torch.softmax(logits[:, -1].float(), dim=-1)[:, predicted]
                (grad,) = torch.autograd.grad(probability.sum(), path)
                integral = (grad[:, -1].float() * weights.view(steps, 1)).sum(0)
                out[index, slot] = (integral * delta[0, -1].float()).cpu().numpy().astype(np.float16)
                progress.advance()
        progress.summary.update(items=len(prompts), layers=len(layers), steps=steps)
    return out


def select_loki_rows(scores: np.ndarray, quota_percent: float, layers: Sequence[int]) -> dict[int, list[int]]:
    """LoKI's layer-balanced rule on ``scores`` ``[items, len(layers), rows]`` (see the module
    docstring): per layer, the rows LoKI trains, sorted."""
    if not 0 < quota_percent <= 100:
        raise TemplateError(f"quota must be a percentage in (0, 100] (got {quota_percent})")
    items, count, rows = scores.shape
    per_layer = loki_rows_per_layer(quota_percent, count, rows)
    votes = np.zeros((count, rows), dtype=int)
    for item in range(items):
        for slot in range(count):
            values = scores[item, slot]
            low, high = np.min(values), np.max(values)
            normalised = np.zeros_like(values) if high == low else (values - low) / (high - low)
            votes[slot, np.argsort(normalised)[:per_layer]] += 1
    return {layer: sorted(int(i) for i in np.argsort(votes[slot])[::-1][:per_layer])
            for slot, layer in enumerate(layers)}


def loki_rows_per_layer(quota_percent: float, layers: int, rows: int) -> int:
    """LoKI's quota split: ``quota`` % of all layers' rows, an equal share per layer, rounded down."""
    return int((1.0 / layers) * (layers * rows * quota_percent / 100))


def loki_template(loaded: Any, items: Sequence[Any], *, quota_percent: float = 20.0, steps: int = DEFAULT_STEPS,
                  layers: Sequence[int] | None = None, sources: list[str] | None = None,
                  sink: EventSink | None = None, cancel: threading.Event | None = None) -> Template:
    """A ``loki`` template: one component (id 0) holding the rows LoKI would train at ``quota_percent``,
    attributed over multiple-choice ``items`` (:class:`fnapi.data.builtin.ProbeItem`)."""
    model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
    adapter = get_adapter(model)
    layers = list(range(adapter.num_layers(model))) if layers is None else sorted(set(layers))
    if not 0 < quota_percent <= 100:
        raise TemplateError(f"quota must be a percentage in (0, 100] (got {quota_percent})")
    prompts = [kva_prompt_ids(tokenizer, item) for item in items]
    scores = kva_scores(model, prompts, steps=steps, layers=layers, sink=sink, cancel=cancel)
    rows = select_loki_rows(scores, quota_percent, layers)
    hidden = scores.shape[-1]
    picked = np.concatenate([np.abs(scores[:, slot, rows[layer]].astype(np.float32)).mean(0)
                             for slot, layer in enumerate(layers)])
    component = Component(0, rows, None, {"selection": "loki", "mean_abs_attribution": float(picked.mean())})
    import hashlib
    import json

    return Template(
        site="mlp.out", width=hidden, num_layers=adapter.num_layers(model), layers=list(layers),
        components=[component], model=model_identity(info),
        method={"name": "loki", "steps": steps, "quota": quota_percent,
                "per_layer": loki_rows_per_layer(quota_percent, len(layers), hidden),
                "integration": "riemann_trapezoid", "objective": OBJECTIVE, "baseline": "token id 0",
                "selection": "layer-balanced: lowest min-max-normalised signed attribution, most votes"},
        data={"sources": list(sources or []), "rows": len(items), "tokens": sum(len(p) for p in prompts),
              "fingerprint": hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:12]},
    )


# ---- hooks -----------------------------------------------------------------------------------------

def _outputs(model, adapter, layers: Sequence[int], input_ids: torch.Tensor) -> tuple[dict[int, torch.Tensor], Any]:
    """Every chosen layer's down-projection output on ``input_ids`` (``[1, tokens, hidden]``) and the logits."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    try:
        for layer in layers:
            def keep(module, inputs, output, layer=layer):
                captured[layer] = output.reshape(input_ids.shape[0], -1, output.shape[-1]).detach()
            handles.append(adapter.down_proj(model, layer).register_forward_hook(keep))
        logits = model(input_ids=input_ids).logits
    finally:
        for handle in handles:
            handle.remove()
    return captured, logits


@contextlib.contextmanager
def _replaced(module: torch.nn.Module, value: torch.Tensor) -> Iterator[None]:
    """``module``'s output is ``value`` (same batch and shape) while inside."""
    handle = module.register_forward_hook(lambda m, inputs, output: value.to(output.dtype).reshape(output.shape))
    try:
        yield
    finally:
        handle.remove()
