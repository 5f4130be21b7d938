"""Forgetting measures with 95% intervals: one code path for runs, ``fnapi eval``, ``compare`` and
continual learning.

Every measure keeps its per-item values, so an interval can be put on any mean and a *paired*
interval on any before/after change (the same items scored twice: the item-to-item spread cancels
and the interval is much narrower than the two separate intervals suggest).

- :func:`measure_probes` — multiple-choice probes: accuracy (right choice most likely) and the
  summed log-probability of the right answer, per item.
- :func:`measure_task` — task score per conversation (greedy generation, exact match).
- :func:`measure_text` — held-out general text: mean NLL per token per paragraph, and, given the
  base model's distributions, the KL divergence to them per paragraph.
- :func:`measure_generative` — the probe questions asked open-ended (greedy reply, right when it
  names the right choice and no other, :mod:`fnapi.generative`): what a user sees.
- :func:`measure_chat` — replies to general prompts: whether each looks like the training task's
  answers (the format-leak flag) and, given the base model's replies, the KL from the base to this
  model per token, teacher-forced on the base's own replies (chat drift).
- standard benchmarks through lm-evaluation-harness (:mod:`fnapi.lm_eval_bridge`): each metric as
  lm-eval reports it, with its per-document values where they are numbers.

Intervals over items are percentile bootstraps (:func:`bootstrap`, 2,000 resamples, seeded: the same
values always give the same interval). Intervals over seeds are Student-t intervals
(:func:`seed_interval`): with 3 seeds a bootstrap would only ever see 10 distinct resamples.

>>> Estimate.of([1, 0, 1, 1]).mean
0.75
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from fnapi.errors import DataError
from fnapi.lm_eval_bridge import LmEvalData, LmEvalRequest, LmEvalScores
from fnapi.recipe import Section

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fnapi.data.builtin import ProbeItem
    from fnapi.data.formats import Conversation
    from fnapi.events import EventSink, StageProgress

RESAMPLES = 2000
LEVEL = 0.95
#: Replies generated at once (task answers, open-ended questions, general prompts): on a 2-core CPU 32
#: rows answer 64 probe questions 1.7x faster than 8 (14 s against 24 s on the embedded model).
GENERATION_BATCH = 32
_SEED = 20240917


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval and the number of values behind it."""

    mean: float
    ci95: tuple[float, float]
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        """Mean of ``values`` with a bootstrap interval over them."""
        return bootstrap(values)

    def to_dict(self, digits: int = 6) -> dict[str, Any]:
        return {"mean": round(self.mean, digits), "ci95": [round(self.ci95[0], digits), round(self.ci95[1], digits)],
                "n": self.n}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.ci95[0]:.3f}, {self.ci95[1]:.3f}]"


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng([_SEED, seed, n]).integers(0, n, size=(resamples, n))


