"""Small generated skills for continual learning, addressable as ``builtin:cipher``, ``builtin:order``,
``builtin:units`` and ``builtin:vennish`` (the names resolve in :mod:`fnapi.data.builtin`).

Each task is a different rule the embedded model cannot already apply (it scores 0 exact match on
every test split), with short answers (at most 10 tokens) that a LoRA learns within a few dozen
steps. Learning numbers are measured by ``benchmarks/builtin_tasks.py`` on the embedded model
(SmolLM2-135M-Instruct, LoRA r=8, batch 8, lr 1e-3, linear schedule over 60 steps, max_length 64;
exact match on 100 held-out test rows); each task's docstring gives its own.

Every task is a pure function of the seed: the rule (vowel permutation, word order, unit names,
lexicon) and the rows are drawn from ``random.Random`` seeded with the seed and the task name, so
a recipe replays with the same rows. The train, validation and test rows are disjoint, and every
letter, word and unit a test row needs occurs in the training rows.

Scored by exact match (:func:`fnapi.evaluation.exact_match`), like ``builtin:skill``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from fnapi.data.formats import Conversation
from fnapi.errors import DataError

SEED = 1234  # the default seed of every built-in dataset (fnapi.data.builtin uses this one)
SPLITS = ("train", "validation", "test")

Item = tuple[str, str]  # (prompt, answer)


@dataclass(frozen=True)
class GeneratedTask:
    """A generated skill: ``items(seed)`` lists distinct (prompt, answer) pairs in a seeded order,
    which are dealt into the splits in the order test, validation, train (``sizes``; a train size
    of None takes every remaining item)."""

    name: str
    summary: str
    items: Callable[[int], list[Item]]
    test: int
    validation: int
    train: int | None = None

    def split_items(self, split: str, seed: int = SEED) -> list[Item]:
        """The (prompt, answer) pairs of ``split``."""
        if split not in SPLITS:
            raise DataError(f"builtin:{self.name} has no split {split!r}; it has {', '.join(SPLITS)}")
        items = self.items(seed)
        needed = self.test + self.validation + (self.train or 1)
        if len(items) < needed:  # a guard for edits to the word lists, not reachable with the shipped ones
            raise DataError(f"builtin:{self.name} generated {len(items)} rows, fewer than the {needed} its splits need")
        test_end = self.test
        validation_end = test_end + self.validation
        train_end = None if self.train is None else validation_end + self.train
        bounds = {"test": (0, test_end), "validation": (test_end, validation_end), "train": (validation_end, train_end)}
        start, end = bounds[split]
        return items[start:end]

    def conversations(self, split: str, seed: int = SEED) -> list[Conversation]:
        """The ``split`` as chat conversations (one user turn, one assistant answer)."""
        return [Conversation(messages=[{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": answer}])
                for prompt, answer in self.split_items(split, seed)]

    def splits(self, seed: int = SEED) -> dict[str, list[Conversation]]:
        return {split: self.conversations(split, seed) for split in SPLITS}


def _rng(seed: int, name: str, part: str = "") -> random.Random:
    """A generator of its own per task and purpose, so changing one task never moves another's rows."""
    return random.Random(f"{seed}:{name}:{part}")


def _derangement(values: tuple, rng: random.Random, exclude: tuple = ()) -> tuple:
    """A seeded ordering of ``values`` that leaves none in place (and is not one of ``exclude``)."""
    options = [p for p in itertools.permutations(values)
               if all(a != b for a, b in zip(p, values)) and p not in exclude]
    return rng.choice(options)


def _distinct_sample(make: Callable[[random.Random], str | tuple], count: int, rng: random.Random) -> list:
    """``count`` distinct draws of ``make(rng)``, in the order drawn."""
    seen: set = set()
    out: list = []
    while len(out) < count:
        value = make(rng)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


# ---- cipher -----------------------------------------------------------------------------------

CIPHER_VOWELS = ("a", "e", "i", "o", "u")
CIPHER_CONSONANTS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
CIPHER_PATTERNS = ("CVC", "CVCV", "VCVC", "CVCVC", "CVVC")
CIPHER_PROMPT = "Encode with the cipher: "


def cipher_key(seed: int = SEED) -> dict[str, str]:
    """Vowel -> the vowel that replaces it (no vowel maps to itself; consonants stay as they are)."""
    return dict(zip(CIPHER_VOWELS, _derangement(CIPHER_VOWELS, _rng(seed, "cipher", "key"))))


def cipher_encode(word: str, seed: int = SEED) -> str:
    """``word`` with every vowel replaced by the cipher's, letters separated by spaces."""
    key = cipher_key(seed)
    return " ".join(key.get(letter, letter) for letter in word)


def cipher_items(seed: int) -> list[Item]:
    def word(rng: random.Random) -> str:
        pattern = rng.choice(CIPHER_PATTERNS)
        return "".join(rng.choice(CIPHER_CONSONANTS if c == "C" else CIPHER_VOWELS) for c in pattern)

    words = _distinct_sample(word, 2400, _rng(seed, "cipher", "words"))
    # Letters are written spaced: the model then sees one token per letter and learns a letter rule,
    # not the spelling of whatever pieces its tokenizer cuts an unspaced word into.
    return [(CIPHER_PROMPT + " ".join(w), cipher_encode(w, seed)) for w in words]


