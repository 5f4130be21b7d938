"""Lesion study: does switching a functional network off hurt more than switching off random neurons?

This is the check the functional-network paper used to show that networks are real: lesioning a
network of under 2% of the neurons hurts the model far more than lesioning as many random neurons.
:func:`lesion_study` measures, on the built-in general-knowledge probes:

- the base model;
- each component lesioned (``ablate="selected"`` at the template's site, see :mod:`fnapi.masking`);
- for each component, ``draws`` lesions of random neurons with the *same count in every layer*
  (drawn uniformly from that layer's channels, seeded by ``seed``, the component id and the draw,
  so a draw does not depend on which other components are studied).

Two measures, both from one likelihood pass over every choice (:func:`fnapi.evaluation.choice_logprobs`):

- ``accuracy``: share of items whose right choice is the most likely (what ``score_probes`` reports);
- ``logprob``: mean summed log-probability of the right answer's tokens. It moves with every small
  change of the model, so it separates a component from random neurons even when accuracy on a few
  hundred items hardly moves.

A *drop* is base minus lesioned (positive = worse). A component's *ratio* is its drop divided by the
mean drop of its random draws; it is ``None`` when the random lesions did not hurt on average (a
ratio against zero or a gain says nothing). The summary ratio divides the mean drop over the studied
components by the mean random drop over them.

**Defaults and their cost.** A study runs ``1 + components x (1 + draws)`` evaluations, each one
:func:`~fnapi.evaluation.choice_logprobs` pass over the probe items. The defaults,
:data:`DEFAULT_PROBE_SAMPLES` = 200 items and :data:`DEFAULT_DRAWS` = 3 draws, keep a study of a
10-component template at 41 evaluations of about 8 s each for the embedded SmolLM2-135M on two
CPU cores: about 5.5 minutes (measured), under 15 even when other work slows the cores 2.5-fold
(``benchmarks/lesion_speed.py`` measures it). The 200 items are a fixed subset, the first 200 of
:func:`~fnapi.data.builtin.probe_items` (dealt round-robin across categories, so they mix every
category): the same items for every lesion and every study, however large the probe set grows.
Three draws are the fewest that still give each component a spread (``random_std``); the summary
pools the draws of every component (30 for ten components). Random drops are heavy-tailed (in a
default study of the embedded model 4 of the 30 draws hurt 10-100 times more than the rest), so
with few draws one component's ratio is rough and the summary is the steadier number.
More draws (``draws=``, ``--random-draws``) tighten each component's random mean; each extra draw
costs one evaluation per component.

>>> study = lesion_study(loaded, Template.load("t.json"), draws=5)  # doctest: +SKIP
>>> study.summary["logprob"]["ratio"]                                # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fnapi.errors import TemplateError
from fnapi.events import EventSink, stage
from fnapi.masking import NeuronMask, mask
from fnapi.sites import site

MEASURES = ("accuracy", "logprob")
#: Random lesions per component by default: the fewest that still give each component a spread.
DEFAULT_DRAWS = 3
#: Probe items scored by default: the first 200 of ``probe_items()``, a fixed mix of every category.
DEFAULT_PROBE_SAMPLES = 200


@dataclass
class Measure:
    """One measure of one lesion: the lesioned score, its drop, the random draws' drops, the ratio."""

    score: float
    drop: float
    random_drops: list[float] = field(default_factory=list)

    @property
    def random_mean(self) -> float | None:
        return statistics.fmean(self.random_drops) if self.random_drops else None

    @property
    def random_std(self) -> float | None:
        return statistics.stdev(self.random_drops) if len(self.random_drops) > 1 else None

    @property
    def ratio(self) -> float | None:
        """Component drop / mean random drop; None when random lesions did not hurt on average."""
        return _ratio(self.drop, self.random_mean)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "drop": self.drop, "random_drops": list(self.random_drops),
                "random_mean_drop": self.random_mean, "random_std_drop": self.random_std, "ratio": self.ratio}


@dataclass
class ComponentLesion:
    """What lesioning one component did, next to random lesions of the same size per layer."""

    id: int
    size: int
    percent: float
    per_layer: dict[int, int]
    accuracy: Measure
    logprob: Measure

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "percent": self.percent,
                "per_layer": {str(k): v for k, v in self.per_layer.items()},
                "accuracy": self.accuracy.to_dict(), "logprob": self.logprob.to_dict()}


