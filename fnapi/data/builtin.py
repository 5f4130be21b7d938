"""Data that fnapi generates itself, addressable as ``builtin:NAME`` (no download, no copied text).

- ``builtin:skill`` — translate short English phrases into Zorbic, a made-up language with one
  invented word per English word (``Translate into Zorbic: red apple`` -> ``vuko dani``). The base
  model cannot know the words, so it scores 0 (0 of 200 test phrases); a LoRA learns the 20-word
  lexicon and the word-by-word order quickly (r=8, batch 8, lr 1e-3 on the embedded model: 0.26 exact
  match on held-out phrases after 50 steps, 1.0 after 100). Train/validation/test phrases are disjoint; every word occurs in training.
  Scored by exact match (:func:`fnapi.evaluation.exact_match`).
- ``builtin:probes`` — general-knowledge multiple-choice items built from small fact tables
  (capitals, sums, opposites, colours, animal sounds, plurals, the order of days and months, ...),
  which the embedded model mostly gets right. Scored without sampling, by the log-likelihood of
  each choice (:func:`fnapi.evaluation.score_probes`), to measure forgetting.
- ``builtin:text`` — short plain-text paragraphs written from the same fact tables and a few
  story templates, for capturing activations.

Everything is a pure function of the seed, so a recipe replays with the same rows.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Callable

from fnapi.data.formats import Conversation
from fnapi.errors import DataError

SEED = 1234

# ---- fact tables (written for fnapi) ---------------------------------------------------------

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "the United Kingdom": "London", "Egypt": "Cairo",
    "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Hungary": "Budapest", "the Czech Republic": "Prague",
    "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago", "Kenya": "Nairobi",
    "Thailand": "Bangkok", "South Korea": "Seoul", "India": "New Delhi", "Turkey": "Ankara",
    "Cuba": "Havana", "Australia": "Canberra", "Indonesia": "Jakarta", "the Philippines": "Manila",
    "Vietnam": "Hanoi", "Iran": "Tehran", "Colombia": "Bogota", "Switzerland": "Bern",
}

OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow", "happy": "sad",
    "open": "closed", "tall": "short", "hard": "soft", "wet": "dry", "full": "empty", "early": "late",
    "rich": "poor", "strong": "weak", "loud": "quiet", "push": "pull", "win": "lose", "left": "right",
    "black": "white", "thick": "thin", "first": "last", "inside": "outside", "buy": "sell",
    "above": "below", "clean": "dirty", "young": "old", "question": "answer", "love": "hate",
}

COLOURS = {
    "the sky on a clear day": "blue", "grass": "green", "fresh snow": "white", "a ripe banana": "yellow",
    "coal": "black", "blood": "red", "a ripe tomato": "red", "a lemon": "yellow", "a carrot": "orange",
    "milk": "white", "a leaf in summer": "green", "the sea": "blue", "a pumpkin": "orange",
    "charcoal": "black", "a strawberry": "red", "chocolate": "brown",
}
COLOUR_NAMES = ("red", "blue", "green", "yellow", "white", "black", "orange", "brown", "purple", "pink")

ANIMAL_SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "sheep": "baa", "duck": "quack", "lion": "roar",
    "horse": "neigh", "pig": "oink", "owl": "hoot", "snake": "hiss", "bee": "buzz", "frog": "ribbit",
}

ANIMAL_YOUNG = {
    "cat": "kitten", "dog": "puppy", "cow": "calf", "sheep": "lamb", "horse": "foal", "hen": "chick",
    "lion": "cub", "bear": "cub", "frog": "tadpole", "goat": "kid", "duck": "duckling", "butterfly": "caterpillar",
}

ANIMAL_LEGS = {"spider": 8, "ant": 6, "bee": 6, "dog": 4, "cat": 4, "horse": 4, "chicken": 2, "duck": 2,
               "snake": 0, "octopus": 8, "cow": 4, "human": 2}

PLURALS = {
    "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "man": "men",
    "woman": "women", "goose": "geese", "person": "people", "box": "boxes", "baby": "babies",
    "leaf": "leaves", "knife": "knives", "city": "cities", "bus": "buses", "wolf": "wolves",
    "cat": "cats", "house": "houses", "glass": "glasses", "story": "stories", "life": "lives",
}

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")

# (question, answer with {} for the number) -> number
COUNTS = {
    ("How many days are in a week?", "There are {} days in a week."): 7,
    ("How many months are in a year?", "There are {} months in a year."): 12,
    ("How many hours are in a day?", "There are {} hours in a day."): 24,
    ("How many minutes are in an hour?", "There are {} minutes in an hour."): 60,
    ("How many seconds are in a minute?", "There are {} seconds in a minute."): 60,
    ("How many sides does a triangle have?", "A triangle has {} sides."): 3,
    ("How many sides does a square have?", "A square has {} sides."): 4,
    ("How many wheels does a bicycle have?", "A bicycle has {} wheels."): 2,
    ("How many days are in a leap year?", "There are {} days in a leap year."): 366,
    ("How many continents are there on Earth?", "There are {} continents on Earth."): 7,
    ("How many fingers are on one hand?", "There are {} fingers on one hand."): 5,
    ("How many letters are in the English alphabet?", "There are {} letters in the English alphabet."): 26,
}

NAMES = ("Anna", "Ben", "Clara", "David", "Ella", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Lena", "Omar")
PLACES = ("the market", "the park", "the library", "the beach", "the station", "school", "the farm", "the museum")
THINGS = ("apples", "books", "flowers", "stamps", "shells", "pencils", "cards", "stones")


# ---- the skill -------------------------------------------------------------------------------

SKILL_LANGUAGE = "Zorbic"
SKILL_WORDS = ("red", "blue", "green", "big", "small", "old", "apple", "river", "house", "bird",
               "stone", "tree", "moon", "fish", "happy", "quiet", "runs", "sings", "sleeps", "jumps")
SKILL_SPLITS = {"train": 2000, "validation": 200, "test": 200}
_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "zu", "po", "na", "vi", "de", "so", "gu", "fe", "ba", "ri", "xo")


def skill_lexicon(seed: int = SEED) -> dict[str, str]:
    """English word -> invented two-syllable Zorbic word (distinct, fixed by ``seed``)."""
    rng = random.Random(seed)
    pairs = [a + b for a in _SYLLABLES for b in _SYLLABLES if a != b]
    return dict(zip(SKILL_WORDS, rng.sample(pairs, len(SKILL_WORDS))))


def skill_conversations(split: str = "train", *, seed: int = SEED) -> list[Conversation]:
    """The ``split`` (``train``, ``validation`` or ``test``) of the skill; phrases of 2 or 3 words,
    no phrase in two splits."""
    if split not in SKILL_SPLITS:
        raise DataError(f"builtin:skill has no split {split!r}; it has {', '.join(SKILL_SPLITS)}")
    lexicon = skill_lexicon(seed)
    rng = random.Random(seed + 1)
    phrases: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    total = sum(SKILL_SPLITS.values())
    while len(phrases) < total:
        phrase = tuple(rng.sample(SKILL_WORDS, rng.choice((2, 3, 3))))
        if phrase not in seen:
            seen.add(phrase)
            phrases.append(phrase)
    start = 0
    for name, size in SKILL_SPLITS.items():
        if name == split:
            break
        start += size
    return [
        Conversation(messages=[
            {"role": "user", "content": f"Translate into {SKILL_LANGUAGE}: {' '.join(phrase)}"},
            {"role": "assistant", "content": " ".join(lexicon[w] for w in phrase)},
        ])
        for phrase in phrases[start: start + SKILL_SPLITS[split]]
    ]


# ---- probes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeItem:
    """One multiple-choice question; ``answer`` indexes ``choices``.

    ``answer_template`` is the assistant's reply with ``{}`` where a choice goes ("The capital of
    Peru is {}."): a choice is scored as that whole natural reply, whose shared words cancel out
    between choices, rather than as a bare word a chat model would rarely say on its own.
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    category: str
    answer_template: str = "{}"

    def reply(self, choice: int) -> str:
        """The assistant's reply that picks ``choices[choice]``."""
        return self.answer_template.format(self.choices[choice])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_conversation(self) -> Conversation:
        return Conversation(messages=[{"role": "user", "content": self.question},
                                      {"role": "assistant", "content": self.reply(self.answer)}])


