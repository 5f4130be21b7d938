"""How long a recipe's stages will take on this machine, from rates timed on this machine.

No speed is assumed from another computer. :func:`measure_rates` times, on the loaded model:

* a forward pass and a forward + backward pass on a batch shaped like the training batches
  (seconds per token; LoRA's backward is timed as the gradient to the inputs, which is what a
  low-rank adapter's backward costs, a full fine-tune's with every weight's gradient too);
* the real scoring functions on a few items of each kind of the evaluation plan (seconds per
  task conversation, probe item and text paragraph);
* one ICA fit on a sample of synthetic heavy-tailed activations as wide as the template's
  neurons (seconds per captured token and run).

:func:`time_stages` turns those rates and the recipe's sizes (:class:`Sizes`, counted from the
data as the run will tokenise it) into a :class:`TimeEstimate`, stage by stage. Work scales
linearly with tokens and items at these sizes, which is what the estimate assumes; the benchmark
``benchmarks/time_estimate.py`` compares it with a real run.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fnapi.events import check_cancelled

if TYPE_CHECKING:
    from fnapi.events import EventSink
    from fnapi.models.loading import LoadedModel
    from fnapi.recipe import Recipe

#: Items of each evaluation kind timed to find its rate: two batches of generation and of text, and
#: two of probes (scoring sorts a whole set's items by length, so one batch of mixed lengths pads
#: more than the real run does and overstates the rate by up to 2x; two batches come within 1.3x).
SCORING_SAMPLE = {"task": 16, "probe": 32, "text": 16, "generative": 32}
#: Captured tokens an ICA timing fit uses at most; the fit is linear in rows, so it is scaled up.
ICA_SAMPLE_ROWS = 1024
#: Rows of the timed training batch at most (time is linear in rows at these sizes).
TIMED_ROWS = 4


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work on this machine, for one model (0: not measured, not needed)."""

    forward_token: float
    train_token: float
    task_item: float = 0.0
    probe_item: float = 0.0
    text_item: float = 0.0
    #: a probe question answered open-ended (a general prompt is counted the same)
    generative_item: float = 0.0
    ica_row: float = 0.0
    load_seconds: float = 0.0


@dataclass(frozen=True)
class Sizes:
    """The amounts of work a recipe asks for, counted from its data."""

    steps: int
    batch_tokens: float  # tokens of one optimizer step (rows x accumulation x expected padded length)
    validation_tokens: int = 0
    task_items: int = 0
    probe_items: int = 0
    text_items: int = 0
    generative_items: int = 0
    task_check_items: int = 0  # conversations scored by the task-target checks during training
    capture_tokens: int = 0  # tokens the template's capture reads (0: no template is built)
    ica_runs: int = 0
    attribution_tokens: int = 0  # tokens of the attribution template's examples x integrated-gradient steps


@dataclass(frozen=True)
class StageTime:
    stage: str
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class TimeEstimate:
    """Predicted seconds per stage, in the order they run."""

    stages: tuple[StageTime, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def stage(self, name: str) -> float:
        return sum(s.seconds for s in self.stages if s.stage == name)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1),
                "stages": [{"stage": s.stage, "seconds": round(s.seconds, 1), "detail": s.detail} for s in self.stages],
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeEstimate:
        return cls(stages=tuple(StageTime(str(s["stage"]), float(s["seconds"]), str(s.get("detail", "")))
                                for s in data.get("stages", [])),
                   notes=tuple(str(n) for n in data.get("notes", [])))

    def describe(self) -> str:
        """``about 6 min 10 s: train 4 min, baseline 50 s, ...`` (the biggest stages first)."""
        parts = ", ".join(f"{s.stage} {format_duration(s.seconds)}"
                          for s in sorted(self.stages, key=lambda s: -s.seconds) if s.seconds >= 0.5)
        return f"about {format_duration(self.seconds)}" + (f" ({parts})" if parts else "")


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``1 h 02 min``: whole seconds, never rounded into a different unit."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# ---- arithmetic ----------------------------------------------------------------------------------

