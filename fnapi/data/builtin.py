"""Data that fnapi generates itself, addressable as ``builtin:NAME`` (no download, no copied text).

- ``builtin:skill`` — translate short English phrases into Zorbic, a made-up language with one
  invented word per English word (``Translate into Zorbic: red apple`` -> ``vuko dani``). The base
  model cannot know the words, so it scores 0 (0 of 200 test phrases); a LoRA learns the 20-word
  lexicon and the word-by-word order quickly (r=8, batch 8, lr 1e-3 on the embedded model: 0.26 exact
  match on held-out phrases after 50 steps, 1.0 after 100). Train/validation/test phrases are disjoint; every word occurs in training.
  Scored by exact match (:func:`fnapi.evaluation.exact_match`).
- ``builtin:cipher``, ``builtin:order``, ``builtin:units``, ``builtin:vennish`` — four more
  generated skills, each a different rule the base model cannot apply and a LoRA learns within
  about 40 steps (:mod:`fnapi.data.tasks`). With ``skill`` they are :data:`BUILTIN_TASKS`, the
  trainable built-ins, for training on several tasks in turn (continual learning).
- ``builtin:probes`` — general-knowledge multiple-choice items built from small fact tables
  (capitals, continents, languages, sums and times tables, opposites, synonyms, colours,
  animals, plurals and past tenses, planets, shapes, units, tools, jobs, the order of days and
  months, ...; 865 items in 34 categories), which the embedded model mostly gets right. Scored
  without sampling, by the log-likelihood of each choice (:func:`fnapi.evaluation.score_probes`),
  to measure forgetting.
- ``builtin:text`` — short plain-text paragraphs written from the same fact tables and a few
  story templates, for capturing activations.

Everything is a pure function of the seed, so a recipe replays with the same rows.
"""

from __future__ import annotations

import difflib
import itertools
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fnapi.data.formats import Conversation
from fnapi.data.tasks import SEED, TASKS
from fnapi.errors import DataError

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

# ---- more fact tables for the probes (written for fnapi; the tables above also feed the text) ---

# Extra rows for the first categories, kept apart so the text above and the original items stay as they were.
MORE_COLOURS = {
    "a fire engine": "red", "a crow": "black", "a polar bear": "white", "an orange": "orange",
    "a sunflower": "yellow", "a cucumber": "green", "an aubergine": "purple", "a cup of hot chocolate": "brown",
}
MORE_ANIMAL_SOUNDS = {
    "donkey": "hee-haw", "rooster": "cock-a-doodle-doo", "mouse": "squeak", "wolf": "howl", "crow": "caw",
    "pigeon": "coo", "turkey": "gobble", "hen": "cluck", "chick": "cheep",
}
# animal -> (young, names that would also be right and so never appear as a wrong choice)
MORE_ANIMAL_YOUNG = {
    "kangaroo": ("joey", ()), "pig": ("piglet", ()), "deer": ("fawn", ("calf", "kid")), "tiger": ("cub", ("kitten",)),
    "swan": ("cygnet", ("chick",)), "goose": ("gosling", ("chick",)), "elephant": ("calf", ()),
    "seal": ("pup", ("puppy",)),
}
MORE_ANIMAL_LEGS = {"beetle": 6, "butterfly": 6, "scorpion": 8, "ostrich": 2, "penguin": 2, "elephant": 4,
                    "worm": 0, "fish": 0}
MORE_COUNTS = {
    ("How many planets are in our solar system?", "There are {} planets in our solar system."): 8,
    ("How many colours are in a rainbow?", "There are {} colours in a rainbow."): 7,
    ("How many toes are on one foot?", "There are {} toes on one foot."): 5,
    ("How many players does a football team have on the field?",
     "A football team has {} players on the field."): 11,
    ("How many strings does a standard guitar have?", "A standard guitar has {} strings."): 6,
    ("How many wheels does a tricycle have?", "A tricycle has {} wheels."): 3,
    ("How many wheels does a car have?", "A car has {} wheels."): 4,
    ("How many days are in a weekend?", "There are {} days in a weekend."): 2,
    ("How many arms does a person have?", "A person has {} arms."): 2,
}

CONTINENT_NAMES = ("Africa", "Asia", "Europe", "North America", "South America", "Antarctica")
CONTINENTS = {
    "France": "Europe", "Germany": "Europe", "Italy": "Europe", "Spain": "Europe", "Poland": "Europe",
    "Sweden": "Europe", "Norway": "Europe", "Greece": "Europe", "Japan": "Asia", "China": "Asia", "India": "Asia",
    "Thailand": "Asia", "Vietnam": "Asia", "South Korea": "Asia", "Nepal": "Asia", "Kenya": "Africa",
    "Nigeria": "Africa", "Ghana": "Africa", "Ethiopia": "Africa", "Morocco": "Africa", "South Africa": "Africa",
    "Egypt": "Africa", "Brazil": "South America", "Argentina": "South America", "Peru": "South America",
    "Chile": "South America", "Colombia": "South America", "Venezuela": "South America",
    "Canada": "North America", "Mexico": "North America", "the United States": "North America",
}

LANGUAGES = {
    "France": "French", "Germany": "German", "Italy": "Italian", "Spain": "Spanish", "Portugal": "Portuguese",
    "Brazil": "Portuguese", "Mexico": "Spanish", "Argentina": "Spanish", "Japan": "Japanese", "China": "Chinese",
    "Russia": "Russian", "Greece": "Greek", "Poland": "Polish", "Turkey": "Turkish", "the Netherlands": "Dutch",
    "Sweden": "Swedish", "Norway": "Norwegian", "Denmark": "Danish", "Hungary": "Hungarian",
    "South Korea": "Korean", "Thailand": "Thai", "Vietnam": "Vietnamese", "Egypt": "Arabic",
    "Saudi Arabia": "Arabic", "Iran": "Persian", "Australia": "English", "the United States": "English",
    "the United Kingdom": "English", "Austria": "German", "the Czech Republic": "Czech",
}

