"""Synthetic, deterministic data for the sales-assistant intent classifier.

Nothing here is a data file: every utterance is generated from templates and slot
values with a seeded ``random.Random``, so the same seed always yields the same
dataset on every machine.

The taxonomy has eight intents. One *systematic weakness* is built in on purpose:
pre-purchase **delivery-time** questions ("how many days to get to Lyon?") belong to
``shipping``, but the base dataset has none of them, while ``order_status`` is full of
the same vocabulary ("when will my order arrive", "how many days until it gets here").
A classifier trained on the base data (v1) therefore sends that slice to
``order_status`` with middling confidence. The flywheel's job is to find and fix it.

Train/held-out disjointness is by construction: every generated text falls into a
bucket by the SHA-256 of its normalized form, and held-out texts come only from the
held-out bucket. ``base_dataset`` and ``weak_slice_utterances`` never return a text
that ``heldout_dataset`` can return, whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INTENTS: tuple[str, ...] = (
    "greeting",
    "product_info",
    "price",
    "shipping",
    "returns",
    "discount",
    "order_status",
    "human_agent",
)

CORE_SLICE = "core"
WEAK_SLICE = "delivery_time"
WEAK_SLICE_INTENT = "shipping"
# What v1 tends to answer for the weak slice: the intent whose vocabulary it shares.
WEAK_SLICE_CONFUSED_WITH = "order_status"

# One text in HELDOUT_BUCKETS out of HASH_BUCKETS is reserved for evaluation.
HASH_BUCKETS = 10
HELDOUT_BUCKETS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class LabeledText:
    """One labeled utterance; ``slice`` names the data slice it was drawn from."""

    text: str
    label: str
    slice: str = CORE_SLICE


_SLOTS: dict[str, tuple[str, ...]] = {
    "product": (
        "running shoes",
        "wireless headphones",
        "yoga mat",
        "coffee grinder",
        "backpack",
        "smartwatch",
        "desk lamp",
        "winter jacket",
        "blender",
        "phone case",
        "office chair",
        "water bottle",
        "rain coat",
        "hiking boots",
        "espresso machine",
        "gaming mouse",
        "air fryer",
        "sunglasses",
        "electric toothbrush",
        "laptop stand",
    ),
    "color": ("black", "white", "red", "navy blue", "green", "grey", "pink", "beige"),
    "size": ("small", "medium", "large", "XL", "size 42", "size 9"),
    "city": (
        "Berlin",
        "Paris",
        "Madrid",
        "Chicago",
        "Toronto",
        "Lyon",
        "Osaka",
        "Milan",
        "Denver",
        "Dublin",
        "Vienna",
        "Austin",
        "Lisbon",
        "Seattle",
        "Munich",
        "Oslo",
    ),
    "country": (
        "Germany",
        "France",
        "Spain",
        "Canada",
        "Italy",
        "Japan",
        "Ireland",
        "Austria",
        "Portugal",
        "Norway",
        "Mexico",
        "Poland",
    ),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "the weekend"),
    "amount": ("50 dollars", "$30", "100 euros", "75 bucks", "$200"),
    "code": ("SPRING10", "WELCOME5", "SAVE20", "VIP15", "FREESHIP"),
    "carrier": ("DHL", "UPS", "FedEx", "USPS", "DPD"),
    "n": ("3", "5", "7", "10", "14", "two", "four"),
}

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "greeting": (
        "hi",
        "hello",
        "hello there",
        "hey",
        "good morning",
        "good evening",
        "hi there",
        "hey, anyone here",
        "hello, I have a question",
        "hi! just looking around",
        "good afternoon",
        "hey there, how are you",
        "hi, nice to meet you",
        "yo",
        "hello, is this the shop assistant",
        "greetings",
        "morning!",
        "hiya",
    ),
    "product_info": (
        "does the {product} come in {color}",
        "what material is the {product} made of",
        "is the {product} waterproof",
        "tell me more about the {product}",
        "what sizes does the {product} come in",
        "is the {product} available in {size}",
        "how heavy is the {product}",
        "what are the dimensions of the {product}",
        "is the {product} compatible with my phone",
        "does the {product} have a warranty",
        "what colors does the {product} come in",
        "can you describe the {product}",
        "is the {product} good for beginners",
        "how long does the battery of the {product} last",
        "is the {product} in stock in {color}",
        "what is the difference between the two {product} models",
        "does the {product} fit true to size",
        "can I wash the {product}",
    ),
    "price": (
        "how much is the {product}",
        "what does the {product} cost",
        "price of the {product}",
        "how much for the {product} in {color}",
        "what's the price of the {product} in {size}",
        "is the {product} expensive",
        "how much would two {product}s cost",
        "what is the cheapest {product} you have",
        "can you tell me the price of the {product}",
        "is the {product} under {amount}",
        "how much do you charge for the {product}",
        "what's the total for the {product}",
        "does the {product} cost more in {color}",
        "is the price of the {product} with tax",
    ),
    "shipping": (
        "do you ship to {country}",
        "how much is shipping to {country}",
        "is shipping free",
        "which carriers do you use",
        "can I get express shipping",
        "do you offer free shipping over {amount}",
        "do you ship internationally",
        "what are the shipping options",
        "can I pick it up in store instead of shipping",
        "do you use {carrier} for shipping",
        "how much does express shipping cost",
        "can you ship the {product} to {country}",
        "is there a shipping fee for the {product}",
        "do you deliver to a PO box",
        "can I choose {carrier} as the carrier",
        "what does shipping cost for orders under {amount}",
    ),
    "returns": (
        "how do I return the {product}",
        "can I return an item after {n} days",
        "what is your return policy",
        "I want a refund for my {product}",
        "the {product} is broken, can I exchange it",
        "can I exchange the {product} for {size}",
        "how long do refunds take",
        "do I need the receipt to return the {product}",
        "I'd like to send the {product} back",
        "the {product} doesn't fit, can I return it",
        "where do I send returns",
        "is the return free for the {product}",
        "can I get my money back for the {product}",
        "how do I start a return",
    ),
    "discount": (
        "do you have any discount codes",
        "is there a coupon for the {product}",
        "my code {code} doesn't work",
        "any student discount",
        "will the {product} go on sale",
        "do you have a black friday deal",
        "can I use {code} on the {product}",
        "is there a discount if I buy two {product}s",
        "any promo codes today",
        "do you have a newsletter discount",
        "can I combine {code} with another coupon",
        "is the {product} cheaper with a membership",
        "do you price match",
        "are there any deals on the {product}",
    ),
    "order_status": (
        "where is my order {order_id}",
        "when will my order {order_id} arrive",
        "has my package shipped yet",
        "can you track order {order_id}",
        "my order still hasn't arrived",
        "what's the status of my order",
        "it's been {n} days and my {product} is not here",
        "when does my order get delivered",
        "how many days until my order {order_id} gets here",
        "is my {product} on its way",
        "my {carrier} tracking hasn't updated in {n} days",
        "I ordered the {product} last week, where is it",
        "when will the {product} I ordered arrive",
        "did my order {order_id} ship",
        "how long until my order arrives",
        "my package says delivered but I don't have it",
        "can you check on order {order_id}",
        "why is my order {order_id} late",
        "when will my {product} arrive in {city}",
        "how many days will my order take to get to {city}",
        "how long does my delivery take",
        "what's the delivery date for my order {order_id}",
        "my order {order_id}, when will it arrive",
        "how long until my {product} gets here",
    ),
    "human_agent": (
        "can I talk to a human",
        "connect me to an agent",
        "I want to speak with a real person",
        "get me customer service",
        "is there a person I can call",
        "transfer me to support",
        "I need to talk to someone",
        "let me speak to a manager",
        "can a human help me",
        "is there a phone number for support",
        "stop, I want a real agent",
        "put me through to a representative",
        "I'd rather chat with a person",
        "are you a bot? I want a human",
    ),
}

# The weak slice: pre-purchase delivery-time questions, true label `shipping`.
_WEAK_SLICE_TEMPLATES: tuple[str, ...] = (
    "how long does delivery to {city} take",
    "how many days to get to {city}",
    "when would the {product} arrive if I order today",
    "what is the delivery time to {city}",
    "how fast can you deliver to {city}",
    "if I buy the {product} now when will it arrive",
    "how many days does shipping take to {country}",
    "when will it arrive in {city} if I order now",
    "how long until a {product} gets to {city}",
    "what's the estimated delivery time for the {product}",
    "can the {product} arrive by {weekday} if I order now",
    "would it get to {city} before {weekday}",
    "how many days would delivery to {country} take",
    "if I order now how long until it arrives",
    "what's the usual delivery time for {country}",
    "how quickly would a {product} arrive in {city}",
)

_PREFIXES: tuple[str, ...] = (
    "",
    "",
    "",
    "hi, ",
    "hey ",
    "quick question: ",
    "sorry, ",
    "excuse me, ",
    "hello, ",
    "um, ",
    "ok so ",
    "one more thing: ",
)
_SUFFIXES: tuple[str, ...] = ("", "", "?", "?", "??", " please", " thanks", "? thank you!", "!")


def normalize(text: str) -> str:
    """Lower-cased text without punctuation or extra spaces (the dedup/bucket key)."""
    kept = "".join(ch for ch in text.casefold() if ch.isalnum() or ch.isspace())
    return " ".join(kept.split())


def is_heldout_text(text: str) -> bool:
    """True when the text belongs to the reserved evaluation bucket."""
    digest = hashlib.sha256(normalize(text).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HASH_BUCKETS < HELDOUT_BUCKETS


def _fill(template: str, rng: random.Random) -> str:
    values: dict[str, str] = {}
    for name, options in _SLOTS.items():
        if "{" + name + "}" in template:
            values[name] = rng.choice(options)
    if "{order_id}" in template:
        values["order_id"] = f"#{rng.choice('ABCDEFGH')}{rng.randint(1000, 99999)}"
    text = template.format(**values)
    text = rng.choice(_PREFIXES) + text + rng.choice(_SUFFIXES)
    if rng.random() < 0.3:
        text = text[:1].upper() + text[1:]
    return text


def _generate(
    templates: Sequence[str],
    label: str,
    slice_name: str,
    n: int,
    rng: random.Random,
    keep: Callable[[str], bool],
    seen: set[str],
) -> list[LabeledText]:
    """Draw up to ``n`` distinct texts (by normalized form) that pass ``keep``."""
    out: list[LabeledText] = []
    attempts = 0
    while len(out) < n and attempts < n * 200:
        attempts += 1
        text = _fill(rng.choice(templates), rng)
        key = normalize(text)
        if key in seen or not keep(text):
            continue
        seen.add(key)
        out.append(LabeledText(text=text, label=label, slice=slice_name))
    return out


def _not_heldout(text: str) -> bool:
    return not is_heldout_text(text)


def base_dataset(seed: int = 0, per_intent: int = 100) -> list[LabeledText]:
    """The labeled data v1 is trained on: every intent, and no delivery-time questions."""
    rng = random.Random(f"base:{seed}")
    seen: set[str] = set()
    rows: list[LabeledText] = []
    for intent in INTENTS:
        rows += _generate(
            _TEMPLATES[intent], intent, CORE_SLICE, per_intent, rng, _not_heldout, seen
        )
    rng.shuffle(rows)
    return rows


def weak_slice_utterances(seed: int = 0, n: int = 100) -> list[LabeledText]:
    """Delivery-time questions (true label ``shipping``) from the training bucket."""
    rng = random.Random(f"weak:{seed}")
    return _generate(
        _WEAK_SLICE_TEMPLATES, WEAK_SLICE_INTENT, WEAK_SLICE, n, rng, _not_heldout, set()
    )


def core_utterances(seed: int = 0, n: int = 100) -> list[LabeledText]:
    """Ordinary traffic across all intents (training bucket), e.g. for a traffic generator."""
    rng = random.Random(f"core:{seed}")
    seen: set[str] = set()
    rows: list[LabeledText] = []
    for i, intent in enumerate(INTENTS):
        share = n // len(INTENTS) + (1 if i < n % len(INTENTS) else 0)
        rows += _generate(_TEMPLATES[intent], intent, CORE_SLICE, share, rng, _not_heldout, seen)
    rng.shuffle(rows)
    return rows


def heldout_dataset(seed: int = 0, per_intent: int = 40, weak_slice: int = 80) -> list[LabeledText]:
    """Evaluation data: only held-out-bucket texts, never returned by the training generators."""
    rng = random.Random(f"heldout:{seed}")
    seen: set[str] = set()
    rows: list[LabeledText] = []
    for intent in INTENTS:
        rows += _generate(
            _TEMPLATES[intent], intent, CORE_SLICE, per_intent, rng, is_heldout_text, seen
        )
    rows += _generate(
        _WEAK_SLICE_TEMPLATES, WEAK_SLICE_INTENT, WEAK_SLICE, weak_slice, rng, is_heldout_text, seen
    )
    rng.shuffle(rows)
    return rows


def shuffled_labels(rows: Sequence[LabeledText], seed: int = 0) -> list[LabeledText]:
    """The same texts with labels permuted at random: a deliberately bad training set."""
    rng = random.Random(f"shuffle:{seed}")
    labels = [row.label for row in rows]
    rng.shuffle(labels)
    return [
        LabeledText(text=row.text, label=label, slice=row.slice)
        for row, label in zip(rows, labels, strict=True)
    ]


__all__ = [
    "CORE_SLICE",
    "INTENTS",
    "LabeledText",
    "WEAK_SLICE",
    "WEAK_SLICE_CONFUSED_WITH",
    "WEAK_SLICE_INTENT",
    "base_dataset",
    "core_utterances",
    "heldout_dataset",
    "is_heldout_text",
    "normalize",
    "shuffled_labels",
    "weak_slice_utterances",
]