def bootstrap(values: Sequence[float], *, weights: Sequence[float] | None = None, resamples: int = RESAMPLES,
              seed: int = 0) -> Estimate:
    """Mean of ``values`` (weighted by ``weights`` if given, for example tokens per paragraph) and
    its percentile-bootstrap 95% interval, resampling the items."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise DataError("no values to estimate a mean from")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != x.shape:
        raise ValueError(f"{x.size} values but {w.size} weights")
    mean = float((x * w).sum() / w.sum())
    if x.size == 1:
        return Estimate(mean, (mean, mean), 1)
    idx = _resample_indices(x.size, resamples, seed)
    means = (x[idx] * w[idx]).sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-300)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Estimate(mean, (float(low), float(high)), int(x.size))


def paired_change(before: Sequence[float], after: Sequence[float], *, weights: Sequence[float] | None = None,
                  resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """``mean(after) - mean(before)`` over the same items, with a paired bootstrap interval."""
    if len(before) != len(after):
        raise ValueError(f"paired change needs the same items before and after ({len(before)} vs {len(after)})")
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    return bootstrap(diff, weights=weights, resamples=resamples, seed=seed)


def seed_interval(values: Sequence[float]) -> Estimate:
    """Mean over seeds with a Student-t 95% interval (a single seed gives a zero-width interval)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        raise DataError("no values to estimate a mean from")
    mean = float(x.mean())
    if x.size == 1:
        return Estimate(mean, (mean, mean), 1)
    half = float(stats.t.ppf((1 + LEVEL) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(mean, (mean - half, mean + half), int(x.size))


# ---- per-item measures -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeMeasure:
    """Per-item probe results: ``correct`` 1.0/0.0 and ``logprob`` of the right answer."""

    source: str
    correct: tuple[float, ...]
    logprob: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> Estimate:
        return bootstrap(self.correct)

    @property
    def mean_logprob(self) -> Estimate:
        return bootstrap(self.logprob)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "correct": list(self.correct), "logprob": [round(v, 5) for v in self.logprob]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeMeasure:
        return cls(str(data["source"]), tuple(float(v) for v in data["correct"]),
                   tuple(float(v) for v in data["logprob"]))

    def summary(self) -> dict[str, Any]:
        acc, lp = self.accuracy, self.mean_logprob
        return {"source": self.source, "n": self.n, "accuracy": acc.mean, "ci95": list(acc.ci95),
                "logprob": lp.mean, "logprob_ci95": list(lp.ci95)}


@dataclass(frozen=True)
class TextMeasure:
    """Per-paragraph held-out text results: mean NLL per token, token counts and (after training)
    the mean KL divergence to the base model per token."""

    source: str
    nll: tuple[float, ...]
    tokens: tuple[int, ...]
    kl: tuple[float, ...] | None = None

    @property
    def mean_nll(self) -> Estimate:
        return bootstrap(self.nll, weights=self.tokens)

    @property
    def mean_kl(self) -> Estimate | None:
        return None if self.kl is None else bootstrap(self.kl, weights=self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "nll": [round(v, 6) for v in self.nll], "tokens": list(self.tokens),
                "kl": None if self.kl is None else [round(v, 6) for v in self.kl]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextMeasure:
        kl = data.get("kl")
        return cls(str(data["source"]), tuple(float(v) for v in data["nll"]), tuple(int(v) for v in data["tokens"]),
                   None if kl is None else tuple(float(v) for v in kl))

    def summary(self) -> dict[str, Any]:
        nll = self.mean_nll
        out = {"source": self.source, "n": len(self.nll), "nll": nll.mean, "ci95": list(nll.ci95)}
        kl = self.mean_kl
        if kl is not None:
            out.update(kl=kl.mean, kl_ci95=list(kl.ci95))
        return out


@dataclass(frozen=True)
class GenerativeMeasure:
    """Per-item open-ended results of one probe set: ``correct`` 1.0/0.0 and the greedy ``replies``."""

    source: str
    correct: tuple[float, ...]
    replies: tuple[str, ...]

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> Estimate:
        return bootstrap(self.correct)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "correct": list(self.correct), "replies": list(self.replies)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerativeMeasure:
        return cls(str(data["source"]), tuple(float(v) for v in data["correct"]), tuple(data["replies"]))

    def summary(self) -> dict[str, Any]:
        acc = self.accuracy
        return {"source": self.source, "n": self.n, "accuracy": acc.mean, "ci95": list(acc.ci95)}


@dataclass(frozen=True)
class ChatMeasure:
    """Replies to general prompts: this model's greedy ``replies`` and their token ids (the base
    model's become the sequences chat drift is teacher-forced on), ``task_like`` per reply (1.0 when
    it looks like the training task's answers; None without a task to compare with) and, against a
    base model, ``kl`` per prompt (nats per token over the base's reply) with ``tokens``, the length
    of that reply."""

    source: str
    replies: tuple[str, ...]
    reply_ids: tuple[tuple[int, ...], ...]
    task_like: tuple[float, ...] | None = None
    kl: tuple[float, ...] | None = None
    tokens: tuple[int, ...] | None = None

    @property
    def leak_share(self) -> float | None:
        return None if self.task_like is None else sum(self.task_like) / max(len(self.task_like), 1)

    @property
    def mean_kl(self) -> Estimate | None:
        return None if self.kl is None else bootstrap(self.kl, weights=self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "replies": list(self.replies), "reply_ids": [list(r) for r in self.reply_ids],
                "task_like": None if self.task_like is None else list(self.task_like),
                "kl": None if self.kl is None else [round(v, 6) for v in self.kl],
                "tokens": None if self.tokens is None else list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatMeasure:
        def floats(key: str) -> tuple[float, ...] | None:
            return None if data.get(key) is None else tuple(float(v) for v in data[key])

        return cls(str(data["source"]), tuple(data["replies"]), tuple(tuple(int(t) for t in r) for r in data["reply_ids"]),
                   floats("task_like"), floats("kl"),
                   None if data.get("tokens") is None else tuple(int(v) for v in data["tokens"]))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "prompts": len(self.replies)}
        if self.task_like is not None:
            out["task_like_share"] = self.leak_share
        kl = self.mean_kl
        if kl is not None:
            out.update(kl=kl.mean, kl_ci95=list(kl.ci95))
        return out


def measure_probes(model: Any, tokenizer: Any, items: Sequence[ProbeItem], *, source: str = "probes",
                   batch_size: int = 16, chat_template: str = "auto",
                   on_items: Callable[[int], None] | None = None) -> ProbeMeasure:
    """Score every probe item once (see :func:`fnapi.evaluation.choice_logprobs`)."""
    from fnapi.evaluation import choice_logprobs

    if not items:
        raise DataError(f"{source}: no probe items to score")
    scores = choice_logprobs(model, tokenizer, items, batch_size=batch_size, chat_template=chat_template,
                             on_items=on_items)
    correct = tuple(float(max(range(len(s)), key=s.__getitem__) == item.answer) for item, s in zip(items, scores))
    return ProbeMeasure(source, correct, tuple(float(s[item.answer]) for item, s in zip(items, scores)))


def measure_task(model: Any, tokenizer: Any, conversations: Sequence[Conversation],
                 scorer: Callable[[str, str], float] | None = None, *, max_new_tokens: int = 24,
                 batch_size: int = GENERATION_BATCH, chat_template: str = "auto",
                 on_items: Callable[[int], None] | None = None) -> tuple[float, ...]:
    """Per-conversation task score of greedy answers (exact match unless ``scorer`` is given)."""
    from fnapi.evaluation import exact_match, generate_answers

    if not conversations:
        raise DataError("no conversations to score the task on")
    scorer = scorer or exact_match
    answers = generate_answers(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, chat_template=chat_template, on_items=on_items)
    return tuple(float(scorer(a, c.messages[-1]["content"])) for a, c in zip(answers, conversations))


def text_prompts(tokenizer: Any, texts: Sequence[str], max_tokens: int = 64) -> list[list[int]]:
    """Token ids of each paragraph, cut to ``max_tokens`` (paragraphs of fewer than 2 tokens dropped)."""
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens] for text in texts]
    return [p for p in prompts if len(p) >= 2]


def measure_text(model: Any, prompts: Sequence[Sequence[int]], *, source: str = "text",
                 reference: Sequence[torch.Tensor] | None = None) -> tuple[TextMeasure, list[torch.Tensor]]:
    """NLL per token of each prompt (and KL to ``reference``, the base model's next-token
    log-probabilities from an earlier call); returns the measure and this model's distributions."""
    import torch

    from fnapi.drift import next_token_logprobs

    if not prompts:
        raise DataError(f"{source}: no text to measure")
    if reference is not None and len(reference) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(reference)} reference distributions")
    current = next_token_logprobs(model, prompts)
    nll, tokens, kl = [], [], []
    for i, (ids, logp) in enumerate(zip(prompts, current)):
        targets = torch.tensor(list(ids[1:]))
        picked = logp[:-1].float().gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        nll.append(float(-picked.mean()))
        tokens.append(len(ids) - 1)
        if reference is not None:
            p_log, q_log = reference[i].float(), logp.float()
            kl.append(float((p_log.exp() * (p_log - q_log)).sum(-1).clamp(min=0).mean()))
    return TextMeasure(source, tuple(nll), tuple(tokens), tuple(kl) if reference is not None else None), current