CURRENCIES = {
    "Japan": "yen", "the United States": "dollar", "the United Kingdom": "pound", "India": "rupee",
    "China": "yuan", "Russia": "rouble", "Mexico": "peso", "Brazil": "real", "South Africa": "rand",
    "South Korea": "won", "Switzerland": "franc", "Turkey": "lira", "Poland": "zloty", "Thailand": "baht",
    "France": "euro", "Germany": "euro", "Italy": "euro", "Spain": "euro", "Canada": "dollar",
    "Australia": "dollar", "Argentina": "peso", "Vietnam": "dong", "Indonesia": "rupiah", "Israel": "shekel",
}
# Former currencies, never offered as the wrong choice for the country that used them.
CURRENCY_CLASHES = {"Italy": {"lira"}, "France": {"franc"}}

PLANETS = ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
PLANET_FACTS = (
    ("Which planet is the largest in our solar system?", "The largest planet in our solar system is {}.", "Jupiter"),
    ("Which planet is the smallest in our solar system?", "The smallest planet in our solar system is {}.", "Mercury"),
    ("Which planet is known as the Red Planet?", "The planet known as the Red Planet is {}.", "Mars"),
    ("Which planet is the hottest in our solar system?", "The hottest planet in our solar system is {}.", "Venus"),
    ("Which planet do we live on?", "We live on {}.", "Earth"),
    ("Which planet is best known for its bright rings?", "The planet best known for its bright rings is {}.",
     "Saturn"),
)

ELEMENTS = {
    "hydrogen": "H", "helium": "He", "carbon": "C", "nitrogen": "N", "oxygen": "O", "sodium": "Na", "iron": "Fe",
    "gold": "Au", "silver": "Ag", "copper": "Cu", "calcium": "Ca", "potassium": "K", "sulfur": "S",
    "chlorine": "Cl", "lead": "Pb", "zinc": "Zn", "aluminium": "Al", "magnesium": "Mg", "neon": "Ne", "tin": "Sn",
    "mercury": "Hg", "uranium": "U", "phosphorus": "P", "silicon": "Si", "lithium": "Li",
}

# (question, reply with {} for the choice, answer[, choices that would also be right])
BODY = (
    ("Which organ pumps blood around the body?", "Blood is pumped around the body by the {}.", "heart"),
    ("Which organ beats faster when you run?", "When you run, your {} beats faster.", "heart"),
    ("Which organs fill with air when you breathe in?", "When you breathe in, air fills your {}.", "lungs", ("nose",)),
    ("Which organ do you think with?", "You think with your {}.", "brain"),
    ("What do you see with?", "You see with your {}.", "eyes"),
    ("What do you blink?", "You blink your {}.", "eyes"),
    ("What do you hear with?", "You hear with your {}.", "ears"),
    ("What do you smell with?", "You smell with your {}.", "nose"),
    ("What do you taste food with?", "You taste food with your {}.", "tongue"),
    ("Which organ fills up with food when you eat a big meal?", "A big meal fills up your {}.", "stomach"),
    ("Which organs clean the blood and make urine?", "Blood is cleaned and urine is made by the {}.", "kidneys"),
    ("Which bone protects the brain?", "The brain is protected by the {}.", "skull"),
    ("Which organ covers the whole outside of your body?", "The outside of your body is covered by your {}.", "skin",
     ("hair",)),
    ("What does a dentist look after?", "A dentist looks after your {}.", "teeth", ("tongue",)),
    ("Which joint is in the middle of your leg?", "The joint in the middle of your leg is the {}.", "knee"),
    ("Which joint is in the middle of your arm?", "The joint in the middle of your arm is the {}.", "elbow"),
    ("What joins your head to the rest of your body?", "Your head is joined to your body by your {}.", "neck"),
    ("What do you get cut at the hairdresser's?", "At the hairdresser's you get your {} cut.", "hair"),
    ("What do you put your socks on?", "You put your socks on your {}.", "feet"),
    ("Where do you wear a hat?", "You wear a hat on your {}.", "head", ("hair",)),
    ("What do you wear gloves on?", "You wear gloves on your {}.", "hands"),
    ("What do you clap?", "You clap your {}.", "hands"),
    ("What do you shrug?", "You shrug your {}.", "shoulders"),
)

