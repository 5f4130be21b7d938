"""Forgetting a user can see: what the model *says*, not which given choice it ranks first.

Choice ranking (:mod:`fnapi.evaluation`) can still rank "Paris" above "Madrid" in a model that
answers every question in the training task's made-up language. The measures here look at replies:

- :func:`open_ended_correct` — a probe question asked alone; the greedy reply is right when it names
  the right choice and no other choice.
- :class:`LeakDetector` — does a reply to a general prompt look like the training task's answers
  (its format or language) rather than like ordinary English? A character-trigram model of each
  side decides, so it needs no knowledge of what the task is.
- :func:`load_prompts` and :func:`probe_overlap` — the general prompts asked, and the check that
  none of them is a question some probe set scores.

The model-facing parts (generating the replies, the KL on the base's replies) are in
:mod:`fnapi.measures`; this module is plain text and imports no torch.

>>> open_ended_correct("The capital of France is Paris.", ["Madrid", "Paris", "Rome"], 1)
1.0
>>> open_ended_correct("loxo kazu", ["Madrid", "Paris", "Rome"], 1)
0.0
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fnapi.errors import DataError

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty")
_NUMBER_WORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b")


def normalise_reply(text: str) -> str:
    """Lower case, number words up to twenty as digits ("four legs" -> "4 legs"), runs of whitespace
    as one space: a model that spells a number out still names it."""
    text = " ".join(text.lower().split())
    return _NUMBER_WORD.sub(lambda m: str(NUMBER_WORDS.index(m.group(1))), text)


_WORD = re.compile(r"\w+|[^\w\s]")


def _words(text: str) -> list[str]:
    return _WORD.findall(normalise_reply(text))


def _occurrences(words: list[str], phrase: list[str]) -> list[tuple[int, int]]:
    n = len(phrase)
    return [(i, i + n) for i in range(len(words) - n + 1) if n and words[i: i + n] == phrase]


def _echoed(words: list[str], question: list[str], choices: list[list[str]]) -> set[int]:
    """Positions of ``words`` that copy the question: every run of two or more words that also runs
    in the question and holds a choice ("1 + 4 = 5" after "What is 1 + 4?" echoes "1 + 4"), except a
    run that is exactly one choice (a reply that picks "a horse" from "a horse, a mouse or a cat")."""
    echoed: set[int] = set()
    i = 0
    while i < len(words):
        longest = 0
        for j in range(len(question)):
            k = 0
            while i + k < len(words) and j + k < len(question) and words[i + k] == question[j + k]:
                k += 1
            longest = max(longest, k)
        run = words[i: i + longest]
        if longest >= 2 and run not in choices and any(_occurrences(run, choice) for choice in choices):
            echoed.update(range(i, i + longest))
            i += longest
        else:
            i += 1
    return echoed


def named_choices(reply: str, choices: Sequence[str], question: str = "") -> set[int]:
    """The choices a reply names as whole words, ignoring what it copies from ``question`` (see
    :func:`_echoed`). A mention inside a longer choice's mention does not count ("York" inside
    "New York" names only "New York")."""
    words = _words(reply)
    phrases = [_words(choice) for choice in choices]
    echoed = _echoed(words, _words(question), phrases) if question else set()
    spans = {i: [(s, e) for s, e in _occurrences(words, phrase) if not echoed & set(range(s, e))]
             for i, phrase in enumerate(phrases)}
    named = set()
    for i, own in spans.items():
        for start, end in own:
            inside = any(j != i and s <= start and end <= e and (e - s) > (end - start)
                         for j, other in spans.items() for s, e in other)
            if not inside:
                named.add(i)
                break
    return named


def open_ended_correct(reply: str, choices: Sequence[str], answer: int, question: str = "") -> float:
    """1.0 when ``reply`` names the right choice and no other (see :func:`named_choices`), else 0.0.
    An empty reply, a reply naming several choices and a reply naming none are all wrong. Words the
    reply copies from ``question`` do not name a choice."""
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer {answer} is not one of {len(choices)} choices")
    return float(named_choices(reply, choices, question) == {answer})


# ---- the format-leak flag ----------------------------------------------------------------------

#: A reply is task-like when, per character, the task's model explains it better than the general one.
LEAK_MARGIN = 0.0
#: The flag fires when at least this share of general prompts get task-like replies ...
LEAK_SHARE = 0.25
#: ... and that share rose by at least this much over the base model's.
LEAK_RISE = 0.2


class LeakDetector:
    """Tells replies that look like the training task's answers from ordinary replies.

    Two character-trigram models (interpolated with bigrams and single characters, so unseen
    strings still get a probability): one fitted on the task's answers, one on general English (the
    general prompts, held-out text, the probe questions' replies). A reply is *task-like* when its
    mean per-character log-likelihood ratio, task against general, is above :data:`LEAK_MARGIN`.
    Scikit-learn style: ``fit`` returns the detector, fitted attributes end in ``_``.

    The base model's replies are scored the same way: for a task whose answers are plain English
    some of them may look task-like too, which is why :meth:`flag` asks for a rise over the base.
    """

    def __init__(self, order: int = 3, weights: tuple[float, ...] = (0.6, 0.3, 0.1)) -> None:
        self.order = order
        self.weights = weights

    def fit(self, task_texts: Iterable[str], general_texts: Iterable[str]) -> LeakDetector:
        task, general = [t for t in task_texts if t.strip()], [t for t in general_texts if t.strip()]
        if not task or not general:
            raise DataError("the format-leak check needs the task's answers and general text to compare them with")
        self.task_ = _CharModel(self.order, self.weights).fit(task)
        self.general_ = _CharModel(self.order, self.weights).fit(general)
        self.fingerprint_ = hashlib.sha256(json.dumps([task, general]).encode()).hexdigest()[:12]
        return self

    def __repr__(self) -> str:
        # what it was fitted on, so a plan holding it describes the same evaluation every time
        return f"LeakDetector(order={self.order}, fitted={getattr(self, 'fingerprint_', None)})"

    def score(self, reply: str) -> float:
        """Mean per-character log-likelihood ratio, task model against general model (0.0 when empty)."""
        text = _padded(reply, self.order)
        if len(text) <= self.order - 1 + 1:  # nothing but the padding and the end mark
            return 0.0
        return (self.task_.log_likelihood(text) - self.general_.log_likelihood(text)) / (len(text) - self.order + 1)

    def is_task_like(self, reply: str) -> bool:
        return bool(reply.strip()) and self.score(reply) > LEAK_MARGIN

    @staticmethod
    def flag(share: float, base_share: float | None) -> bool:
        """Whether replies to general prompts took the task's format: at least :data:`LEAK_SHARE`
        of them, and :data:`LEAK_RISE` more than the base model's."""
        return share >= LEAK_SHARE and share - (base_share or 0.0) >= LEAK_RISE