def measure_generative(model: Any, tokenizer: Any, items: Sequence[ProbeItem], *, source: str = "probes",
                       max_new_tokens: int = 32, chat_template: str = "auto",
                       on_items: Callable[[int], None] | None = None) -> GenerativeMeasure:
    """Ask every probe question alone, in the chat template, and score the greedy reply with
    :func:`fnapi.generative.open_ended_correct` (right: it names the right choice and no other)."""
    from fnapi.evaluation import generate_answers
    from fnapi.generative import open_ended_correct

    if not items:
        raise DataError(f"{source}: no probe items to ask")
    replies = generate_answers(model, tokenizer, [item.to_conversation() for item in items],
                               max_new_tokens=max_new_tokens, batch_size=GENERATION_BATCH,
                               chat_template=chat_template, on_items=on_items)
    correct = tuple(open_ended_correct(reply, item.choices, item.answer, item.question)
                    for reply, item in zip(replies, items))
    return GenerativeMeasure(source, correct, tuple(replies))


def chat_prompt_ids(tokenizer: Any, prompts: Sequence[str], chat_template: str = "auto") -> list[list[int]]:
    """The token ids a model answers each general prompt from (the prompt alone, in the chat template)."""
    from fnapi.data.formats import Conversation
    from fnapi.data.templating import prompt_and_answer

    return [prompt_and_answer(Conversation(messages=[{"role": "user", "content": prompt},
                                                     {"role": "assistant", "content": "."}]),
                              tokenizer, chat_template)[0] for prompt in prompts]