SHAPE_SIDES = {"rectangle": 4, "pentagon": 5, "hexagon": 6, "heptagon": 7, "octagon": 8, "nonagon": 9, "decagon": 10}
SHAPE_CORNERS = {"triangle": 3, "square": 4, "rectangle": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
SOLID_COUNTS = (
    ("How many faces does a cube have?", "A cube has {} faces.", 6),
    ("How many corners does a cube have?", "A cube has {} corners.", 8),
)
SHAPE_NAMES = (
    ("What is a shape with three sides called?", "A shape with three sides is called {}.", "a triangle"),
    ("What is a shape with five sides called?", "A shape with five sides is called {}.", "a pentagon"),
    ("What is a shape with six sides called?", "A shape with six sides is called {}.", "a hexagon"),
    ("What is a shape with eight sides called?", "A shape with eight sides is called {}.", "an octagon"),
    ("What shape is a ball?", "A ball is {}.", "a sphere"),
    ("What shape is a dice?", "A dice is {}.", "a cube"),
    ("What shape is a tin can?", "A tin can is {}.", "a cylinder"),
    ("What shape is a party hat?", "A party hat is {}.", "a cone"),
    ("What shape is a stop sign?", "A stop sign is {}.", "an octagon"),
    ("What flat shape is perfectly round?", "The flat shape that is perfectly round is {}.", "a circle"),
    ("What shape is each face of a cube?", "Each face of a cube is {}.", "a square"),
)

# Numbers for "which is the largest / smallest" questions: each base with each pair of offsets.
COMPARISON_BASES = (3, 7, 12, 19, 26, 34, 45, 58)
COMPARISON_OFFSETS = ((5, 11), (9, 2), (14, 6))

# Each ladder runs from smallest to biggest, with clear gaps between steps.
SIZE_LADDERS = (
    ("an ant", "a mouse", "a cat", "a horse", "an elephant"),
    ("a pea", "an apple", "a football", "a car", "a house", "a mountain"),
    ("the Moon", "the Earth", "the Sun"),
)

SYNONYMS = {
    "big": "large", "small": "little", "happy": "glad", "fast": "quick", "start": "begin", "finish": "end",
    "shut": "close", "clever": "smart", "angry": "mad", "afraid": "scared", "simple": "easy",
    "difficult": "hard", "rich": "wealthy", "jump": "leap", "speak": "talk", "gift": "present", "ill": "sick",
    "shout": "yell", "rush": "hurry", "stone": "rock", "silent": "quiet", "correct": "right",
    "pretty": "beautiful", "tired": "sleepy",
}
# Wrong choices that are close enough in some sense to count as right, so never offered.
SYNONYM_CLASHES = {"finish": {"close"}, "clever": {"quick"}, "ill": {"mad"}, "rush": {"quick"}, "speak": {"yell"}}

# verb -> (past tense, past participle)
IRREGULAR_VERBS = {
    "go": ("went", "gone"), "eat": ("ate", "eaten"), "see": ("saw", "seen"), "run": ("ran", "run"),
    "swim": ("swam", "swum"), "sing": ("sang", "sung"), "write": ("wrote", "written"), "take": ("took", "taken"),
    "give": ("gave", "given"), "come": ("came", "come"), "drink": ("drank", "drunk"), "buy": ("bought", "bought"),
    "think": ("thought", "thought"), "catch": ("caught", "caught"), "teach": ("taught", "taught"),
    "bring": ("brought", "brought"), "sleep": ("slept", "slept"), "draw": ("drew", "drawn"),
    "drive": ("drove", "driven"), "ride": ("rode", "ridden"), "speak": ("spoke", "spoken"),
    "break": ("broke", "broken"), "choose": ("chose", "chosen"), "know": ("knew", "known"),
    "grow": ("grew", "grown"), "throw": ("threw", "thrown"), "begin": ("began", "begun"),
    "tell": ("told", "told"), "find": ("found", "found"), "fall": ("fell", "fallen"),
}

# Words in one group rhyme with each other and with no word of another group.
RHYMES = (
    ("cat", "hat", "bat"), ("dog", "frog", "log"), ("sun", "run", "fun"), ("bed", "red", "head"),
    ("cake", "lake", "snake"), ("book", "look", "cook"), ("ring", "king", "sing"), ("boat", "coat", "goat"),
    ("night", "kite", "light"), ("car", "star", "jar"), ("bell", "shell", "well"), ("mouse", "house"),
    ("fish", "dish"), ("moon", "spoon"),
)

FIRST_LETTER_WORDS = ("apple", "ball", "cat", "dog", "egg", "fish", "goat", "house", "igloo", "jam", "kite",
                      "lion", "moon", "nest", "orange", "pig", "queen", "rabbit", "sun", "tree", "umbrella",
                      "van", "window", "yellow", "zebra")

MATERIALS = (
    ("What is a window pane made of?", "A window pane is made of {}.", "glass"),
    ("What is a mirror made of?", "A mirror is made of {}.", "glass", ("metal",)),
    ("What is the outside of a light bulb made of?", "The outside of a light bulb is made of {}.", "glass",
     ("metal",)),
    ("What is a newspaper printed on?", "A newspaper is printed on {}.", "paper"),
    ("What is an envelope usually made of?", "An envelope is usually made of {}.", "paper"),
    ("What is paper made from?", "Paper is made from {}.", "wood", ("cotton", "paper")),
    ("What is a log cabin built from?", "A log cabin is built from {}.", "wood"),
    ("What is the outside of a pencil usually made of?", "The outside of a pencil is usually made of {}.", "wood"),
    ("What are coins made of?", "Coins are made of {}.", "metal"),
    ("What is a key usually made of?", "A key is usually made of {}.", "metal"),
    ("What are the nails you hit with a hammer made of?", "The nails you hit with a hammer are made of {}.",
     "metal"),
    ("What are railway tracks made of?", "Railway tracks are made of {}.", "metal", ("wood", "stone")),
    ("What are car tyres made of?", "Car tyres are made of {}.", "rubber", ("metal",)),
    ("What is a party balloon usually made of?", "A party balloon is usually made of {}.", "rubber", ("metal",)),
    ("What is a candle made of?", "A candle is made of {}.", "wax"),
    ("What are crayons made of?", "Crayons are made of {}.", "wax"),
    ("What do we get from sheep to make warm jumpers?", "To make warm jumpers we get {} from sheep.", "wool",
     ("leather",)),
    ("What is an igloo built from?", "An igloo is built from {}.", "snow"),
    ("What is a snowman made of?", "A snowman is made of {}.", "snow"),
    ("What are most old castles built from?", "Most old castles are built from {}.", "stone", ("wood", "clay")),
    ("What are bricks made from?", "Bricks are made from {}.", "clay"),
    ("What is a pottery bowl made from?", "A pottery bowl is made from {}.", "clay", ("stone",)),
    ("What is a T-shirt usually made of?", "A T-shirt is usually made of {}.", "cotton", ("wool",)),
    ("What are blue jeans made of?", "Blue jeans are made of {}.", "cotton"),
    ("What material made from animal skin are many shoes and belts made of?", "Many shoes and belts are made of {}.",
     "leather", ("rubber",)),
)

WHICH_ANIMAL = (
    ("Which animal has a long trunk?", "The animal with a long trunk is {}.", "an elephant"),
    ("Which animal has a very long neck?", "The animal with a very long neck is {}.", "a giraffe", ("a camel",)),
    ("Which animal has black and white stripes?", "The animal with black and white stripes is {}.", "a zebra"),
    ("Which animal carries its baby in a pouch?", "The animal that carries its baby in a pouch is {}.",
     "a kangaroo"),
    ("Which animal has a hump and lives in the desert?", "The animal with a hump that lives in the desert is {}.",
     "a camel"),
    ("Which bird cannot fly and lives near the South Pole?", "The bird that cannot fly and lives near the South "
     "Pole is {}.", "a penguin"),
    ("Which is the fastest land animal?", "The fastest land animal is {}.", "a cheetah"),
    ("Which animal has eight arms?", "The animal with eight arms is {}.", "an octopus"),
    ("Which insect makes honey?", "The insect that makes honey is {}.", "a bee"),
    ("Which animal spins a web?", "The animal that spins a web is {}.", "a spider"),
    ("Which bird hoots at night?", "The bird that hoots at night is {}.", "an owl"),
    ("Which animal sleeps hanging upside down?", "The animal that sleeps hanging upside down is {}.", "a bat"),
    ("Which animal is called the king of the jungle?", "The animal called the king of the jungle is {}.", "a lion"),
    ("Which is the largest animal on Earth?", "The largest animal on Earth is {}.", "a blue whale"),
    ("Which animal has a hard shell and moves very slowly?", "The animal with a hard shell that moves very slowly "
     "is {}.", "a tortoise"),
    ("Which black and white animal eats bamboo?", "The black and white animal that eats bamboo is {}.", "a panda"),
    ("Which animal swings through the trees with its long arms?", "The animal that swings through the trees is {}.",
     "a monkey"),
    ("Which small animal with long ears lives in a burrow?", "The small animal with long ears that lives in a "
     "burrow is {}.", "a rabbit"),
    ("Which animal is called man's best friend?", "The animal called man's best friend is {}.", "a dog"),
    ("Which pet purrs when it is happy?", "The pet that purrs when it is happy is {}.", "a cat", ("a cheetah",)),
    ("Which farm animal rolls in the mud and says oink?", "The farm animal that rolls in the mud and says oink is {}.",
     "a pig"),
    ("Which farm animal gives us most of our milk?", "The farm animal that gives us most of our milk is {}.",
     "a cow", ("a camel",)),
    ("Which bird can copy the words people say?", "The bird that can copy the words people say is {}.", "a parrot"),
)

# (question, reply, answer, the wrong choices): what animals eat and where they live.
ANIMAL_LIFE = (
    ("What does a panda mostly eat?", "A panda mostly eats {}.", "bamboo", ("fish", "nuts", "nectar")),
    ("What does a koala eat?", "A koala eats {}.", "eucalyptus leaves", ("fish", "nuts", "insects")),
    ("What does a cow eat in the field?", "In the field a cow eats {}.", "grass", ("fish", "nectar", "insects")),
    ("What does a rabbit nibble in the meadow?", "In the meadow a rabbit nibbles {}.", "grass",
     ("fish", "meat", "seals")),
    ("What does a penguin catch and eat?", "A penguin catches and eats {}.", "fish", ("grass", "bamboo", "nuts")),
    ("What does a squirrel gather and bury?", "A squirrel gathers and buries {}.", "nuts", ("fish", "grass", "bamboo")),
    ("What sweet liquid do bees collect from flowers?", "Bees collect {} from flowers.", "nectar",
     ("milk", "vinegar", "oil")),
    ("What does an anteater eat?", "An anteater eats {}.", "ants", ("grass", "bamboo", "nuts")),
    ("What does a spider catch in its web?", "A spider catches {} in its web.", "insects", ("grass", "nuts", "bamboo")),
    ("What does a polar bear hunt?", "A polar bear hunts {}.", "seals", ("bamboo", "nuts", "grass")),
    ("What does a frog catch with its long tongue?", "A frog catches {} with its long tongue.", "flies",
     ("nuts", "bamboo", "grass")),
    ("What does a lion eat?", "A lion eats {}.", "meat", ("grass", "bamboo", "nuts")),
    ("What do hens peck at on the ground?", "Hens peck at {} on the ground.", "seeds", ("bamboo", "nectar", "seals")),
    ("Where does a honeybee live?", "A honeybee lives in a {}.", "hive", ("stable", "kennel", "web")),
    ("What does a bird build to lay its eggs in?", "A bird builds a {} to lay its eggs in.", "nest",
     ("hive", "kennel", "stable")),
    ("What is a dog's little house in the garden called?", "A dog's little house in the garden is called a {}.",
     "kennel", ("hive", "web", "burrow")),
    ("Where does a horse live on a farm?", "On a farm a horse lives in a {}.", "stable", ("hive", "web", "burrow")),
    ("Where does a pig live on a farm?", "On a farm a pig lives in a {}.", "sty", ("hive", "web", "nest")),
    ("What does a spider spin to catch its food?", "A spider spins a {} to catch its food.", "web",
     ("hive", "nest", "stable")),
    ("What does a rabbit dig to live in?", "A rabbit digs a {} to live in.", "burrow", ("hive", "web", "stable")),
    ("Where does a fox live?", "A fox lives in a {}.", "den", ("hive", "web", "stable")),
    ("Where do hens sleep at night?", "At night hens sleep in a {}.", "coop", ("hive", "web", "kennel")),
    ("What does a beaver build across a river?", "A beaver builds a {} across the river.", "dam",
     ("hive", "web", "kennel")),
)

FRUITS = ("an apple", "a banana", "an orange", "a pear", "a grape", "a cherry", "a strawberry", "a peach",
          "a mango", "a pineapple", "a plum", "a lemon", "a watermelon")
VEGETABLES = ("a carrot", "a potato", "an onion", "a cabbage", "a lettuce", "a leek", "a turnip", "a cauliflower",
              "a parsnip", "a radish", "a Brussels sprout", "a beetroot")

OCCUPATIONS = (
    ("Who flies a plane?", "{} flies a plane.", "A pilot"),
    ("Who teaches children at school?", "{} teaches children at school.", "A teacher"),
    ("Who grows crops and keeps animals on a farm?", "{} grows crops and keeps animals on a farm.", "A farmer"),
    ("Who cooks the food in a restaurant kitchen?", "{} cooks the food in a restaurant kitchen.", "A chef"),
    ("Who puts out fires?", "{} puts out fires.", "A firefighter"),
    ("Who looks after your teeth?", "{} looks after your teeth.", "A dentist"),
    ("Who bakes bread to sell in a shop?", "{} bakes bread to sell in a shop.", "A baker", ("A chef",)),
    ("Who delivers letters to your house?", "{} delivers letters to your house.", "A postman"),
    ("Who catches criminals and keeps the streets safe?", "{} catches criminals and keeps the streets safe.",
     "A police officer"),
    ("Who treats sick people and writes prescriptions?", "{} treats sick people and writes prescriptions.",
     "A doctor"),
    ("Who cuts and styles hair?", "{} cuts and styles hair.", "A hairdresser"),
    ("Who repairs cars in a garage?", "{} repairs cars in a garage.", "A mechanic"),
    ("Who treats sick animals?", "{} treats sick animals.", "A vet", ("A farmer",)),
    ("Who drives a bus?", "{} drives a bus.", "A bus driver"),
    ("Who draws the plans for new buildings?", "{} draws the plans for new buildings.", "An architect"),
    ("Who builds walls with bricks?", "{} builds walls with bricks.", "A builder"),
    ("Who sells meat in a shop?", "{} sells meat in a shop.", "A butcher"),
    ("Who writes books?", "{} writes books.", "An author"),
    ("Who paints pictures?", "{} paints pictures.", "An artist"),
    ("Who looks after the books in a library?", "{} looks after the books in a library.", "A librarian"),
    ("Who fixes leaking water pipes?", "{} fixes leaking water pipes.", "A plumber"),
    ("Who fixes electric wires and lights?", "{} fixes electric wires and lights.", "An electrician"),
    ("Who travels into space in a rocket?", "{} travels into space in a rocket.", "An astronaut", ("A pilot",)),
    ("Who acts in films and plays?", "{} acts in films and plays.", "An actor"),
    ("Who catches fish for a living?", "{} catches fish for a living.", "A fisherman"),
    ("Who looks after gardens for other people?", "{} looks after gardens for other people.", "A gardener"),
    ("Who plays music on a stage?", "{} plays music on a stage.", "A musician"),
)

TOOLS = (
    ("What do you use to cut paper?", "You cut paper with {}.", "scissors"),
    ("What do you use to hit a nail into wood?", "You hit a nail into wood with {}.", "a hammer"),
    ("What do you use to cut a plank of wood?", "You cut a plank of wood with {}.", "a saw"),
    ("What do you use to dig a hole in the garden?", "You dig a hole in the garden with {}.", "a spade"),
    ("What do you use to sew on a button?", "You sew on a button with {}.", "a needle"),
    ("What do you use to sweep the floor?", "You sweep the floor with {}.", "a broom"),
    ("What do you use to measure how long something is?", "You measure how long something is with {}.", "a ruler"),
    ("What do you use to open a locked door?", "You open a locked door with {}.", "a key"),
    ("What do you use to keep dry in the rain?", "You keep dry in the rain with {}.", "an umbrella"),
    ("What do you use to brush your teeth?", "You brush your teeth with {}.", "a toothbrush"),
    ("What do you use to tidy your hair?", "You tidy your hair with {}.", "a comb"),
    ("What do you use to paint a picture?", "You paint a picture with {}.", "a paintbrush"),
    ("What do you use to turn a screw?", "You turn a screw with {}.", "a screwdriver"),
    ("What do you use to reach a high roof?", "You reach a high roof with {}.", "a ladder"),
    ("What do you use to write a letter in ink?", "You write a letter in ink with {}.", "a pen"),
    ("What do you use to look at faraway stars?", "You look at faraway stars with {}.", "a telescope"),
    ("What do you use to tell the time?", "You tell the time with {}.", "a clock"),
    ("What do you use to eat soup?", "You eat soup with {}.", "a spoon"),
    ("What do you use to boil water for tea?", "You boil water for tea in {}.", "a kettle"),
    ("What do you use to take a photo?", "You take a photo with {}.", "a camera"),
    ("What do you use to rub out a pencil mistake?", "You rub out a pencil mistake with {}.", "an eraser"),
    ("What do you use to water the plants?", "You water the plants with {}.", "a watering can"),
    ("What do you use to find which way is north?", "You find which way is north with {}.", "a compass"),
    ("What do you use to cut the grass?", "You cut the grass with {}.", "a lawnmower", ("scissors",)),
    ("What do you use to measure how hot it is?", "You measure how hot it is with {}.", "a thermometer"),
)

SEASONS = ("spring", "summer", "autumn", "winter")
SEASON_FACTS = (
    ("Which season is usually the hottest?", "The hottest season is usually {}.", "summer"),
    ("Which season is usually the coldest?", "The coldest season is usually {}.", "winter"),
    ("In which season do leaves fall from the trees?", "Leaves fall from the trees in {}.", "autumn"),
    ("In which season do many flowers begin to bloom?", "Many flowers begin to bloom in {}.", "spring"),
    ("In which season do children build snowmen?", "Children build snowmen in {}.", "winter"),
    ("In which season do people go to the beach to swim?", "People go to the beach to swim in {}.", "summer"),
)
WEATHER = (
    ("What falls from the sky as white flakes when it is very cold?",
     "The white flakes that fall from the sky when it is very cold are {}.", "snow"),
    ("What loud sound follows a flash of lightning?", "The loud sound that follows a flash of lightning is {}.",
     "thunder"),
    ("What bright flash of light can you see in a storm?", "The bright flash of light you see in a storm is {}.",
     "lightning"),
    ("What coloured arc can appear in the sky when the sun shines during rain?",
     "The coloured arc in the sky when the sun shines during rain is {}.", "a rainbow"),
    ("What thick cloud near the ground makes it hard to see?",
     "The thick cloud near the ground that makes it hard to see is {}.", "fog"),
    ("What does water turn into when it freezes?", "When water freezes it turns into {}.", "ice", ("snow", "hail")),
    ("What are small balls of ice that fall from the sky called?",
     "Small balls of ice that fall from the sky are called {}.", "hail", ("ice",)),
    ("What spinning column of wind can destroy houses?", "The spinning column of wind that can destroy houses is {}.",
     "a tornado"),
    ("What is a long time without any rain called?", "A long time without any rain is called {}.", "a drought"),
    ("What is it called when a river overflows and covers the land?",
     "When a river overflows and covers the land it is called {}.", "a flood"),
    ("What moving air makes a kite fly?", "The moving air that makes a kite fly is {}.", "wind"),
)

# (question, reply with {} for the number) -> number
UNITS = {
    ("How many centimetres are in a metre?", "There are {} centimetres in a metre."): 100,
    ("How many millimetres are in a centimetre?", "There are {} millimetres in a centimetre."): 10,
    ("How many metres are in a kilometre?", "There are {} metres in a kilometre."): 1000,
    ("How many grams are in a kilogram?", "There are {} grams in a kilogram."): 1000,
    ("How many millilitres are in a litre?", "There are {} millilitres in a litre."): 1000,
    ("How many minutes are in half an hour?", "There are {} minutes in half an hour."): 30,
    ("How many minutes are in a quarter of an hour?", "There are {} minutes in a quarter of an hour."): 15,
    ("How many minutes are in two hours?", "There are {} minutes in two hours."): 120,
    ("How many seconds are in an hour?", "There are {} seconds in an hour."): 3600,
    ("How many hours are in two days?", "There are {} hours in two days."): 48,
    ("How many hours are in half a day?", "There are {} hours in half a day."): 12,
    ("How many days are in two weeks?", "There are {} days in two weeks."): 14,
    ("How many days are in September?", "There are {} days in September."): 30,
    ("How many days are in a year that is not a leap year?", "There are {} days in a year that is not a leap year."):
        365,
    ("How many weeks are in a year?", "There are {} weeks in a year."): 52,
    ("How many months are in half a year?", "There are {} months in half a year."): 6,
    ("How many months are in two years?", "There are {} months in two years."): 24,
    ("How many years are in a decade?", "There are {} years in a decade."): 10,
    ("How many years are in a century?", "There are {} years in a century."): 100,
    ("How many years are in a millennium?", "There are {} years in a millennium."): 1000,
    ("How many eggs are in a dozen?", "There are {} eggs in a dozen."): 12,
    ("How many socks are in a pair?", "There are {} socks in a pair."): 2,
    ("How many cents are in a dollar?", "There are {} cents in a dollar."): 100,
    ("How many inches are in a foot?", "There are {} inches in a foot."): 12,
    ("How many feet are in a yard?", "There are {} feet in a yard."): 3,
}


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
    """The general-knowledge probe set: 865 items in 34 categories of 20 to 40 items each (see
    :func:`probe_categories`), all generated from the fact tables above.

    ``seed`` draws the wrong choices and their order, shuffles each category, and orders the
    categories; the items are then dealt round-robin, one from each category in turn, so ``n`` (which
    keeps the first ``n``) gives as even a mix as possible, and any ``n`` of at least the number of
    categories holds every category.
    """
    rng = random.Random(seed)
    items: list[ProbeItem] = []

    def add(category: str, question: str, reply: str, answer: str, pool, k: int = 3) -> None:
        wrong = rng.sample(sorted({p for p in pool if p != answer}), k)
        choices = [answer, *wrong]
        rng.shuffle(choices)
        items.append(ProbeItem(question, tuple(choices), choices.index(answer), category, reply))

    # The original categories, drawn in their original order (so their items keep their choices).
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

    def facts(category: str, table, k: int = 3) -> None:
        """Rows of (question, reply, answer[, right-ish choices never offered]); the wrong choices come
        from the table's other answers."""
        answers = {row[2] for row in table}
        for question, reply, answer, *clashes in table:
            add(category, question, reply, answer, answers - set(clashes[0] if clashes else ()), k)

    def listed(category: str, question: str, reply: str, answer: str, pool, k: int = 2) -> None:
        """Like ``add``, for a question that lists its choices ("..., ... or ...?") in their order."""
        wrong = rng.sample(sorted({p for p in pool if p != answer}), k)
        choices = [answer, *wrong]
        rng.shuffle(choices)
        options = ", ".join(choices[:-1]) + " or " + choices[-1]
        items.append(ProbeItem(question.format(options), tuple(choices), choices.index(answer), category, reply))

    # More rows for the original categories that had fewer than 20.
    for thing, colour in MORE_COLOURS.items():
        add("colours", f"What colour is {thing}?", f"{_cap(thing)} is {{}}.", colour, COLOUR_NAMES)
    sounds = sorted({*ANIMAL_SOUNDS.values(), *MORE_ANIMAL_SOUNDS.values()})
    for animal, sound in MORE_ANIMAL_SOUNDS.items():
        add("animal sounds", f"What sound does {_a(animal)} {animal} make?", f"{_cap(_a(animal))} {animal} says {{}}.",
            sound, sounds)
    young = sorted({*ANIMAL_YOUNG.values(), *(baby for baby, _ in MORE_ANIMAL_YOUNG.values())})
    for animal, (baby, clashes) in MORE_ANIMAL_YOUNG.items():
        add("animal young", f"What is a baby {animal} called?", f"A baby {animal} is called a {{}}.", baby,
            [y for y in young if y not in clashes])
    for animal, legs in MORE_ANIMAL_LEGS.items():
        add("legs", f"How many legs does {_a(animal)} {animal} have?", f"{_cap(_a(animal))} {animal} has {{}} legs.",
            str(legs), ["0", "2", "4", "6", "8", "10"])
    for i, day in enumerate(DAYS):
        add("days", f"Which day comes two days after {day}?", f"Two days after {day} comes {{}}.", DAYS[(i + 2) % 7],
            DAYS)
    for (question, reply), count in MORE_COUNTS.items():
        add("counts", question, reply, str(count),
            [str(v) for v in {count - 2, count - 1, count + 1, count + 2, count * 2, count + 10} if v > 0])

    # The categories added later.
    for country, continent in CONTINENTS.items():
        add("continents", f"Which continent is {country} in?", f"{_cap(country)} is in {{}}.", continent,
            CONTINENT_NAMES)
    languages = set(LANGUAGES.values())
    for country, language in LANGUAGES.items():
        add("languages", f"What language do most people in {country} speak?",
            f"Most people in {country} speak {{}}.", language, languages)
    currencies = set(CURRENCIES.values())
    for country, currency in CURRENCIES.items():
        add("currencies", f"What is the currency of {country}?", f"The currency of {country} is the {{}}.",
            currency, currencies - CURRENCY_CLASHES.get(country, set()))
    for i, planet in enumerate(PLANETS):
        add("planets", f"Which planet is the {ORDINALS[i]} from the Sun?",
            f"The {ORDINALS[i]} planet from the Sun is {{}}.", planet, PLANETS)
        if i + 1 < len(PLANETS):
            add("planets", f"Counting out from the Sun, which planet comes just after {planet}?",
                f"Just after {planet} comes {{}}.", PLANETS[i + 1], PLANETS)
        if i > 0:
            add("planets", f"Counting out from the Sun, which planet comes just before {planet}?",
                f"Just before {planet} comes {{}}.", PLANETS[i - 1], PLANETS)
    for question, reply, planet in PLANET_FACTS:
        add("planets", question, reply, planet, PLANETS)
    symbols = set(ELEMENTS.values())
    for element, symbol in ELEMENTS.items():
        add("chemical symbols", f"What is the chemical symbol for {element}?",
            f"The chemical symbol for {element} is {{}}.", symbol, symbols)
    facts("body", BODY)
    numbers = [str(v) for v in range(3, 11)]
    for shape, sides in SHAPE_SIDES.items():
        add("shapes", f"How many sides does {_a(shape)} {shape} have?", f"{_cap(_a(shape))} {shape} has {{}} sides.",
            str(sides), numbers)
    for shape, corners in SHAPE_CORNERS.items():
        add("shapes", f"How many corners does {_a(shape)} {shape} have?",
            f"{_cap(_a(shape))} {shape} has {{}} corners.", str(corners), numbers)
    for question, reply, count in SOLID_COUNTS:
        add("shapes", question, reply, str(count), numbers)
    facts("shapes", SHAPE_NAMES)
    for a in range(2, 7):
        for b in range(2, 7):
            p = a * b
            add("multiplication", f"What is {a} times {b}?", f"{a} times {b} is {{}}.", str(p),
                [str(v) for v in {p - a, p + a, p - b, p + b, p - 1, p + 1} if v > 0])
    for a in range(5, 11):
        for b in range(1, 5):
            add("subtraction", f"What is {a} - {b}?", f"{a} - {b} = {{}}.", str(a - b),
                [str(a - b + d) for d in (-2, -1, 1, 2, 3) if a - b + d > 0])
    for i, base in enumerate(COMPARISON_BASES):
        for j, (x, y) in enumerate(COMPARISON_OFFSETS):
            triple = (base, base + x, base + y)
            word, pick = ("largest", max) if (i + j) % 2 == 0 else ("smallest", min)
            listed("number comparisons", f"Which number is the {word}: {{}}?", f"The {word} number is {{}}.",
                   str(pick(triple)), [str(v) for v in triple])
    turn = 0
    for ladder in SIZE_LADDERS:
        for triple in itertools.combinations(ladder, 3):  # in ladder order: smallest first
            word, answer = ("biggest", triple[-1]) if turn % 2 == 0 else ("smallest", triple[0])
            turn += 1
            listed("sizes", f"Which is the {word}: {{}}?", f"Of these, {{}} is the {word}.", answer, triple)
    synonyms = set(SYNONYMS.values())
    for word, synonym in SYNONYMS.items():
        add("synonyms", f"What is another word for {word}?", f"Another word for {word} is {{}}.", synonym,
            synonyms - SYNONYM_CLASHES.get(word, set()))
    for verb, (past, participle) in IRREGULAR_VERBS.items():
        add("past tense", f"What is the past tense of {verb}?", f"The past tense of {verb} is {{}}.", past,
            _wrong_pasts(verb, past, participle), k=2)
    for g, group in enumerate(RHYMES):
        others = [w for h, other in enumerate(RHYMES) if h != g for w in other]
        for i, word in enumerate(group[:2]):
            add("rhymes", f"Which word rhymes with {word}?", f"{_cap(word)} rhymes with {{}}.",
                group[(i + 1) % len(group)], others)
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    for word in FIRST_LETTER_WORDS:
        add("first letters", f"What letter does the word {word} start with?",
            f"The word {word} starts with the letter {{}}.", word[0].upper(), letters)
    facts("materials", MATERIALS)
    facts("which animal", WHICH_ANIMAL)
    for question, reply, answer, wrong in ANIMAL_LIFE:
        add("animal life", question, reply, answer, wrong)
    for kind, right, wrong in (("fruit", FRUITS, VEGETABLES), ("vegetable", VEGETABLES, FRUITS)):
        for answer in right:
            listed("fruits and vegetables", f"Which of these is a {kind}: {{}}?", f"Of these, {{}} is a {kind}.",
                   answer, wrong + (answer,))
    facts("occupations", OCCUPATIONS)
    facts("tools", TOOLS)
    for i, season in enumerate(SEASONS):
        add("weather and seasons", f"Which season comes after {season}?", f"The season after {season} is {{}}.",
            SEASONS[(i + 1) % 4], SEASONS)
        add("weather and seasons", f"Which season comes before {season}?", f"The season before {season} is {{}}.",
            SEASONS[(i - 1) % 4], SEASONS)
    for question, reply, season in SEASON_FACTS:
        add("weather and seasons", question, reply, season, SEASONS)
    facts("weather and seasons", WEATHER)
    for (question, reply), count in UNITS.items():
        add("units", question, reply, str(count),
            [str(v) for v in {count * 10, count * 2, count // 2 if count % 2 == 0 else 0,
                              count // 10 if count % 10 == 0 else 0, count + 1, count - 1} if v > 0])

    # Stratify: shuffle each category, order the categories, deal one item from each in turn. Each
    # shuffle has its own generator, so growing one table leaves the other categories' order alone.
    by_category: dict[str, list[ProbeItem]] = {}
    for item in items:
        by_category.setdefault(item.category, []).append(item)
    order = sorted(by_category)
    for category in order:
        random.Random(f"{seed}:{category}").shuffle(by_category[category])
    random.Random(f"{seed}:categories").shuffle(order)
    dealt = [by_category[c][i] for i in range(max(map(len, by_category.values())))
             for c in order if i < len(by_category[c])]
    return dealt[:n] if n is not None else dealt


def probe_categories(seed: int = SEED) -> dict[str, int]:
    """Category -> number of items in :func:`probe_items` (in the order the categories are dealt)."""
    counts: dict[str, int] = {}
    for item in probe_items(seed=seed):
        counts[item.category] = counts.get(item.category, 0) + 1
    return counts


def _a(noun: str) -> str:
    """The indefinite article for ``noun``."""
    return "an" if noun[0].lower() in "aeiou" else "a"


def _cap(text: str) -> str:
    """``text`` with its first letter upper-cased (the rest kept: "the United States" -> "The United States")."""
    return text[0].upper() + text[1:]


def _wrong_pasts(verb: str, past: str, participle: str) -> list[str]:
    """Plausible wrong past tenses: the regular "-ed" form, the present forms and the participle."""
    regular = verb + ("d" if verb.endswith("e") else "ed")
    third = verb + ("es" if verb.endswith(("s", "sh", "ch", "x", "o")) else "s")
    return sorted({regular, third, verb, participle} - {past})


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


# ---- general prompts -------------------------------------------------------------------------

# Open requests a chat model answers in its own words. None is a probe question (no fact is asked
# for), so a method that trains on them (replay, a KL penalty, a protected subspace) is never
# scored on what it trained on.
_CHAT_TOPICS = ("a rainy afternoon", "the first day of school", "a walk in the forest", "a busy kitchen",
                "an old lighthouse", "a summer picnic", "a quiet library", "a train journey", "a snowy morning",
                "a small garden", "a birthday party", "a football match", "a night sky full of stars",
                "a crowded market", "a long bicycle ride", "a visit to grandparents")
_CHAT_ACTIVITIES = ("learning to swim", "keeping a tidy desk", "studying for a test", "cooking rice",
                    "saving money", "sleeping better", "making new friends", "writing a letter",
                    "planting tomatoes", "running a first race", "learning a new language", "packing a suitcase",
                    "taking care of a houseplant", "drawing a portrait", "staying calm before a talk",
                    "reading more books")
_CHAT_REQUESTS = (
    "Write two sentences about {topic}.",
    "Describe {topic} in a few words.",
    "Tell me a very short story about {topic}.",
    "Give me one tip for {activity}.",
    "What is a good way to start {activity}?",
    "Why might someone enjoy {activity}?",
    "Write a friendly note to a friend about {topic}.",
    "Explain in one sentence what makes {topic} pleasant.",
)
CHAT_PROMPTS = len(_CHAT_REQUESTS) * len(_CHAT_TOPICS)

# The prompts a method may train on (replay of the base model's replies, a KL penalty): other requests
# on other topics than the ones the chat measures ask, so a method is not scored on what it trained on.
_TRAIN_TOPICS = ("a windy beach", "a mountain village", "a school concert", "a pet goldfish", "an empty playground",
                 "a late dinner", "a city bus ride", "a thunderstorm at night", "a bakery at dawn",
                 "a lost umbrella", "a farm in autumn", "a museum visit", "a camping trip", "a sunny balcony",
                 "a new neighbour", "a frozen lake")
_TRAIN_ACTIVITIES = ("baking bread", "learning the guitar", "waking up early", "keeping a diary", "painting a room",
                     "walking a dog", "learning to knit", "planning a holiday", "fixing a bicycle tyre",
                     "cleaning a fridge", "starting to jog", "writing a poem", "organising a bookshelf",
                     "growing herbs indoors", "taking better photos", "learning chess")
_TRAIN_REQUESTS = (
    "Say something kind about {topic}.",
    "List three things you might see during {topic}.",
    "Write a short paragraph about {topic}.",
    "How would you describe {topic} to a child?",
    "What are the first steps of {activity}?",
    "Share a simple idea to make {activity} easier.",
    "What mistakes do beginners make when {activity}?",
    "Write a sentence encouraging a friend who is {activity}.",
)


def chat_prompts(n: int | None = None, *, seed: int = SEED) -> list[str]:
    """General requests for a chat model (``builtin:chat``): :data:`CHAT_PROMPTS` open prompts with no
    single right answer, shuffled with ``seed`` so any prefix mixes the kinds of request. The
    generative measures ask them to see how a model answers in its own voice (chat drift, the
    format-leak flag)."""
    prompts = []
    for i, request in enumerate(_CHAT_REQUESTS):
        for j in range(len(_CHAT_TOPICS)):
            prompts.append(request.format(topic=_CHAT_TOPICS[(i + j) % len(_CHAT_TOPICS)],
                                          activity=_CHAT_ACTIVITIES[(i * 3 + j) % len(_CHAT_ACTIVITIES)]))
    random.Random(f"{seed}:chat").shuffle(prompts)
    return prompts[:n] if n is not None else prompts


def chat_train_prompts(n: int | None = None, *, seed: int = SEED) -> list[str]:
    """General requests a method may train on (``builtin:chat-train``): other requests on other topics
    than :func:`chat_prompts`, so the chat measures never ask what a method trained on."""
    prompts = [request.format(topic=_TRAIN_TOPICS[(i + j) % len(_TRAIN_TOPICS)],
                              activity=_TRAIN_ACTIVITIES[(i * 5 + j) % len(_TRAIN_ACTIVITIES)])
               for i, request in enumerate(_TRAIN_REQUESTS) for j in range(len(_TRAIN_TOPICS))]
    random.Random(f"{seed}:chat-train").shuffle(prompts)
    return prompts[:n] if n is not None else prompts


# ---- registry --------------------------------------------------------------------------------

BUILTINS: dict[str, str] = {
    "skill": "translate English phrases into the made-up language Zorbic (exact match)",
    **{name: task.summary for name, task in TASKS.items()},
    "probes": "general-knowledge multiple-choice probes (log-likelihood scoring)",
    "text": "plain-text paragraphs for activation capture",
    "chat": "general requests a chat model answers in its own words (chat drift, format leak)",
    "chat-train": "other general requests, for methods that train on the base model's replies (replay, KL)",
}

#: The built-in datasets a model is trained on: generated skills the base model cannot do, with
#: train/validation/test splits and exact-match scoring (the rest are for measuring).
BUILTIN_TASKS: tuple[str, ...] = ("skill", "cipher", "order", "units", "vennish")


def unknown_builtin(name: str) -> str:
    """The error message for ``builtin:NAME`` that does not exist, with the closest names first."""
    close = difflib.get_close_matches(name, list(BUILTINS), n=2, cutoff=0.5)
    guess = f"did you mean {' or '.join(f'builtin:{c}' for c in close)}? " if close else ""
    return (f"unknown built-in dataset builtin:{name}; {guess}there are "
            + ", ".join(f"builtin:{k}" for k in BUILTINS) + " (`fnapi data list` describes them)")


def builtin_splits(name: str, *, seed: int = SEED) -> dict[str, list[Conversation]]:
    """The splits of ``builtin:NAME`` as normalised conversations (rows numbered from 1 per split)."""
    if name == "skill":
        splits = {split: skill_conversations(split, seed=seed) for split in SKILL_SPLITS}
    elif name in TASKS:
        splits = TASKS[name].splits(seed)
    elif name == "probes":
        splits = {"train": [item.to_conversation() for item in probe_items(seed=seed)]}
    elif name == "text":
        splits = {"train": [Conversation(text=text) for text in text_paragraphs(seed=seed)]}
    elif name in ("chat", "chat-train"):
        prompts = chat_prompts(seed=seed) if name == "chat" else chat_train_prompts(seed=seed)
        splits = {"train": [Conversation(messages=[{"role": "user", "content": prompt}]) for prompt in prompts]}
    else:
        raise DataError(unknown_builtin(name))
    for rows in splits.values():
        for number, conversation in enumerate(rows, start=1):
            conversation.row = number
    return splits