@dataclass
class LesionStudy:
    """The base scores, one :class:`ComponentLesion` per studied component, and the summary."""

    model: dict[str, Any]
    template: dict[str, Any]
    probe_samples: int
    draws: int
    seed: int
    base: dict[str, float]
    components: list[ComponentLesion]
    warnings: list[str] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, dict[str, float | None]]:
        """Per measure: mean component drop, mean random drop and their ratio."""
        result = {}
        for name in MEASURES:
            measures = [getattr(c, name) for c in self.components]
            drop = statistics.fmean(m.drop for m in measures) if measures else None
            randoms = [m.random_mean for m in measures if m.random_mean is not None]
            random = statistics.fmean(randoms) if randoms else None
            result[name] = {"mean_drop": drop, "mean_random_drop": random,
                            "ratio": None if drop is None else _ratio(drop, random)}
        return result

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: settings, base scores, per-component results and the summary."""
        return {"model": self.model, "template": self.template, "probe_samples": self.probe_samples,
                "draws": self.draws, "seed": self.seed, "measures": {
                    "accuracy": "share of probe items whose right choice is the most likely",
                    "logprob": "mean summed log-probability of the right answer (answer tokens + end of turn)"},
                "base": dict(self.base), "components": [c.to_dict() for c in self.components],
                "summary": self.summary, "warnings": list(self.warnings)}


def _ratio(drop: float, random_mean: float | None) -> float | None:
    if random_mean is None or random_mean <= 0:
        return None
    return drop / random_mean


def random_neurons(per_layer: dict[int, int], width: int, *, seed: int, component: int, draw: int) -> dict[int, list[int]]:
    """``per_layer[layer]`` channels of each layer drawn uniformly from ``range(width)``.

    Seeded by ``(seed, component, draw)``: the same arguments always give the same neurons.
    """
    rng = np.random.default_rng([seed, component, draw])
    return {layer: sorted(int(c) for c in rng.choice(width, size=count, replace=False))
            for layer, count in sorted(per_layer.items())}


def probe_scores(model: Any, tokenizer: Any, items: Sequence[Any], *, batch_size: int = 16) -> dict[str, float]:
    """``accuracy`` and mean right-answer ``logprob`` of ``model`` on probe ``items``, in one pass."""
    from fnapi.evaluation import choice_logprobs

    scores = choice_logprobs(model, tokenizer, items, batch_size=batch_size)
    right = [max(range(len(s)), key=s.__getitem__) == item.answer for item, s in zip(items, scores)]
    return {"accuracy": sum(right) / len(items),
            "logprob": statistics.fmean(s[item.answer] for item, s in zip(items, scores))}


def parse_component_ids(text: str) -> list[int]:
    """``"0,2, 5"`` -> ``[0, 2, 5]``; anything else is a :class:`TemplateError`."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TemplateError(f"--components {text!r}: give component ids separated by commas, e.g. 0,1,2") from None
    if not ids:
        raise TemplateError(f"--components {text!r} names no component")
    return ids


def lesion_study(loaded: Any, template: Any, *, components: Sequence[int] | None = None,
                 draws: int = DEFAULT_DRAWS, probe_samples: int = DEFAULT_PROBE_SAMPLES, seed: int = 0,
                 sink: EventSink | None = None, cancel: threading.Event | None = None) -> LesionStudy:
    """Probe scores of ``loaded`` (a ``LoadedModel``) with each of ``template``'s components lesioned,
    against ``draws`` random lesions of the same size per layer (see the module docstring).

    ``components`` defaults to every component of the template; ``draws`` and ``probe_samples``
    default to :data:`DEFAULT_DRAWS` and :data:`DEFAULT_PROBE_SAMPLES` (see the module docstring for
    why and what they cost). Raises :class:`TemplateError` for component ids the template lacks and
    for a template made for another model shape.
    """
    from fnapi.data.builtin import probe_items

    if draws < 1:
        raise TemplateError(f"random draws must be at least 1 (got {draws})")
    if probe_samples < 1:
        raise TemplateError(f"probe samples must be at least 1 (got {probe_samples})")
    chosen = [template.component(int(cid)) for cid in (template.component_ids if components is None else components)]
    if not chosen:
        raise TemplateError("the template has no components to lesion")
    warnings = list(template.check_compatible(loaded.info) or [])
    width = site(template.site).width(loaded.info)
    model, tokenizer = loaded.model, loaded.tokenizer
    items = probe_items(probe_samples)
    percent = {row["id"]: row["percent"] for row in template.summary_rows()}

    def lesioned(neurons: dict[int, list[int]]) -> dict[str, float]:
        neuron_mask = NeuronMask(template.site, neurons, ablate="selected", width=width)
        with mask(model, neuron_mask):
            return probe_scores(model, tokenizer, items)

    results = []
    with stage(sink, "lesion", total=1 + len(chosen) * (1 + draws), unit="eval", cancel=cancel,
               description=f"{len(chosen)} components x (1 + {draws} random draws), {len(items)} probes") as progress:
        for warning in warnings:
            progress.log(warning, level="warning")
        base = probe_scores(model, tokenizer, items)
        progress.advance(message="base model")
        for component in chosen:
            hit = lesioned(component.neurons)
            progress.advance(message=f"component {component.id}")
            random_hits = []
            for draw in range(draws):
                neurons = random_neurons(component.per_layer, width, seed=seed, component=component.id, draw=draw)
                random_hits.append(lesioned(neurons))
                progress.advance(message=f"component {component.id}, random draw {draw + 1}")
            measures = {name: Measure(score=hit[name], drop=base[name] - hit[name],
                                      random_drops=[base[name] - r[name] for r in random_hits]) for name in MEASURES}
            results.append(ComponentLesion(component.id, component.size, percent[component.id], component.per_layer,
                                           **measures))
            progress.metric({f"ratio_{name}": m.ratio for name, m in measures.items() if m.ratio is not None})
    return LesionStudy(model=loaded.info.to_dict(), template=_template_summary(template), probe_samples=len(items),
                       draws=draws, seed=seed, base=base, components=results, warnings=warnings)


def _template_summary(template: Any) -> dict[str, Any]:
    return {"site": template.site, "width": template.width, "layers": len(template.layers),
            "components": len(template.components), "method": template.method.get("name"),
            "model": template.model.get("name"), "created": template.created}