def reply_logprobs(model: Any, prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Next-token log-probabilities at the positions that predict each reply's tokens, the reply
    teacher-forced after its prompt: one ``[len(reply), vocab]`` tensor per prompt (float16)."""
    from fnapi.drift import next_token_logprobs

    full = next_token_logprobs(model, [list(p) + list(r) for p, r in zip(prompts, replies)])
    return [logp[len(p) - 1: len(p) - 1 + len(r)] for logp, p, r in zip(full, prompts, replies)]


def measure_chat(model: Any, tokenizer: Any, source: str, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int = 32, leak: Any = None, base: ChatMeasure | None = None,
                 reference: Sequence[torch.Tensor] | None = None,
                 on_items: Callable[[int], None] | None = None) -> tuple[ChatMeasure, list[torch.Tensor]]:
    """Greedy replies to general prompts, each marked task-like or not by ``leak`` (a fitted
    :class:`fnapi.generative.LeakDetector`), and with ``base`` (the base model's measure) and
    ``reference`` (its reply distributions) the KL from the base to this model on the base's
    replies. Returns the measure and this model's distributions over its own replies (the
    reference a base model's call provides)."""
    from fnapi.evaluation import generate_ids

    if not prompts:
        raise DataError(f"{source}: no general prompts to ask")
    reply_ids = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=GENERATION_BATCH,
                             on_items=on_items)
    replies = tuple(tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in reply_ids)
    task_like = None if leak is None else tuple(float(leak.is_task_like(reply)) for reply in replies)
    kl = tokens = None
    if base is not None and reference is not None:
        if len(base.reply_ids) != len(prompts) or len(reference) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(base.reply_ids)} base replies")
        current = reply_logprobs(model, prompts, base.reply_ids)
        kl, tokens = [], []
        for p_log, q_log in zip(reference, current):
            p_log, q_log = p_log.float(), q_log.float()
            kl.append(float((p_log.exp() * (p_log - q_log)).sum(-1).clamp(min=0).mean()) if len(p_log) else 0.0)
            tokens.append(len(p_log))
        kl, tokens = tuple(kl), tuple(tokens)
    own = reply_logprobs(model, prompts, reply_ids) if base is None else []
    return ChatMeasure(source, replies, tuple(tuple(r) for r in reply_ids), task_like, kl, tokens), own


def change_summary(before: ProbeMeasure | TextMeasure, after: ProbeMeasure | TextMeasure) -> dict[str, Any]:
    """Paired changes of one measure between two models scored on the same items."""
    if isinstance(before, ProbeMeasure) and isinstance(after, ProbeMeasure):
        acc, lp = paired_change(before.correct, after.correct), paired_change(before.logprob, after.logprob)
        return {"accuracy": acc.mean, "ci95": list(acc.ci95), "logprob": lp.mean, "logprob_ci95": list(lp.ci95)}
    if isinstance(before, TextMeasure) and isinstance(after, TextMeasure):
        nll = paired_change(before.nll, after.nll, weights=before.tokens)
        return {"nll": nll.mean, "ci95": list(nll.ci95)}
    raise TypeError("change_summary needs two measures of the same kind")


# ---- one evaluation: every measure of one model ----------------------------------------------------