def time_stages(rates: Rates, sizes: Sizes) -> TimeEstimate:
    """Seconds per stage for ``sizes`` of work at ``rates``; stages with no work are left out."""
    stages: list[StageTime] = []
    if rates.load_seconds:
        stages.append(StageTime("model", rates.load_seconds, "loading the model (as timed in this session)"))
    if sizes.capture_tokens:
        stages.append(StageTime("capture", sizes.capture_tokens * rates.forward_token,
                                f"{sizes.capture_tokens:,} tokens through the model"))
        stages.append(StageTime("ica", sizes.capture_tokens * rates.ica_row,
                                f"{sizes.ica_runs} ICA run(s) over {sizes.capture_tokens:,} tokens"))
    if sizes.attribution_tokens:
        stages.append(StageTime("attribution", sizes.attribution_tokens * rates.train_token,
                                f"{sizes.attribution_tokens:,} tokens of integrated gradients"))
    scoring = (sizes.task_items * rates.task_item + sizes.probe_items * rates.probe_item
               + sizes.text_items * rates.text_item + sizes.generative_items * rates.generative_item)
    items = sizes.task_items + sizes.probe_items + sizes.text_items + sizes.generative_items
    if items:
        stages.append(StageTime("baseline", scoring, f"{items} items scored on the base model"))
    train = sizes.steps * sizes.batch_tokens * rates.train_token + sizes.task_check_items * rates.task_item
    stages.append(StageTime("train", train, f"{sizes.steps} steps of about {sizes.batch_tokens:,.0f} tokens"))
    if sizes.validation_tokens:
        stages.append(StageTime("validate", sizes.validation_tokens * rates.forward_token,
                                f"{sizes.validation_tokens:,} validation tokens"))
    if items:
        stages.append(StageTime("evaluate", scoring, f"{items} items scored after training"))
    return TimeEstimate(tuple(stages))


def expected_padded_length(lengths: list[int], rows: int, *, draws: int = 200, seed: int = 0) -> float:
    """Mean length of a batch of ``rows`` random examples padded to its longest (the collator's rule)."""
    if not lengths:
        return 0.0
    if rows >= len(lengths):
        return float(max(lengths))
    rng = random.Random(seed)
    return sum(max(rng.sample(lengths, rows)) for _ in range(draws)) / draws


def training_steps(section: Any, examples: int) -> int:
    """Optimizer steps a train section takes over ``examples`` rows (``steps``, or epochs of batches)."""
    if section.steps:
        return int(section.steps)
    per_step = section.batch_size * section.gradient_accumulation
    return max(1, math.ceil(section.epochs * math.ceil(examples / per_step)))


# ---- measuring -----------------------------------------------------------------------------------

def _best_of(fn, repeats: int = 2) -> float:
    fn()  # warm up: the first call allocates
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def time_model_passes(model: Any, *, rows: int, length: int, full: bool = False) -> tuple[float, float]:
    """(forward, forward + backward) seconds per token on a ``rows x length`` batch of random ids.

    The backward pass computes the gradient with respect to the input embeddings (what LoRA's
    backward costs); with ``full`` every weight's gradient too (a full fine-tune). Gradients made
    here are dropped and the model's trainable flags are left as they were.
    """
    import torch

    from fnapi.models.runtime import eval_mode

    length = max(int(length), 2)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0)).to(device)

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    flags = {name: p.requires_grad for name, p in model.named_parameters()}

    def train() -> None:
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        loss = model(inputs_embeds=embeds).logits.float().logsumexp(-1).mean()
        loss.backward()

    with eval_mode(model):
        forward_seconds = _best_of(forward)
        try:
            for p in model.parameters():
                p.requires_grad_(full and p.is_floating_point())
            train_seconds = _best_of(train, repeats=1)
        finally:
            for name, p in model.named_parameters():
                p.grad = None
                p.requires_grad_(flags[name])
    tokens = rows * length
    return forward_seconds / tokens, train_seconds / tokens


