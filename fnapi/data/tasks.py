"""Small generated skills for continual learning, addressable as ``builtin:cipher``, ``builtin:order``,
``builtin:units`` and ``builtin:vennish`` (the names resolve in :mod:`fnapi.data.builtin`).

Each task is a different rule the embedded model cannot already apply (0 exact match on the
first 100 test rows of each), with short answers (at most 10 tokens) that a LoRA learns within a few dozen
steps. Learning numbers are measured by ``benchmarks/builtin_tasks.py`` on the embedded model
(SmolLM2-135M-Instruct, LoRA r=8, batch 8, lr 1e-3, linear schedule over 60 steps, max_length 64;
exact match on 100 held-out test rows, every 10 steps); each task's docstring gives its own. Under
the same settings ``builtin:skill`` (a 20-word lexicon to memorise) is at 0.05 after 60 steps.

Every task is a pure function of the seed: the rule (vowel permutation, word order, unit names,
word endings) and the rows are drawn from ``random.Random`` seeded with the seed and the task name, so
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
    which are dealt into the splits in the order test, validation, train (``test``, ``validation``
    and ``train`` rows; a ``train`` of None takes every remaining item)."""

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
        return self._deal(seed)[split]

    def conversations(self, split: str, seed: int = SEED) -> list[Conversation]:
        """The ``split`` as chat conversations (one user turn, one assistant answer)."""
        return _conversations(self.split_items(split, seed))

    def splits(self, seed: int = SEED) -> dict[str, list[Conversation]]:
        """Every split as chat conversations."""
        return {split: _conversations(items) for split, items in self._deal(seed).items()}

    def _deal(self, seed: int) -> dict[str, list[Item]]:
        items = self.items(seed)
        needed = self.test + self.validation + (self.train or 1)
        if len(items) < needed:  # a guard for edits to the word lists, not reachable with the shipped ones
            raise DataError(f"builtin:{self.name} generated {len(items)} rows, fewer than the {needed} its splits need")
        held = self.test + self.validation
        return {"train": items[held: None if self.train is None else held + self.train],
                "validation": items[self.test: held], "test": items[: self.test]}