@dataclass(frozen=True)
class TaskMeasure:
    """Per-conversation task scores (1.0/0.0 for exact match) of one task source."""

    source: str
    scores: tuple[float, ...]

    @property
    def score(self) -> Estimate:
        return bootstrap(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "scores": list(self.scores)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskMeasure:
        return cls(str(data["source"]), tuple(float(v) for v in data["scores"]))

    def summary(self) -> dict[str, Any]:
        score = self.score
        return {"source": self.source, "n": score.n, "score": score.mean, "ci95": list(score.ci95)}


@dataclass(frozen=True)
class EvalPlan:
    """What to score, each by source: task conversations, probe items, held-out text (token ids)."""

    tasks: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    probes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    texts: tuple[tuple[str, tuple[tuple[int, ...], ...]], ...] = ()
    max_new_tokens: int = 24
    chat_template: str = "auto"
    lm_eval: LmEvalRequest | None = None
    #: probe items asked open-ended, by source
    generative: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    #: general prompts (token ids) for chat drift and the format-leak flag: ``(source, prompts)``
    chat: tuple[str, tuple[tuple[int, ...], ...]] | None = None
    #: the longest reply generated for the open-ended questions and the general prompts
    reply_tokens: int = 32
    #: a fitted :class:`fnapi.generative.LeakDetector` (None: no task answers to compare replies with)
    leak: Any = None

    @property
    def items(self) -> int:
        """Progress units of :func:`evaluate`: every task conversation, probe item, text paragraph,
        open-ended question and general prompt (lm-eval's requests are added once lm-eval has built
        them)."""
        return (sum(len(c) for _, c in self.tasks) + sum(len(i) for _, i in self.probes)
                + sum(len(p) for _, p in self.texts) + sum(len(i) for _, i in self.generative)
                + (len(self.chat[1]) if self.chat else 0))


@dataclass
class Reference:
    """What the base model's evaluation leaves for comparing a tuned model with it: its next-token
    distributions on each held-out text source, and on its own replies to the general prompts."""

    texts: list[list[Any]]
    chat: list[Any] | None = None

    @classmethod
    def of_base(cls, model: Any, plan: EvalPlan, base: EvalMeasures) -> Reference:
        """Measure again what :func:`evaluate` returned for the base ``model`` whose stored scores
        are ``base`` (a resumed run has the scores on disk, not the distributions)."""
        from fnapi.drift import next_token_logprobs

        chat = None
        if plan.chat is not None and base.chat is not None:
            chat = reply_logprobs(model, plan.chat[1], base.chat.reply_ids)
        return cls([next_token_logprobs(model, prompts) for _, prompts in plan.texts], chat)


class _TaskItems(Section):
    source: str
    scores: list[float]


class _ProbeItems(Section):
    source: str
    correct: list[float]
    logprob: list[float]


class _TextItems(Section):
    source: str
    nll: list[float]
    tokens: list[int]
    kl: list[float] | None = None


class _GenerativeItems(Section):
    source: str
    correct: list[float]
    replies: list[str]


class _ChatItems(Section):
    source: str
    replies: list[str]
    reply_ids: list[list[int]]
    task_like: list[float] | None = None
    kl: list[float] | None = None
    tokens: list[int] | None = None


class MeasuresData(Section):
    """The per-item scores of :meth:`EvalMeasures.to_dict`, as ``baseline.json`` and
    ``measures.json`` hold them: checked before use, so a damaged file is a ``ValueError`` (a
    pydantic ``ValidationError``) that its readers answer, never a ``KeyError`` halfway in."""

    tasks: list[_TaskItems] = Field(default_factory=list)
    probes: list[_ProbeItems] = Field(default_factory=list)
    texts: list[_TextItems] = Field(default_factory=list)
    lm_eval: LmEvalData | None = None
    generative: list[_GenerativeItems] = Field(default_factory=list)
    chat: _ChatItems | None = None


@dataclass(frozen=True)
class EvalMeasures:
    """Every per-item result of one model under one :class:`EvalPlan`; the first source of each kind
    is the one a run's report leads with."""

    tasks: tuple[TaskMeasure, ...] = ()
    probes: tuple[ProbeMeasure, ...] = ()
    texts: tuple[TextMeasure, ...] = ()
    lm_eval: LmEvalScores | None = None
    generative: tuple[GenerativeMeasure, ...] = ()
    chat: ChatMeasure | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"tasks": [t.to_dict() for t in self.tasks], "probes": [p.to_dict() for p in self.probes],
               "texts": [t.to_dict() for t in self.texts], "generative": [g.to_dict() for g in self.generative]}
        if self.lm_eval is not None:
            out["lm_eval"] = self.lm_eval.to_dict()
        if self.chat is not None:
            out["chat"] = self.chat.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalMeasures:
        """Read :meth:`to_dict`'s output; ``ValueError`` when it does not have that form."""
        MeasuresData.model_validate({**{key: data.get(key) or [] for key in ("tasks", "probes", "texts", "generative")},
                                     "lm_eval": data.get("lm_eval"), "chat": data.get("chat")})
        return cls(tasks=tuple(TaskMeasure.from_dict(t) for t in data.get("tasks") or []),
                   probes=tuple(ProbeMeasure.from_dict(p) for p in data.get("probes") or []),
                   texts=tuple(TextMeasure.from_dict(t) for t in data.get("texts") or []),
                   lm_eval=LmEvalScores.from_dict(data["lm_eval"]) if data.get("lm_eval") is not None else None,
                   generative=tuple(GenerativeMeasure.from_dict(g) for g in data.get("generative") or []),
                   chat=ChatMeasure.from_dict(data["chat"]) if data.get("chat") is not None else None)

    def summary(self) -> dict[str, Any]:
        """Means and intervals (no per-item values): what ``fnapi eval --json`` prints; with lm-eval
        benchmarks, ``lm_eval`` holds each task's metrics as lm-eval reports them (value, stderr)."""
        out = {"tasks": [t.summary() for t in self.tasks], "probes": [p.summary() for p in self.probes],
               "texts": [t.summary() for t in self.texts]}
        if self.generative:
            out["generative"] = [g.summary() for g in self.generative]
        if self.chat is not None:
            out["chat"] = self.chat.summary()
        if self.lm_eval is not None:
            out["lm_eval"] = self.lm_eval.summary()
        return out


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, plan: EvalPlan, *,
             reference: Reference | None = None, base: EvalMeasures | None = None,
             progress: StageProgress | None = None) -> tuple[EvalMeasures, Reference]:
    """Score ``model`` on everything in ``plan``. Given the base model's ``reference`` and ``base``
    measures (both from an earlier call on the base model) the text measures include the KL to the
    base, and the general prompts the KL on the base's replies (chat drift). Returns the measures
    and this model's :class:`Reference`. ``progress`` (a stage handle, total :attr:`EvalPlan.items`)
    advances after every batch, so a long scoring pass shows its rate and ETA."""
    def advancer(message: str) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda done: progress.advance(done, message=message)

    tasks = []
    for source, conversations in plan.tasks:
        tasks.append(TaskMeasure(source, measure_task(model, tokenizer, conversations,
                                                      max_new_tokens=plan.max_new_tokens,
                                                      chat_template=plan.chat_template,
                                                      on_items=advancer(f"task {source}"))))
    probes = []
    for source, items in plan.probes:
        probes.append(measure_probes(model, tokenizer, items, source=source, chat_template=plan.chat_template,
                                     on_items=advancer(f"probes {source}")))
    generative = []
    for source, items in plan.generative:
        generative.append(measure_generative(model, tokenizer, items, source=source, max_new_tokens=plan.reply_tokens,
                                             chat_template=plan.chat_template,
                                             on_items=advancer(f"open-ended {source}")))
    texts, distributions = [], []
    for index, (source, prompts) in enumerate(plan.texts):
        measure, current = measure_text(model, prompts, source=source,
                                        reference=None if reference is None else reference.texts[index])
        texts.append(measure)
        distributions.append(current)
        done = advancer(f"text {source}")
        if done is not None:
            done(len(prompts))
    chat, chat_distributions = None, None
    if plan.chat is not None:
        source, prompts = plan.chat
        chat, chat_distributions = measure_chat(
            model, tokenizer, source, prompts, max_new_tokens=plan.reply_tokens, leak=plan.leak,
            base=None if base is None else base.chat, reference=None if reference is None else reference.chat,
            on_items=advancer(f"general prompts {source}"))
    benchmarks = None
    if plan.lm_eval is not None:
        from fnapi.lm_eval_bridge import score

        benchmarks = score(model, tokenizer, plan.lm_eval, progress=progress)
    measures = EvalMeasures(tasks=tuple(tasks), probes=tuple(probes), texts=tuple(texts), lm_eval=benchmarks,
                            generative=tuple(generative), chat=chat)
    return measures, Reference(distributions, chat_distributions)