def time_scoring(model: Any, tokenizer: Any, plan: Any, sample: dict[str, int] | None = None,
                 cancel: threading.Event | None = None) -> dict[str, float]:
    """Seconds per item of each kind in ``plan`` (``task``, ``probe``, ``text``), by scoring
    ``sample[kind]`` items (default :data:`SCORING_SAMPLE`), spread over its first source of that
    kind, with :func:`fnapi.measures.evaluate`, after one untimed item (the first call of a kind
    allocates and fills caches)."""
    from fnapi.measures import evaluate

    empty = replace(plan, tasks=(), probes=(), texts=(), generative=(), chat=None)

    def spread(items: tuple, start: int, count: int) -> tuple:
        # Evenly spaced items, not the first ones: sets are generated category by category, and
        # one category's lengths (which set the padded batch's cost) can be far from the mean.
        rest = items[start:]
        if len(rest) <= count:
            return rest
        return tuple(rest[round(i * len(rest) / count)] for i in range(count))

    def part(kind: str, start: int, stop: int) -> Any:
        count = stop - start
        if kind == "task":
            return [replace(empty, tasks=((s, spread(c, start, count)),)) for s, c in plan.tasks[:1] if c[start:stop]]
        if kind == "probe":
            return [replace(empty, probes=((s, spread(i, start, count)),)) for s, i in plan.probes[:1] if i[start:stop]]
        if kind == "generative":
            return [replace(empty, generative=((s, spread(i, start, count)),)) for s, i in plan.generative[:1]
                    if i[start:stop]]
        return [replace(empty, texts=((s, spread(p, start, count)),)) for s, p in plan.texts[:1] if p[start:stop]]

    rates: dict[str, float] = {}
    for kind in ("task", "probe", "text", "generative"):
        count = (sample or SCORING_SAMPLE).get(kind, 0)
        if not count:
            continue
        warm, timed = part(kind, 0, 1), part(kind, 1, 1 + count) or part(kind, 0, count)
        for sub in warm:
            check_cancelled(cancel, "the time estimate")
            evaluate(model, tokenizer, sub)
        for sub in timed:
            check_cancelled(cancel, "the time estimate")
            started = time.perf_counter()
            evaluate(model, tokenizer, sub)
            rates[kind] = (time.perf_counter() - started) / sub.items
    return rates


def time_ica(section: Any, neurons: int, layer_width: int, *, rows: int = ICA_SAMPLE_ROWS, seed: int = 0) -> float:
    """Seconds per captured token of the template's whole ICA (every run of the consensus) over
    ``neurons`` columns, timed on ``rows`` tokens of a synthetic mixture of heavy-tailed sources
    (activations are heavy-tailed, so FastICA converges on them as it does on real ones)."""
    import torch

    from fnapi.networks.stability import ConsensusICA

    rows = max(int(rows), 2 * section.components + 2)
    generator = torch.Generator().manual_seed(seed)
    sources = torch.distributions.Laplace(0.0, 1.0).sample((rows, max(section.components, 2)))
    mixing = torch.randn(sources.shape[1], neurons, generator=generator)
    X = sources @ mixing + 0.1 * torch.randn(rows, neurons, generator=generator)
    started = time.perf_counter()
    ConsensusICA(n_components=section.components, runs=section.runs, mode=section.mode, layer_width=layer_width,
                 random_state=seed).fit(X)
    return (time.perf_counter() - started) / rows


# ---- a whole recipe ------------------------------------------------------------------------------