def _conversations(items: list[Item]) -> list[Conversation]:
    return [Conversation(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
            for prompt, answer in items]


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
    """``builtin:cipher``: ``Encode with the cipher: b a d o`` -> ``b e d u`` (for the default seed).

    Invented letter strings of 3-5 letters, written with a space between letters; the cipher
    replaces each vowel by another vowel (a seeded permutation that leaves no vowel in place) and
    keeps the consonants. 2000 train, 200 validation, 200 test strings, all distinct.

    Measured (benchmarks/builtin_tasks.py, settings in the module docstring): base model 0.00 exact
    match; after 10/20/30/40/50/60 steps 0.08/0.29/0.64/0.91/0.96/0.98.
    """
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

ORDER_DETERMINERS = ("the", "a", "one", "my", "your", "this", "that", "her")
ORDER_ADJECTIVES = ("red", "tall", "quiet", "old", "small", "happy", "brown", "cold", "young", "brave")
ORDER_NOUNS = ("cat", "dog", "bird", "horse", "man", "girl", "boy", "fox", "king", "teacher")
ORDER_VERBS = ("sleeps", "runs", "sings", "waits", "jumps", "laughs", "swims", "reads", "falls", "smiles")
ORDER_ADVERBS = ("slowly", "often", "today", "again", "loudly", "alone", "twice", "outside")
#: The word slots of a sentence of each length.
ORDER_SLOTS = {
    3: (ORDER_ADJECTIVES, ORDER_NOUNS, ORDER_VERBS),
    4: (ORDER_DETERMINERS, ORDER_ADJECTIVES, ORDER_NOUNS, ORDER_VERBS),
    5: (ORDER_DETERMINERS, ORDER_ADJECTIVES, ORDER_NOUNS, ORDER_VERBS, ORDER_ADVERBS),
}
ORDER_PROMPT = "Apply the order rule: "


def order_permutation(length: int, seed: int = SEED) -> tuple[int, ...]:
    """Output position i holds the input word at ``order_permutation(length)[i]``: for each
    sentence length its own seeded ordering, which moves every word and is not a plain reversal."""
    if length not in ORDER_SLOTS:
        raise DataError(f"builtin:order has sentences of {', '.join(map(str, ORDER_SLOTS))} words, not {length}")
    identity = tuple(range(length))
    return _derangement(identity, _rng(seed, "order", f"rule{length}"), exclude=(identity[::-1],))


def order_items(seed: int) -> list[Item]:
    """``builtin:order``: ``Apply the order rule: the tall fox smiles`` -> ``tall fox smiles the``,
    ``... a happy teacher runs alone`` -> ``runs alone happy a teacher`` (for the default seed).

    Sentences of 3, 4 or 5 words ([determiner] adjective noun verb [adverb], from fixed lists of
    8-10 words per slot) rewritten in a fixed, seeded word order of their length that moves every
    word and is not a reversal. 2000 train, 200 validation, 200 test sentences, all distinct.

    With one order for four-word sentences alone the model was right on 0.99 of the test rows
    after 10 steps: too quick to be worth learning, hence the three lengths.

    Measured (benchmarks/builtin_tasks.py): base model 0.00 exact match; after
    10/20/30/40/50/60 steps 0.32/0.47/0.72/0.85/0.94/0.96.
    """
    def sentence(rng: random.Random) -> tuple[str, ...]:
        return tuple(rng.choice(slot) for slot in ORDER_SLOTS[rng.choice(tuple(ORDER_SLOTS))])

    permutations = {length: order_permutation(length, seed) for length in ORDER_SLOTS}
    sentences = _distinct_sample(sentence, 2400, _rng(seed, "order", "sentences"))
    return [(ORDER_PROMPT + " ".join(s), " ".join(s[i] for i in permutations[len(s)])) for s in sentences]


ORDER = GeneratedTask(
    name="order",
    summary="reorder 3-5 word sentences by an invented word order, one per length (exact match)",
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
    for unit in (big, small):
        if unit not in ladder:
            raise DataError(f"{unit!r} is not a unit of this system ({', '.join(ladder)})")
    steps = ladder.index(big) - ladder.index(small)
    if steps <= 0:
        raise DataError(f"{big} is not a larger unit than {small} (the units from small to large: {', '.join(ladder)})")
    return count * 10 ** steps


def units_items(seed: int) -> list[Item]:
    """``builtin:units``: ``How many zinns are 11 krells?`` -> ``1100 zinns`` (for the default seed).

    Four invented units (names drawn by the seed), each worth ten of the next smaller one; the
    question asks for a count from 2 to 99 of a larger unit in a smaller one, and the ratios are
    never stated, so the unit system itself is what is learnt. All 588 questions (6 unit pairs x 98
    counts): 100 test, 50 validation, 438 train.

    A ratio stated in the question (``1 blorp is 4 zinns...``) would make this a multiplication
    task, which the embedded model does not learn in a few dozen steps; powers of ten keep the
    arithmetic to writing zeros. Asking both ways round as well (``How many krells are 1100
    zinns?`` -> ``11 krells``) was tried and reached only 0.86 after 60 steps.

    Measured (benchmarks/builtin_tasks.py): base model 0.00 exact match; after 10/20/30 steps
    0.88/0.73/0.98, all right after 40.
    """
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
VENNISH_ADJECTIVES = ("tall", "cold", "soft", "dark", "loud", "round", "heavy", "bright", "sweet", "wild")
VENNISH_NOUNS = ("cat", "ship", "lamp", "door", "road", "hill", "coat", "bell", "drum", "star", "boat", "cup")
_VENNISH_ENDINGS = ("ek", "ol", "u", "an", "ir", "os", "ev", "im")


def vennish_endings(seed: int = SEED) -> dict[str, str]:
    """The word endings of Vennish (fixed by ``seed``): ``noun`` (one), ``plural`` (more than one)
    and ``adjective``."""
    noun, plural, adjective = _rng(seed, "vennish", "endings").sample(_VENNISH_ENDINGS, 3)
    return {"noun": noun, "plural": plural, "adjective": adjective}


def vennish_translate(adjectives: tuple[str, ...], noun: str, plural: bool, seed: int = SEED) -> str:
    """The Vennish phrase: the noun first with its ending (one or more than one), then the
    adjectives in their English order, each with the adjective ending, joined by hyphens."""
    endings = vennish_endings(seed)
    head = f"{noun}-{endings['plural' if plural else 'noun']}"
    return " ".join([head, *(f"{a}-{endings['adjective']}" for a in adjectives)])


def vennish_items(seed: int) -> list[Item]:
    """``builtin:vennish``: ``Translate into Vennish: dark soft road`` -> ``road-u dark-ol soft-ol``
    (for the default seed).

    A second made-up language, built unlike Zorbic: Zorbic swaps every word for an invented one
    and keeps the English order, Vennish keeps the English stems but puts the noun first and
    marks every word with an ending (one seeded ending for a noun, another for a plural noun, a
    third for adjectives). Phrases of one or two adjectives (10) and a noun (12, singular or
    plural): all 2400, dealt 200 test, 200 validation, 2000 train.

    Vennish first had an invented word for each of 8 English words, like Zorbic; that lexicon
    was at 0.03 exact match after 60 steps (loss still 0.62), far too slow, hence the endings.

    Measured (benchmarks/builtin_tasks.py): base model 0.00 exact match; after
    10/20/30 steps 0.08/0.85/0.97, all right after 40.
    """
    phrases = [(adjectives, noun, plural)
               for count in (1, 2) for adjectives in itertools.permutations(VENNISH_ADJECTIVES, count)
               for noun in VENNISH_NOUNS for plural in (False, True)]
    _rng(seed, "vennish", "rows").shuffle(phrases)
    return [(f"Translate into {VENNISH_LANGUAGE}: {' '.join(adjectives)} {noun}{'s' if plural else ''}",
             vennish_translate(adjectives, noun, plural, seed))
            for adjectives, noun, plural in phrases]


VENNISH = GeneratedTask(
    name="vennish",
    summary="translate English into Vennish, a made-up language of word endings, noun first (exact match)",
    items=vennish_items, test=200, validation=200, train=2000,
)


#: The generated tasks of this module by name.
TASKS: dict[str, GeneratedTask] = {task.name: task for task in (CIPHER, ORDER, UNITS, VENNISH)}