def compare_measures(before: EvalMeasures, after: EvalMeasures) -> dict[str, Any]:
    """Before/after means, intervals on both and paired intervals on the changes, keyed as in
    ``report.json``: ``task``, ``probes``, ``probe_logprob``, ``text_nll`` and ``kl_to_base`` for the
    first source of each kind, and ``tasks``, ``probe_sets`` and ``texts`` for all of them, and
    ``lm_eval`` for lm-eval's metrics when both were scored on them (:func:`compare_lm_eval`)."""
    out: dict[str, Any] = {
        "tasks": [{"source": b.source, "score": _pair(b.scores, a.scores)} for b, a in zip(before.tasks, after.tasks)],
        "probe_sets": [{"source": b.source, "n": b.n, "accuracy": _pair(b.correct, a.correct),
                        "logprob": _pair(b.logprob, a.logprob)} for b, a in zip(before.probes, after.probes)],
        "texts": [],
    }
    for b, a in zip(before.texts, after.texts):
        entry: dict[str, Any] = {"source": b.source, "nll": _pair(b.nll, a.nll, weights=b.tokens)}
        kl = a.mean_kl
        if kl is not None:
            entry["kl"] = {"mean": kl.mean, "ci95": list(kl.ci95), "n": kl.n}
        out["texts"].append(entry)
    if out["tasks"]:
        out["task"] = out["tasks"][0]["score"]
    if out["probe_sets"]:
        out["probes"] = out["probe_sets"][0]["accuracy"]
        out["probe_logprob"] = out["probe_sets"][0]["logprob"]
    if out["texts"]:
        out["text_nll"] = out["texts"][0]["nll"]
        if "kl" in out["texts"][0]:
            out["kl_to_base"] = out["texts"][0]["kl"]
    if before.lm_eval is not None and after.lm_eval is not None:
        out["lm_eval"] = compare_lm_eval(before.lm_eval, after.lm_eval)
    out["generative_sets"] = [{"source": b.source, "n": b.n, "accuracy": _pair(b.correct, a.correct)}
                              for b, a in zip(before.generative, after.generative)]
    if out["generative_sets"]:
        out["generative"] = out["generative_sets"][0]["accuracy"]
    out.update(compare_chat(before.chat, after.chat))
    return out