def recipe_sizes(recipe: Any, loaded: Any, *, plan: Any = None, include_template: bool = True) -> tuple[Sizes, Any, dict]:
    """The work ``recipe`` asks for, counted from its data as the run tokenises it; returns the
    sizes, the evaluation plan and the numbers the rates are measured at."""
    from fnapi.data import load_data, tokenize
    from fnapi.runner import _task_conversations, eval_plan

    tokenizer = loaded.tokenizer
    data = load_data(recipe.data, seed=recipe.seed)
    train = recipe.train
    tokens = tokenize(data.train, tokenizer, chat_template=recipe.data.chat_template,
                      max_length=recipe.data.max_length)
    lengths = [len(ids) for ids in tokens.input_ids]
    padded = expected_padded_length(lengths, train.batch_size, seed=recipe.seed)
    validation_tokens = 0
    if data.validation:
        held = data.validation[: train.validation_samples] if train.validation_samples else data.validation
        valid = tokenize(held, tokenizer, chat_template=recipe.data.chat_template, max_length=recipe.data.max_length)
        validation_tokens = sum(len(ids) for ids in valid.input_ids)
    steps = training_steps(train, len(lengths))
    if plan is None and recipe.eval.enabled:
        plan = eval_plan(recipe, tokenizer, _task_conversations(recipe, data))
    task_items = sum(len(c) for _, c in plan.tasks) if plan is not None else 0
    probe_items = sum(len(i) for _, i in plan.probes) if plan is not None else 0
    text_items = sum(len(p) for _, p in plan.texts) if plan is not None else 0
    generative_items = (sum(len(i) for _, i in plan.generative) + (len(plan.chat[1]) if plan.chat else 0)
                        if plan is not None else 0)
    checks = (steps // train.task_check_every) * min(train.task_check_samples, len(data.validation)) \
        if train.task_target is not None else 0
    capture_tokens, runs, neurons, width, attribution = 0, 0, 0, 0, 0
    section = recipe.template
    if include_template and section is not None and not section.path:
        data_specs = list(section.data) or [recipe.data.path]
        if section.method == "ica":
            capture_tokens, runs, neurons, width = template_work(section, data_specs, loaded)
        else:
            attribution = attribution_work(section, data_specs, loaded)
    sizes = Sizes(steps=steps, batch_tokens=train.batch_size * train.gradient_accumulation * padded,
                  validation_tokens=validation_tokens, task_items=task_items, probe_items=probe_items,
                  text_items=text_items, generative_items=generative_items, task_check_items=checks,
                  capture_tokens=capture_tokens, ica_runs=runs,
                  attribution_tokens=attribution)
    shape = {"rows": min(train.batch_size, TIMED_ROWS), "length": max(int(round(padded)), 2), "neurons": neurons, "width": width}
    return sizes, plan, shape


def template_work(section: Any, data_specs: list[str], loaded: Any) -> tuple[int, int, int, int]:
    """(captured tokens, ICA runs, neurons, neurons per layer) of building the template ``section``
    describes."""
    from fnapi.estimate import capture_counts
    from fnapi.networks.capture import site_width
    from fnapi.recipe import parse_layers

    counts = capture_counts(data_specs, section, loaded.tokenizer)
    layers = len(parse_layers(section.layers, loaded.info.num_layers))
    width = site_width(loaded.adapter, loaded.model, section.site)
    return counts["capture_rows"], section.runs, layers * width, width


def attribution_work(section: Any, data_specs: list[str], loaded: Any) -> int:
    """Tokens an attribution template pushes through forward + backward: every example's tokens
    once per integrated-gradient step (the steps are one batch)."""
    from fnapi.data.loading import read_conversations
    from fnapi.data.templating import tokenize
    from fnapi.networks.attribution import DEFAULT_STEPS

    if section.method == "loki":  # every layer on its own: a forward and backward per layer and item
        from fnapi.data.probes import load_probes
        from fnapi.networks import loki
        from fnapi.recipe import parse_layers

        items = [item for spec in data_specs for item in load_probes(spec, limit=section.samples).items]
        layers = len(parse_layers(section.layers, loaded.info.num_layers))
        return sum(len(loki.kva_prompt_ids(loaded.tokenizer, item)) for item in items) * loki.DEFAULT_STEPS * layers
    tokens = 0
    for data_spec in data_specs:
        conversations, _ = read_conversations(data_spec, max_samples=section.samples)
        tokenized = tokenize(conversations, loaded.tokenizer, max_length=section.max_length, cache=False)
        tokens += sum(len(ids) for ids in tokenized.input_ids)
    return tokens * DEFAULT_STEPS


def estimate_time(recipe: Recipe, loaded: LoadedModel, *, cancel: threading.Event | None = None,
                  include_template: bool = True, load_seconds: float = 0.0,
                  cache: dict | None = None, sink: EventSink | None = None) -> TimeEstimate:
    """Time every stage of ``recipe`` on this machine, with rates measured on ``loaded`` (the model
    the recipe names, already loaded). ``cache`` keeps rates between calls (keyed by what they
    depend on), so a changed setting is re-estimated in a moment. ``sink`` gets a ``timing``
    stage with one step per rate measured."""
    from fnapi.events import stage

    cache = cache if cache is not None else {}
    sizes, plan, shape = recipe_sizes(recipe, loaded, include_template=include_template)
    full = recipe.train.method == "full"
    with stage(sink, "timing", total=3, unit="rate", cancel=cancel,
               description="throughput of this machine on the recipe's sizes") as progress:
        key = ("passes", loaded.info.name, shape["rows"], shape["length"], full)
        if key not in cache:
            check_cancelled(cancel, "the time estimate")
            cache[key] = time_model_passes(loaded.model, rows=shape["rows"], length=shape["length"], full=full)
        forward, train = cache[key]
        progress.advance(message="forward and backward passes")
        scoring: dict[str, float] = {}
        if plan is not None:
            key = ("scoring", loaded.info.name, plan.max_new_tokens, tuple(s for s, _ in plan.probes),
                   tuple(s for s, _ in plan.texts), tuple(s for s, _ in plan.tasks))
            if key not in cache:
                cache[key] = time_scoring(loaded.model, loaded.tokenizer, plan, cancel=cancel)
            scoring = cache[key]
        progress.advance(message="scoring")
        ica = 0.0
        if sizes.capture_tokens:
            section = recipe.template
            key = ("ica", shape["neurons"], section.components, section.runs, section.mode)
            if key not in cache:
                check_cancelled(cancel, "the time estimate")
                cache[key] = time_ica(section, shape["neurons"], shape["width"],
                                      rows=min(ICA_SAMPLE_ROWS, sizes.capture_tokens))
            ica = cache[key]
        progress.advance(message="ICA")
    rates = Rates(forward_token=forward, train_token=train, task_item=scoring.get("task", 0.0),
                  probe_item=scoring.get("probe", 0.0), text_item=scoring.get("text", 0.0),
                  generative_item=scoring.get("generative", 0.0), ica_row=ica,
                  load_seconds=load_seconds)
    return time_stages(rates, sizes)


def estimate_template_time(section: Any, data_specs: list[str], loaded: Any, *, cache: dict | None = None,
                           cancel: threading.Event | None = None) -> TimeEstimate:
    """Time the template build ``section`` describes (capture and ICA, or attribution) on ``loaded``."""
    cache = cache if cache is not None else {}
    if section.method != "ica":
        tokens = attribution_work(section, data_specs, loaded)
        length = min(section.max_length, 128)
        key = ("passes", loaded.info.name, TIMED_ROWS, length, False)
        if key not in cache:
            check_cancelled(cancel, "the time estimate")
            cache[key] = time_model_passes(loaded.model, rows=TIMED_ROWS, length=length)
        rates = Rates(forward_token=cache[key][0], train_token=cache[key][1])
        estimate = time_stages(rates, Sizes(steps=0, batch_tokens=0, attribution_tokens=tokens))
        return TimeEstimate(tuple(s for s in estimate.stages if s.stage == "attribution"))
    tokens, runs, neurons, width = template_work(section, data_specs, loaded)
    key = ("passes", loaded.info.name, TIMED_ROWS, min(section.max_length, 128), False)
    if key not in cache:
        check_cancelled(cancel, "the time estimate")
        cache[key] = time_model_passes(loaded.model, rows=TIMED_ROWS, length=min(section.max_length, 128))
    forward = cache[key][0]
    key = ("ica", neurons, section.components, section.runs, section.mode)
    if key not in cache:
        check_cancelled(cancel, "the time estimate")
        cache[key] = time_ica(section, neurons, width, rows=min(ICA_SAMPLE_ROWS, tokens))
    rates = Rates(forward_token=forward, train_token=0.0, ica_row=cache[key])
    estimate = time_stages(rates, Sizes(steps=0, batch_tokens=0, capture_tokens=tokens, ica_runs=runs))
    return TimeEstimate(tuple(s for s in estimate.stages if s.stage in ("capture", "ica")))