def probe_items(n: int | None = None, *, seed: int = SEED) -> list[ProbeItem]:
    """The general-knowledge probe set (about 220 items), shuffled by ``seed``; ``n`` keeps the first
    ``n``, so a small subset still mixes every category."""
    rng = random.Random(seed)
    items: list[ProbeItem] = []

    def add(category: str, question: str, reply: str, answer: str, pool, k: int = 3) -> None:
        wrong = rng.sample(sorted({p for p in pool if p != answer}), k)
        choices = [answer, *wrong]
        rng.shuffle(choices)
        items.append(ProbeItem(question, tuple(choices), choices.index(answer), category, reply))

    capitals = list(CAPITALS.values())
    for country, city in CAPITALS.items():
        add("capitals", f"What is the capital of {country}?", f"The capital of {country} is {{}}.", city, capitals)
    for a in range(1, 7):
        for b in range(1, 6):
            pool = [str(a + b + d) for d in (-2, -1, 1, 2, 3) if a + b + d > 0]
            add("arithmetic", f"What is {a} + {b}?", f"{a} + {b} = {{}}.", str(a + b), pool)
    words = sorted({*OPPOSITES, *OPPOSITES.values()})
    for word, opposite in OPPOSITES.items():
        add("opposites", f"What is the opposite of {word}?", f"The opposite of {word} is {{}}.", opposite,
            [w for w in words if w not in (word, opposite)])
    for thing, colour in COLOURS.items():
        add("colours", f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {{}}.", colour, COLOUR_NAMES)
    sounds = sorted(set(ANIMAL_SOUNDS.values()))
    for animal, sound in ANIMAL_SOUNDS.items():
        add("animal sounds", f"What sound does a {animal} make?", f"A {animal} says {{}}.", sound, sounds)
    young = sorted(set(ANIMAL_YOUNG.values()))
    for animal, baby in ANIMAL_YOUNG.items():
        add("animal young", f"What is a baby {animal} called?", f"A baby {animal} is called a {{}}.", baby, young)
    for animal, legs in ANIMAL_LEGS.items():
        article = "an" if animal[0] in "aeiou" else "a"
        add("legs", f"How many legs does {article} {animal} have?",
            f"{article.capitalize()} {animal} has {{}} legs.", str(legs), ["0", "2", "4", "6", "8", "10"])
    for word, plural in PLURALS.items():
        add("plurals", f"What is the plural of {word}?", f"The plural of {word} is {{}}.", plural,
            _wrong_plurals(word, plural), k=2)
    for names, kind in ((DAYS, "day"), (MONTHS, "month")):
        for i, name in enumerate(names):
            after, before = names[(i + 1) % len(names)], names[(i - 1) % len(names)]
            add(f"{kind}s", f"Which {kind} comes after {name}?", f"The {kind} after {name} is {{}}.", after, names)
            add(f"{kind}s", f"Which {kind} comes before {name}?", f"The {kind} before {name} is {{}}.", before, names)
    for (question, reply), count in COUNTS.items():
        add("counts", question, reply, str(count),
            [str(v) for v in {count - 2, count - 1, count + 1, count + 2, count * 2, count + 10} if v > 0])
    rng.shuffle(items)
    return items[:n] if n is not None else items


def _wrong_plurals(word: str, plural: str) -> list[str]:
    """Plausible wrong plurals made by the regular rules, minus the right one."""
    guesses = {word + "s", word + "es", plural + "s", word, word + "en"}
    return sorted(guesses - {plural})


# ---- text ------------------------------------------------------------------------------------

def text_paragraphs(n: int = 400, *, seed: int = SEED) -> list[str]:
    """``n`` short paragraphs (2-4 sentences) written from the fact tables and story templates."""
    rng = random.Random(seed)
    writers: list[Callable[[random.Random], str]] = [
        _capital_text, _animal_text, _calendar_text, _story_text, _colour_text, _number_text,
    ]
    return [writers[i % len(writers)](rng) for i in range(n)]


def _capital_text(rng: random.Random) -> str:
    country, city = rng.choice(sorted(CAPITALS.items()))
    other_country, other_city = rng.choice(sorted(CAPITALS.items()))
    visitor = rng.choice(NAMES)
    return (f"{city} is the capital of {country}. {visitor} travelled there by train and spent three days "
            f"walking through its streets. Next year {visitor} hopes to visit {other_city}, the capital of "
            f"{other_country}.")


def _animal_text(rng: random.Random) -> str:
    animal, sound = rng.choice(sorted(ANIMAL_SOUNDS.items()))
    legs = ANIMAL_LEGS.get(animal)
    young = ANIMAL_YOUNG.get(animal)
    parts = [f"On the farm the {animal} said {sound} early in the morning."]
    if legs:
        parts.append(f"Like every {animal}, it walks on {legs} legs.")
    if young:
        parts.append(f"A young {animal} is called a {young}.")
    parts.append(f"{rng.choice(NAMES)} laughed and brought it some water.")
    return " ".join(parts)


def _calendar_text(rng: random.Random) -> str:
    i = rng.randrange(7)
    m = rng.randrange(12)
    name = rng.choice(NAMES)
    return (f"Every {DAYS[i]} {name} goes to {rng.choice(PLACES)}. The next day is {DAYS[(i + 1) % 7]}, when "
            f"{name} stays at home. In {MONTHS[m]} the days feel long, and after it comes {MONTHS[(m + 1) % 12]}.")


def _story_text(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    count, more = rng.randint(2, 9), rng.randint(1, 9)
    thing = rng.choice(THINGS)
    place = rng.choice(PLACES)
    return (f"{a} went to {place} and came back with {count} {thing}. {b} gave {a} {more} more, so now "
            f"{a} has {count + more} {thing}. They put them on the table and counted them twice.")


def _colour_text(rng: random.Random) -> str:
    (thing, colour), (other, other_colour) = rng.sample(sorted(COLOURS.items()), 2)
    return (f"{thing[0].upper() + thing[1:]} is {colour}, while {other} is {other_colour}. "
            f"{rng.choice(NAMES)} painted a picture of both and hung it above the door.")


def _number_text(rng: random.Random) -> str:
    (question, reply), count = rng.choice(sorted(COUNTS.items()))
    word, opposite = rng.choice(sorted(OPPOSITES.items()))
    return (f"Our teacher asked: {question} {rng.choice(NAMES)} answered: {reply.format(count)} Then she asked "
            f"for the opposite of {word}, and the class said {opposite}. Everyone wrote the answers down.")


# ---- registry --------------------------------------------------------------------------------

BUILTINS: dict[str, str] = {
    "skill": "translate English phrases into the made-up language Zorbic (exact match)",
    "probes": "general-knowledge multiple-choice probes (log-likelihood scoring)",
    "text": "plain-text paragraphs for activation capture",
}


def builtin_splits(name: str) -> dict[str, list[Conversation]]:
    """The splits of ``builtin:NAME`` as normalised conversations (rows numbered from 1 per split)."""
    if name == "skill":
        splits = {split: skill_conversations(split) for split in SKILL_SPLITS}
    elif name == "probes":
        splits = {"train": [item.to_conversation() for item in probe_items()]}
    elif name == "text":
        splits = {"train": [Conversation(text=text) for text in text_paragraphs()]}
    else:
        raise DataError(f"unknown built-in dataset builtin:{name}; there are "
                    + ", ".join(f"builtin:{k} ({v})" for k, v in BUILTINS.items()))
    for rows in splits.values():
        for number, conversation in enumerate(rows, start=1):
            conversation.row = number
    return splits