def _padded(text: str, order: int) -> str:
    return "\x02" * (order - 1) + normalise_reply(text) + "\x03"


class _CharModel:
    """An interpolated character n-gram model (n = 1..order)."""

    def __init__(self, order: int, weights: tuple[float, ...]) -> None:
        if len(weights) != order or not math.isclose(sum(weights), 1.0):
            raise ValueError("one interpolation weight per order, adding up to 1")
        self.order, self.weights = order, weights

    def fit(self, texts: Sequence[str]) -> _CharModel:
        self.counts = [Counter() for _ in range(self.order)]   # n-gram counts, n = 1..order
        self.contexts = [Counter() for _ in range(self.order)]  # their (n-1)-gram contexts
        alphabet = set()
        for text in texts:
            padded = _padded(text, self.order)
            alphabet.update(padded)
            for n in range(1, self.order + 1):
                for i in range(self.order - n, len(padded) - n + 1):
                    gram = padded[i: i + n]
                    self.counts[n - 1][gram] += 1
                    self.contexts[n - 1][gram[:-1]] += 1
        # Room for characters never seen, so a reply in another script is unlikely, not impossible.
        self.vocabulary = len(alphabet) + 64
        return self

    def log_likelihood(self, padded: str) -> float:
        total = 0.0
        for i in range(self.order - 1, len(padded)):
            p = 0.0
            for n, weight in zip(range(self.order, 0, -1), self.weights):
                gram = padded[i - n + 1: i + 1]
                # add-one within each order, so every order gives a proper distribution
                p += weight * (self.counts[n - 1][gram] + 1) / (self.contexts[n - 1][gram[:-1]] + self.vocabulary)
            total += math.log(p)
        return total


# ---- general prompts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptSet:
    """General prompts read from ``source`` (``builtin:chat``, a ``.txt`` file of one prompt a line,
    or ``.jsonl``/``.json``/``.csv``/``.parquet`` rows with a ``prompt`` field)."""

    source: str
    prompts: tuple[str, ...]


PROMPT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")


def load_prompts(source: str, *, limit: int | None = None) -> PromptSet:
    """The general prompts at ``source``; ``limit`` keeps the first ``limit``. A missing file, an
    unknown built-in or a file without prompts is a :class:`DataError` naming it."""
    if limit is not None and limit < 1:
        raise DataError(f"{source}: the prompt limit must be at least 1, got {limit}")
    if source.startswith("builtin:"):
        from fnapi.data.builtin import chat_prompts, chat_train_prompts

        builtin = {"builtin:chat": chat_prompts, "builtin:chat-train": chat_train_prompts}
        if source not in builtin:
            raise DataError(f"unknown built-in prompt set {source!r}; the built-in ones are "
                            "builtin:chat (measured) and builtin:chat-train (for training)")
        return PromptSet(source, tuple(builtin[source](limit)))
    from fnapi.data.probes import local_file, read_rows

    path = local_file(source, PROMPT_SUFFIXES, "prompt")
    if path.suffix.lower() == ".txt":
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = []
        for line, row in read_rows(path):
            value = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{path}:{line}: a prompt row needs a non-empty 'prompt' field")
            prompts.append(value.strip())
    if not prompts:
        raise DataError(f"{source} has no prompts")
    return PromptSet(source, tuple(prompts[:limit] if limit is not None else prompts))


def _question_key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def probe_overlap(prompts: PromptSet, probe_sets: Iterable[tuple[str, Sequence[object]]]) -> tuple[str, int, str] | None:
    """The first prompt that is (or contains) a question of a probe set, as ``(probe source, prompt
    number from 1, prompt)``, or None. Punctuation and case do not hide a copy."""
    for source, items in probe_sets:
        questions = {_question_key(getattr(item, "question", "")) for item in items}
        questions.discard("")
        for number, prompt in enumerate(prompts.prompts, start=1):
            key = _question_key(prompt)
            if key in questions or any(q in key for q in questions if len(q) > 12):
                return source, number, prompt
    return None