CIPHER = GeneratedTask(
    name="cipher",
    summary="encode spaced-out letters with a vowel-swapping letter cipher (exact match)",
    items=cipher_items, test=200, validation=200, train=2000,
)


# ---- order ------------------------------------------------------------------------------------

ORDER_SLOTS = (
    ("the", "a", "one", "my", "your", "this", "that", "her"),
    ("red", "tall", "quiet", "old", "small", "happy", "brown", "cold", "young", "brave"),
    ("cat", "dog", "bird", "horse", "man", "girl", "boy", "fox", "king", "teacher"),
    ("sleeps", "runs", "sings", "waits", "jumps", "laughs", "swims", "reads", "falls", "smiles"),
)
ORDER_PROMPT = "Apply the order rule: "


def order_permutation(seed: int = SEED) -> tuple[int, ...]:
    """Output position i holds the input word at ``order_permutation()[i]``: a seeded ordering of
    the four words that moves every word and is not a plain reversal."""
    return _derangement((0, 1, 2, 3), _rng(seed, "order", "rule"), exclude=((3, 2, 1, 0),))


def order_items(seed: int) -> list[Item]:
    permutation = order_permutation(seed)
    sentences = _distinct_sample(lambda rng: tuple(rng.choice(slot) for slot in ORDER_SLOTS), 2400,
                                 _rng(seed, "order", "sentences"))
    return [(ORDER_PROMPT + " ".join(s), " ".join(s[i] for i in permutation)) for s in sentences]


ORDER = GeneratedTask(
    name="order",
    summary="reorder four-word sentences by a fixed invented word order (exact match)",
    items=order_items, test=200, validation=200, train=2000,
)


# ---- units ------------------------------------------------------------------------------------

UNIT_NAMES = ("zinn", "blorp", "krell", "vosk", "tarn", "quib", "dask", "plim", "grook", "fenn")
UNITS_PROMPT = "How many {small}s are {count} {big}s?"


def unit_ladder(seed: int = SEED) -> tuple[str, ...]:
    """Four invented units from smallest to largest; each is 10 of the one before it."""
    return tuple(_rng(seed, "units", "names").sample(UNIT_NAMES, 4))


def units_convert(count: int, big: str, small: str, seed: int = SEED) -> int:
    """How many ``small`` units make ``count`` ``big`` units."""
    ladder = unit_ladder(seed)
    steps = ladder.index(big) - ladder.index(small)
    if steps <= 0:
        raise DataError(f"{big} is not a larger unit than {small} (the units from small to large: {', '.join(ladder)})")
    return count * 10 ** steps


def units_items(seed: int) -> list[Item]:
    ladder = unit_ladder(seed)
    items = [(UNITS_PROMPT.format(small=small, count=count, big=big),
              f"{units_convert(count, big, small, seed)} {small}s")
             for i, small in enumerate(ladder) for big in ladder[i + 1:] for count in range(2, 100)]
    _rng(seed, "units", "rows").shuffle(items)
    return items


UNITS = GeneratedTask(
    name="units",
    summary="convert between four made-up units, each worth ten of the next smaller (exact match)",
    items=units_items, test=100, validation=50,
)


# ---- vennish ----------------------------------------------------------------------------------

VENNISH_LANGUAGE = "Vennish"
VENNISH_ADJECTIVES = ("tall", "cold", "soft", "dark")
VENNISH_NOUNS = ("cat", "ship", "lamp", "door")
VENNISH_PLURAL = "ol"
_VENNISH_WORDS = ("tam", "vel", "dor", "pim", "sul", "gen", "rak", "fos", "wib", "hask", "mun", "tel")


def vennish_lexicon(seed: int = SEED) -> dict[str, str]:
    """English word -> Vennish word (one syllable each, distinct, fixed by ``seed``)."""
    words = _rng(seed, "vennish", "lexicon").sample(_VENNISH_WORDS, len(VENNISH_ADJECTIVES) + len(VENNISH_NOUNS))
    return dict(zip(VENNISH_ADJECTIVES + VENNISH_NOUNS, words))


def vennish_translate(adjectives: tuple[str, ...], noun: str, plural: bool, seed: int = SEED) -> str:
    """The Vennish phrase: the noun first (with the plural suffix for more than one), then the
    adjectives in their English order."""
    lexicon = vennish_lexicon(seed)
    head = lexicon[noun] + (VENNISH_PLURAL if plural else "")
    return " ".join([head, *(lexicon[a] for a in adjectives)])


def vennish_items(seed: int) -> list[Item]:
    phrases = [(adjectives, noun, plural)
               for count in (1, 2) for adjectives in itertools.permutations(VENNISH_ADJECTIVES, count)
               for noun in VENNISH_NOUNS for plural in (False, True)]
    _rng(seed, "vennish", "rows").shuffle(phrases)
    return [(f"Translate into {VENNISH_LANGUAGE}: {' '.join(adjectives)} {noun}{'s' if plural else ''}",
             vennish_translate(adjectives, noun, plural, seed))
            for adjectives, noun, plural in phrases]


VENNISH = GeneratedTask(
    name="vennish",
    summary="translate English phrases into Vennish, a second made-up language: nouns first, a plural suffix (exact match)",
    items=vennish_items, test=32, validation=16,
)


#: The generated tasks of this module by name.
TASKS: dict[str, GeneratedTask] = {task.name: task for task in (CIPHER, ORDER, UNITS, VENNISH)}