#: Replies shown in the report for each general-prompt measure (the first ones, base beside tuned).
REPLY_EXAMPLES = 3


def compare_chat(before: ChatMeasure | None, after: ChatMeasure | None) -> dict[str, Any]:
    """``chat_kl`` (``value``, ``ci95``, ``prompts``: the KL from the base to the tuned model on the
    base's replies) and ``format_leak`` (``share`` of general prompts whose reply looks like the task's
    answers, the base model's ``base_share``, whether that is a ``flag``, and a few replies), for
    whatever of them was measured."""
    from fnapi.generative import LeakDetector

    out: dict[str, Any] = {}
    if after is None:
        return out
    kl = after.mean_kl
    if kl is not None:
        out["chat_kl"] = {"value": kl.mean, "ci95": list(kl.ci95), "prompts": kl.n, "source": after.source}
    if after.task_like is not None:
        share = after.leak_share
        base_share = before.leak_share if before is not None else None
        out["format_leak"] = {"share": share, "base_share": base_share,
                              "flag": LeakDetector.flag(share, base_share), "prompts": len(after.task_like),
                              "source": after.source,
                              "examples": [{"base": b, "tuned": a} for b, a in zip(
                                  before.replies if before is not None else [""] * len(after.replies),
                                  after.replies)][:REPLY_EXAMPLES]}
    return out


def compare_lm_eval(before: LmEvalScores, after: LmEvalScores) -> list[dict[str, Any]]:
    """Each lm-eval metric both scored: the two values with lm-eval's stderrs, the change, and where
    the metric is a mean over documents (accuracy, exact match) a paired interval on the change over
    the documents both scored."""
    base = {metric.key: metric for metric in before.metrics}
    out = []
    for a in after.metrics:
        b = base.get(a.key)
        if b is None:
            continue
        change = a.value - b.value if a.value is not None and b.value is not None else None
        entry = {"task": a.task, "metric": a.metric, "filter": a.filter, "n": a.n, "before": b.value,
                 "after": a.value, "before_stderr": b.stderr, "stderr": a.stderr, "change": change,
                 "change_ci95": None, "higher_is_better": a.higher_is_better}
        paired = _paired_documents(b, a)
        if paired is not None:
            estimate = paired_change(*paired)
            entry["change_ci95"] = list(estimate.ci95)
        out.append(entry)
    return out


def _paired_documents(before: Any, after: Any) -> tuple[list[float], list[float]] | None:
    """Per-document values of the documents both scored, when each side's value is their mean (so the
    paired interval is about the number lm-eval reports); None otherwise."""
    if not before.values or not after.values:
        return None
    for metric in (before, after):
        if metric.value is None or abs(float(np.mean(metric.values)) - metric.value) > 1e-6:
            return None
    after_by_doc = dict(zip(after.doc_ids, after.values))
    common = [(value, after_by_doc[doc]) for doc, value in zip(before.doc_ids, before.values) if doc in after_by_doc]
    if not common:
        return None
    return [b for b, _ in common], [a for _, a in common]


def _pair(before: Sequence[float], after: Sequence[float], weights: Sequence[float] | None = None) -> dict[str, Any]:
    b, a = bootstrap(before, weights=weights), bootstrap(after, weights=weights)
    change = paired_change(before, after, weights=weights)
    return {"before": b.mean, "after": a.mean, "n": a.n, "before_ci95": list(b.ci95), "ci95": list(a.ci95),
            "change": change.mean, "change_ci95": list(change.ci95)}


def read_sources(*, probes: Sequence[str] = (), probe_samples: int | None = None, texts: Sequence[str] = (),
                 text_samples: int = 32, sink: EventSink | None = None) -> tuple[list, list]:
    """The probe items and text paragraphs of each source, read without a model, so a bad file fails
    before any weights load: ``([(source, items)], [(source, paragraphs)])``."""
    from fnapi.data.probes import load_probes, load_texts

    sets = []
    for source in probes:
        probe_set = load_probes(source, limit=probe_samples)
        if probe_set.skipped and sink is not None:
            from fnapi.events import Log

            sink.emit(Log(message=probe_set.describe(), level="warning", stage="evaluate"))
        sets.append((source, tuple(probe_set.items)))
    paragraphs = [(source, load_texts(source, limit=text_samples)) for source in (texts if text_samples else ())]
    return sets, paragraphs


@dataclass(frozen=True)
class GenerativeRequest:
    """What to ask open-ended: the first ``samples`` items of every probe set (None: all), the
    general prompts of ``prompts`` (its first ``chat_prompts``; 0: none), replies of at most
    ``max_new_tokens`` tokens, and the training task's answers (``task_answers``) that replies to
    general prompts are compared with for the format-leak flag (empty: no flag)."""

    samples: int | None = 100
    max_new_tokens: int = 32
    prompts: str = "builtin:chat"
    chat_prompts: int = 24
    task_answers: tuple[str, ...] = ()

    @classmethod
    def from_section(cls, section: Any, task_answers: Sequence[str] = ()) -> GenerativeRequest | None:
        """From a recipe's ``eval.generative`` (None when it is off)."""
        if section is None or not section.enabled:
            return None
        return cls(section.samples, section.max_new_tokens, section.prompts, section.chat_prompts,
                   tuple(task_answers))


def build_plan(tokenizer: PreTrainedTokenizerBase, *, tasks: Sequence[tuple[str, Sequence[Conversation]]] = (),
               probes: Sequence[str] = (),
               probe_samples: int | None = None, texts: Sequence[str] = (), text_samples: int = 32,
               max_new_tokens: int = 24, chat_template: str = "auto", sink: EventSink | None = None,
               sources: tuple[list, list] | None = None, lm_eval: LmEvalRequest | None = None,
               generative: GenerativeRequest | None = None) -> EvalPlan:
    """An :class:`EvalPlan` from sources: task conversations by name, probe sets (``builtin:probes``
    or files, read with :func:`fnapi.data.probes.load_probes`; skipped rows are logged to ``sink``)
    and held-out text (``builtin:text`` or files, :func:`fnapi.data.probes.load_texts`).
    ``sources`` is what :func:`read_sources` returned, when the files were read beforehand;
    ``lm_eval`` names lm-eval benchmarks to score too, ``generative`` what to ask open-ended."""
    # the open-ended questions may be more than the ranked ones: read as many as either needs
    wanted = probe_samples
    if generative is not None and wanted is not None:
        wanted = None if generative.samples is None else max(wanted, generative.samples)
    sets, paragraphs = sources if sources is not None else read_sources(
        probes=probes, probe_samples=wanted, texts=texts, text_samples=text_samples, sink=sink)
    text_sets = [(source, tuple(tuple(p) for p in text_prompts(tokenizer, rows))) for source, rows in paragraphs]
    extra: dict[str, Any] = {}
    if generative is not None:
        extra = _generative_plan(tokenizer, generative, sets, paragraphs, chat_template)
    if probe_samples is not None:
        sets = [(source, items[:probe_samples]) for source, items in sets]
    return EvalPlan(tasks=tuple((name, tuple(c)) for name, c in tasks if c), probes=tuple(sets),
                    texts=tuple(text_sets), max_new_tokens=max_new_tokens, chat_template=chat_template,
                    lm_eval=lm_eval, **extra)


def _generative_plan(tokenizer: Any, request: GenerativeRequest, sets: list, paragraphs: list,
                     chat_template: str) -> dict[str, Any]:
    """The open-ended questions, general prompts and leak detector of an :class:`EvalPlan`.

    The open-ended questions are the first items of each probe set, like the ones choice ranking
    scores, so the two measures speak of the same questions where both ask them."""
    from fnapi.generative import LeakDetector, load_prompts

    limit = request.samples
    generative = tuple((source, items[:limit] if limit is not None else items) for source, items in sets)
    out: dict[str, Any] = {"generative": generative, "reply_tokens": request.max_new_tokens}
    if request.chat_prompts:
        prompts = load_prompts(request.prompts, limit=request.chat_prompts)
        out["chat"] = (prompts.source, tuple(tuple(ids) for ids in chat_prompt_ids(tokenizer, prompts.prompts,
                                                                                   chat_template)))
        if request.task_answers:
            # General English the replies are told apart from: the prompts themselves, held-out text and
            # the probes' replies (the model's answering voice), none of them the model's own replies.
            general = [*prompts.prompts, *(t for _, rows in paragraphs for t in rows),
                       *(item.reply(item.answer) for _, items in sets for item in items)]
            if not paragraphs and not sets:
                from fnapi.data.builtin import text_paragraphs

                general.extend(text_paragraphs(64))
            out["leak"] = LeakDetector().fit(request.task_answers, general)
    return out
