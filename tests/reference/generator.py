"""A seeded generator of raw event streams that exercise every rule of the contract.

``generate_stream(sessions=5000, seed=...)`` returns the valid events (the truth the
reference computes from) and a delivery sequence for Kafka or JSON Lines:

- mixed session behaviours: CTA clicked within / exactly at the end of / after the window,
  clicks on another CTA, carts and orders, FSM progress, self-transitions and stalls,
  repeated questions (exact, normalized-equal, paraphrased, outside the lookback),
  silences (and replies exactly at the silence gap), low confidence (and exactly 0.6),
  corrections with markers (Latin, CJK, ’) and false friends, every feedback kind with
  ratings 1..5, slow responses (and exactly 15000 ms), ties in ``ts_ms`` decided by
  ``event_id``, a ``user_id`` change inside a session, optional fields as ``null`` and
  unknown extra fields, and ``session_id``s reused after a gap of >= 30 min (exactly
  30 min too) or continued just under it;
- about 2% duplicate deliveries with identical content;
- out-of-order delivery strictly within the 10 s bound (so no event is ever late);
- a handful of invalid raw lines with the dead-letter reason each must get.

Standard library only; nothing from the project is imported.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

BASE_TS_MS = 1_772_359_200_000  # 2026-03-01T10:00:00Z
SPAN_MS = 30 * 3600 * 1000  # session starts spread over 30 h: two or three UTC dates
GAP_MS = 30 * 60 * 1000
MAX_JITTER_MS = 9_000  # < max_out_of_order (10 s): nothing is ever late
CTA_WINDOW_MS = 10 * 60 * 1000
SILENCE_GAP_MS = 5 * 60 * 1000

QUESTIONS = [
    "How long does shipping to Lyon take?",
    "Do you have the trail runner in size 44?",
    "What is the warranty on the espresso machine?",
    "Can I pay with PayPal?",
    "Is the rain jacket machine washable?",
    "Which laptop bag fits a 16 inch laptop?",
    "Do you sell gift cards?",
    "Where is my order 5531?",
    "Can I pick up the sofa in store?",
    "Does the kettle switch off automatically?",
    "Are the headphones noise cancelling?",
    "What colours does the backpack come in?",
    "Is there a student discount?",
    "How do I reset my password?",
    "Can you recommend a tent for two people?",
    "Is the desk lamp dimmable?",
    "Do the running shoes run small?",
    "What is the battery life of the speaker?",
    "Can I change the delivery address?",
    "Is assembly included with the wardrobe?",
    "这个有红色的吗",
    "什么时候发货",
    "是不是包邮",
    "可以开发票吗",
    "Quel est le délai de livraison ?",
    "👍",
    "?",
]
# Same normalized text as the base question: case, punctuation, symbols and spaces differ.
NORMALIZED_VARIANTS = {
    "Can I pay with PayPal?": "can i pay with paypal",
    "Do you sell gift cards?": "DO YOU SELL GIFT CARDS???",
    "Is there a student discount?": "is there a student-discount?!",
    "How do I reset my password?": "How do I reset my password 🙏",
    "Where is my order 5531?": "where is my order #5531",
    "什么时候发货": "什么时候 发货？",
    "👍": "!!",
}
# Paraphrases: different normalized text, high embedding similarity (checked by the tests).
PARAPHRASES = [
    ("What is your return policy?", "What's your return policy?"),
    ("Do you ship to Canada?", "Do you deliver to Canada?"),
    ("How much does shipping cost?", "What does shipping cost?"),
    ("Is this jacket waterproof?", "Is this jacket water proof?"),
    ("Can I cancel my order?", "Can I cancel my order please"),
]
CORRECTIONS = [
    "Actually I wanted the blue one",
    "That’s not what I asked",
    "No, that is not right",
    "Wrong size, I need a medium",
    "I meant the other backpack",
    "INCORRECT price shown",
    "I said size 42",
    "that's  not the model I ordered",
    "不对，我要的是蓝色的",
    "错了，是两件",
    "应该是明天到",
    "实际上我需要发票",
    "其实我想要大号",
    "你看错了订单号",
]
# Look like corrections but hold no marker.
FALSE_FRIENDS = [
    "I was wrongly charged twice?",
    "Factually, is it cotton?",
    "thats not bad, what else?",
    "是不是包邮",
    "Hi meant to ask about sizes",
    "Is that the actual price?",
    "actually2 is my username",
    "wrong_size_guide.pdf won't open",
]
ASSISTANT_REPLIES = [
    "Shipping takes 2-3 business days.",
    "Yes, it is available in that size.",
    "The warranty is two years.",
    "We accept PayPal and all major cards.",
    "Here are three options you might like.",
    "Let me check that for you.",
    "您好，有红色和蓝色。",
    "Sorry, that item is out of stock.",
]
INTENTS = ["shipping", "availability", "warranty", "payment", "returns", "order_status"]
STATES = ["greeting", "discovery", "recommendation", "checkout", "support", "closing"]
MODEL_VERSIONS = ["intent-v1", "intent-v2", "intent-v2-canary"]
OPTIONAL_FIELDS = {
    "user_message": (
        "request_id",
        "predicted_intent",
        "intent_confidence",
        "predicted_objection",
        "objection_confidence",
        "model_version",
    ),
    "assistant_message": ("request_id", "response_time_ms", "model_version", "prompt_version"),
    "cta_sent": ("cta_type",),
    "cart_add": ("quantity", "amount"),
    "order": ("amount",),
    "fsm_state": ("from_state",),
    "feedback": ("request_id", "rating", "corrected_text", "corrected_intent"),
}


@dataclass
class InvalidLine:
    """A raw record the job must dead-letter with ``reason``."""

    raw: bytes
    reason: str
    key: bytes | None
    name: str


@dataclass
class Delivery:
    """One record in delivery order: a valid event (maybe a duplicate) or an invalid line."""

    raw: bytes
    key: bytes | None
    event: dict[str, Any] | None = None
    invalid: InvalidLine | None = None
    duplicate: bool = False


@dataclass
class GeneratedStream:
    """Valid events (truth) and the delivery sequence."""

    events: list[dict[str, Any]]
    deliveries: list[Delivery]
    session_count_hint: int
    stats: dict[str, int] = field(default_factory=dict)
    # Raw personal data put into texts (``personal_data=True``), each value as typed.
    personal_values: list[str] = field(default_factory=list)

    @property
    def invalid(self) -> list[tuple[int, InvalidLine]]:
        """(delivery index, line) of the invalid records."""
        return [(i, d.invalid) for i, d in enumerate(self.deliveries) if d.invalid is not None]

    def user_texts(self) -> set[str]:
        return {e["text"] for e in self.events if e["event_type"] == "user_message"}

    def jsonl(self) -> bytes:
        """The deliveries as JSON Lines (one record per line)."""
        return b"".join(d.raw + b"\n" for d in self.deliveries)


def literal_event(
    session_id: str, n: int, event_type: str, ts_ms: int, **fields: Any
) -> dict[str, Any]:
    """A hand-written event for scenario tests: id ``<session_id>-<n>``, user ``u-<session_id>``."""
    return {
        "event_id": f"{session_id}-{n}",
        "event_type": event_type,
        "schema_version": 1,
        "session_id": session_id,
        "user_id": f"u-{session_id}",
        "ts_ms": ts_ms,
        **fields,
    }


def encode_event(event: dict[str, Any], rng: random.Random | None = None) -> bytes:
    """Compact JSON; sometimes with an explicit ``null`` optional or an unknown extra field."""
    payload = dict(event)
    if rng is not None:
        roll = rng.random()
        if roll < 0.05:
            payload["client"] = rng.choice(["ios", "web", "android"])  # ignored by the contract
        elif roll < 0.10:
            absent = [f for f in OPTIONAL_FIELDS.get(payload["event_type"], ()) if f not in payload]
            if absent:
                payload[rng.choice(absent)] = None  # an optional given as null counts as absent
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Session:
    """Builds one session's events with increasing timestamps."""

    def __init__(
        self, rng: random.Random, index: int, session_id: str, user_id: str, start_ms: int
    ):
        self.rng = rng
        self.index = index
        self.session_id = session_id
        self.user_id = user_id
        self.ts = start_ms
        self.events: list[dict[str, Any]] = []
        self.request_ids: list[str] = []
        self.user_texts: list[str] = []
        self._n = 0

    def add(
        self, event_type: str, after_ms: int, *, event_id: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        self.ts += after_ms
        self._n += 1
        event = {
            "event_id": event_id
            or f"e{self.index:05d}-{self._n:03d}-{self.rng.randrange(16**4):04x}",
            "event_type": event_type,
            "schema_version": 1,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "ts_ms": self.ts,
        }
        event.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(event)
        return event

    def user(self, text: str, after_ms: int) -> dict[str, Any]:
        rng = self.rng
        request_id = f"q{self.index}-{len(self.request_ids)}"
        self.request_ids.append(request_id)
        roll = rng.random()
        if roll < 0.2:
            confidence = None
        elif roll < 0.25:
            confidence = 0.6  # exactly the threshold: not low
        else:
            confidence = round(rng.uniform(0.15, 1.0), 3)
        self.user_texts.append(text)
        return self.add(
            "user_message",
            after_ms,
            text=text,
            request_id=request_id,
            predicted_intent=rng.choice(INTENTS) if confidence is not None else None,
            intent_confidence=confidence,
            predicted_objection=rng.choice(["price", "timing", None, None]),
            objection_confidence=round(rng.random(), 2) if rng.random() < 0.3 else None,
            model_version=rng.choice(MODEL_VERSIONS),
        )

    def assistant(self, after_ms: int, *, model_version: str | None = "default") -> dict[str, Any]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.08:
            response_ms = rng.randint(15_001, 45_000)  # slow
        elif roll < 0.11:
            response_ms = 15_000  # exactly the threshold: not slow
        elif roll < 0.18:
            response_ms = None
        else:
            response_ms = rng.randint(200, 9_000)
        if model_version == "default":
            model_version = rng.choice(MODEL_VERSIONS) if rng.random() < 0.85 else None
        return self.add(
            "assistant_message",
            after_ms,
            text=rng.choice(ASSISTANT_REPLIES),
            request_id=f"a{self.index}-{len(self.events)}",
            response_time_ms=response_ms,
            model_version=model_version,
            prompt_version=rng.choice(["p1", "p2", None]),
        )


def _question(rng: random.Random, session: _Session) -> str:
    """A next user text: fresh, an exact/normalized/paraphrased repeat, or an older one."""
    previous = session.user_texts
    roll = rng.random()
    if previous and roll < 0.10:
        return rng.choice(previous[-3:])  # exact repeat within the lookback
    if previous and roll < 0.16:
        base = rng.choice(previous[-3:])
        return NORMALIZED_VARIANTS.get(base, base.upper())
    if roll < 0.24:
        pair = rng.choice(PARAPHRASES)
        if previous and previous[-1] in pair:
            return pair[1] if previous[-1] == pair[0] else pair[0]
        return pair[0]
    if roll < 0.30:
        return rng.choice(CORRECTIONS)
    if roll < 0.35:
        return rng.choice(FALSE_FRIENDS)
    return rng.choice(QUESTIONS)


def _chat_session(rng: random.Random, s: _Session) -> None:
    """Turns of user/assistant messages with FSM, CTAs, conversions and feedback mixed in."""
    turns = rng.choices([1, 2, 3, 4, 6], weights=[50, 30, 12, 6, 2])[0]
    stalling = rng.random() < 0.3  # no state change for many turns
    if rng.random() < 0.6:
        s.add("fsm_state", rng.randint(0, 3_000), to_state="greeting", from_state=None)
    for turn in range(turns):
        s.user(_question(rng, s), rng.randint(1_000, 90_000))
        if rng.random() < 0.1:
            # A user message right after a user message: a marker here is no correction.
            s.user(rng.choice(CORRECTIONS), rng.randint(1_000, 20_000))
        if rng.random() < 0.93 or turn < turns - 1:
            s.assistant(rng.randint(300, 20_000))
        if rng.random() < 0.15:
            # A CTA between the assistant and the next user message does not break corrections.
            s.add(
                "cta_sent",
                rng.randint(100, 2_000),
                cta_id=f"cta-{s.index}-{turn}",
                cta_type=rng.choice(["product_card", "checkout_link", None]),
            )
        if not stalling or rng.random() < 0.2:
            roll = rng.random()
            if roll < 0.45:
                s.add(
                    "fsm_state",
                    rng.randint(100, 5_000),
                    to_state=rng.choice(STATES),
                    from_state=rng.choice(STATES + [None]),
                )
            elif roll < 0.55 and any(e["event_type"] == "fsm_state" for e in s.events):
                last = [e for e in s.events if e["event_type"] == "fsm_state"][-1]["to_state"]
                s.add("fsm_state", rng.randint(100, 5_000), to_state=last, from_state=last)  # self
        silence = rng.random()
        if silence < 0.10:
            s.ts += rng.randint(SILENCE_GAP_MS + 1, 20 * 60 * 1000)  # long silence, same session
        elif silence < 0.13:
            # The next user message lands exactly at ts + silence_gap: no silence.
            if s.events[-1]["event_type"] == "assistant_message":
                s.user(_question(rng, s), SILENCE_GAP_MS)
                s.assistant(rng.randint(300, 5_000))
    if rng.random() < 0.5:
        s.user(rng.choice(["thanks!", "ok", "Thanks, bye"]), rng.randint(2_000, SILENCE_GAP_MS))
    _conversions(rng, s)
    _feedback(rng, s)


def _conversions(rng: random.Random, s: _Session) -> None:
    roll = rng.random()
    if roll < 0.40:
        cta_id = f"cta-{s.index}-x"
        sent = s.add("cta_sent", rng.randint(500, 30_000), cta_id=cta_id, cta_type="product_card")
        how = rng.random()
        if how < 0.35:
            s.add("cta_click", rng.randint(1_000, CTA_WINDOW_MS - 1_000), cta_id=cta_id)
        elif how < 0.45:
            s.add("cta_click", CTA_WINDOW_MS, cta_id=cta_id)  # exactly at the window's end: clicked
        elif how < 0.60:
            s.add(
                "cta_click", rng.randint(CTA_WINDOW_MS + 1, 25 * 60 * 1000), cta_id=cta_id
            )  # late
        elif how < 0.68:
            s.add("cta_click", rng.randint(1_000, 60_000), cta_id="some-other-cta")
        elif how < 0.74:
            # Same ts as the send: counts only when its event_id sorts after the send's.
            before = rng.random() < 0.5
            event_id = sent["event_id"][:-1] + ("!" if before else "~")
            s.add("cta_click", 0, cta_id=cta_id, event_id=event_id)
        if rng.random() < 0.3:
            s.add(
                "cart_add",
                rng.randint(1_000, 60_000),
                sku=f"sku-{rng.randrange(500)}",
                quantity=rng.choice([1, 2, None]),
                amount=rng.choice([19.99, 5, None]),
            )
        if rng.random() < 0.25:
            s.add(
                "order",
                rng.randint(1_000, 120_000),
                order_id=f"o-{s.index}",
                amount=rng.choice([49.5, 120, None]),
            )
    elif roll < 0.50:
        s.add("cart_add", rng.randint(1_000, 60_000), sku=f"sku-{rng.randrange(500)}")
    elif roll < 0.55:
        s.add("order", rng.randint(1_000, 60_000), order_id=f"o-{s.index}")


def _feedback(rng: random.Random, s: _Session) -> None:
    if rng.random() > 0.45:
        return
    for _ in range(rng.choice([1, 1, 2])):
        kind = rng.choices(
            ["thumbs_up", "thumbs_down", "rating", "edit", "correction"],
            weights=[25, 20, 35, 10, 10],
        )[0]
        fields: dict[str, Any] = {"kind": kind}
        if s.request_ids and rng.random() < 0.8:
            fields["request_id"] = rng.choice(s.request_ids)
        if kind == "rating":
            fields["rating"] = rng.randint(1, 5)
        elif kind == "edit":
            fields["corrected_text"] = "The blue one, size M."
        elif kind == "correction":
            fields["corrected_intent"] = rng.choice(INTENTS)
            if rng.random() < 0.5:
                fields["corrected_text"] = "I asked about returns"
        elif rng.random() < 0.1:
            fields["rating"] = 1  # a rating on a thumbs event is ignored for polarity
        s.add("feedback", rng.randint(1_000, 60_000), **fields)


def _browse_session(rng: random.Random, s: _Session) -> None:
    """No messages: FSM and commerce events only."""
    for state in rng.sample(STATES, rng.randint(1, 3)):
        s.add("fsm_state", rng.randint(1_000, 60_000), to_state=state)
    _conversions(rng, s)


def _stuck_session(rng: random.Random, s: _Session) -> None:
    """The same question over and over with low confidence and no state change."""
    question = rng.choice(QUESTIONS[:20])
    s.add("fsm_state", rng.randint(0, 2_000), to_state="discovery")
    for k in range(rng.randint(3, 5)):
        text = question if k % 2 == 0 else NORMALIZED_VARIANTS.get(question, question.lower())
        s.user(text, rng.randint(5_000, 60_000))
        s.assistant(rng.randint(500, 10_000))
    if rng.random() < 0.5:
        s.ts += SILENCE_GAP_MS + rng.randint(1, 60_000)
        s.add("fsm_state", 0, to_state="discovery")  # a self-transition keeps the stall


def _lookback_session(rng: random.Random, s: _Session) -> None:
    """A question asked again after four others: outside the 3-message lookback."""
    first = rng.choice(QUESTIONS[:10])
    s.user(first, 1_000)
    s.assistant(2_000)
    for other in rng.sample(QUESTIONS[10:20], 3):
        s.user(other, rng.randint(3_000, 30_000))
        s.assistant(rng.randint(500, 3_000))
    s.user(first, rng.randint(3_000, 30_000))
    s.assistant(rng.randint(500, 3_000), model_version=None)


def _paraphrase_session(rng: random.Random, s: _Session) -> None:
    """A question asked again in other words: a repeat only the embedding can see.

    English only: the default model cannot read most Chinese text (contract section 3),
    so Chinese repeats count only when their normalized texts are equal.
    """
    first, again = rng.choice(PARAPHRASES)
    s.user(first, 1_000)
    s.assistant(rng.randint(500, 5_000))
    s.user(again, rng.randint(3_000, 60_000))
    s.assistant(rng.randint(500, 5_000))


BEHAVIOURS = [
    (_chat_session, 60),
    (_browse_session, 28),
    (_stuck_session, 6),
    (_lookback_session, 4),
    (_paraphrase_session, 2),
]


def _session_events(
    rng: random.Random, index: int, session_id: str, start_ms: int
) -> list[dict[str, Any]]:
    user_id = f"u{rng.randrange(2_000):04d}"
    s = _Session(rng, index, session_id, user_id, start_ms)
    behaviour = rng.choices([b for b, _ in BEHAVIOURS], weights=[w for _, w in BEHAVIOURS])[0]
    behaviour(rng, s)
    if not s.events:
        s.add("fsm_state", 0, to_state="greeting")
    if rng.random() < 0.02 and len(s.events) > 1:
        # The shopper logs in: user_id changes; the session keeps its first event's.
        for event in s.events[len(s.events) // 2 :]:
            event["user_id"] = f"u-logged-{index}"
    return s.events


def _invalid_lines(rng: random.Random) -> list[InvalidLine]:
    def obj(**fields: Any) -> bytes:
        base = {
            "event_id": f"bad-{rng.randrange(16**8):08x}",
            "event_type": "user_message",
            "schema_version": 1,
            "session_id": "bad-session",
            "user_id": "u-bad",
            "ts_ms": BASE_TS_MS + 1_000,
            "text": "hi",
        }
        base.update(fields)
        return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()

    blob = bytes(b for b in rng.randbytes(300) if b not in (0x0A, 0x0D)) + b"\xff\xfe"
    return [
        InvalidLine(
            b'{"event_id": "trunc", "event_type": ',
            "invalid_json",
            b"bad-session",
            "truncated JSON",
        ),
        InvalidLine(b"[1, 2, 3]", "not_an_object", None, "an array"),
        InvalidLine(
            obj(event_type="page_view"), "unknown_event_type", b"bad-session", "unknown type"
        ),
        InvalidLine(obj(ts_ms=str(BASE_TS_MS)), "wrong_type", b"bad-session", "ts_ms as a string"),
        InvalidLine(
            obj(intent_confidence="high"), "wrong_type", b"bad-session", "confidence as text"
        ),
        InvalidLine(
            obj(schema_version=2), "unsupported_schema_version", b"bad-session", "schema v2"
        ),
        InvalidLine(obj(session_id=...), "missing_field", None, "no session_id"),
        InvalidLine(
            obj(event_type="cta_click", cta_id=None), "missing_field", b"bad-session", "null cta_id"
        ),
        InvalidLine(
            obj(event_type="feedback", kind="rating", rating=7),
            "out_of_range",
            b"bad-session",
            "rating 7",
        ),
        InvalidLine(obj(text="x" * 40_000), "too_large", b"bad-session", "40 kB text"),
        InvalidLine(blob, "invalid_json", None, "binary blob"),
        # Rejected records must not move event time: a far-future ts on an unknown type,
        # and a ts beyond 2100 (with either, every open session would close at once).
        InvalidLine(
            obj(event_type="page_view", ts_ms=BASE_TS_MS + 20 * 86_400_000),
            "unknown_event_type",
            b"bad-session",
            "unknown type from the future",
        ),
        InvalidLine(
            obj(ts_ms=9_000_000_000_000_000), "out_of_range", b"bad-session", "ts in year 287000"
        ),
        InvalidLine(
            obj(schema_version=2, ts_ms=BASE_TS_MS + 20 * 86_400_000),
            "unsupported_schema_version",
            b"bad-session",
            "v2 from the future",
        ),
        # A valid envelope but a bad field, 30 h ahead; and a ts_ms sent as a string, ahead.
        InvalidLine(
            obj(event_type="feedback", kind="rating", rating=7, ts_ms=BASE_TS_MS + 30 * 3_600_000),
            "out_of_range",
            b"bad-session",
            "rating 7 from 30 h ahead",
        ),
        InvalidLine(
            obj(ts_ms=str(BASE_TS_MS + 30 * 3_600_000)),
            "wrong_type",
            b"bad-session",
            "ts_ms as a string, 30 h ahead",
        ),
    ]


# Personal data of every kind of contract section 6, as users type it (valid checksums).
PERSONAL_TEXTS: tuple[tuple[str, str], ...] = (
    ("my email is {}", "li.wei88@example.com"),
    ("邮箱{}，发票发这里", "zhang_san@163.com"),
    ("call me at {} please", "+44 20 7946 0958"),
    ("我的手机{}，到了打电话", "13812345678"),
    ("电话 {} 找王先生", "138-0013-8000"),
    ("座机{}", "010-62345678"),
    ("card {} expires 09/28", "4111 1111 1111 1111"),
    ("用这张卡{}付款", "6222021234567890128"),
    ("身份证号{}", "11010519491231002X"),
    ("reset link https://shop.example.com/reset?u=7&token={} does not work", "ab12Cd34Ef56"),
    ("my router is {} and it is slow", "192.168.31.7"),
)


def _inject_personal_data(events: list[dict[str, Any]], rng: random.Random) -> list[str]:
    """Put personal data into some user texts and corrected texts; returns the values."""
    values: list[str] = []
    for event in events:
        if event["event_type"] == "user_message" and rng.random() < 0.08:
            template, value = rng.choice(PERSONAL_TEXTS)
            event["text"] = template.format(value)
            values.append(value)
        elif event["event_type"] == "feedback" and event.get("corrected_text"):
            if rng.random() < 0.5:
                template, value = rng.choice(PERSONAL_TEXTS)
                event["corrected_text"] = template.format(value)
                values.append(value)
    return values


def generate_stream(
    sessions: int = 5_000,
    seed: int = 20260301,
    *,
    invalid: bool = True,
    personal_data: bool = False,
    duplicate_share: float = 0.02,
    span_ms: int = SPAN_MS,
    base_ts_ms: int = BASE_TS_MS,
) -> GeneratedStream:
    """Valid events of about ``sessions`` sessions plus their delivery sequence (see module doc).

    Session starts are spread over ``span_ms`` from ``base_ts_ms``. With
    ``personal_data``, some texts carry e-mails, phones, cards, ID numbers, URL secrets and
    IPs (``GeneratedStream.personal_values``), drawn from their own random sequence so the
    rest of the stream is the same as without.
    """
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    session_ids: list[tuple[str, int]] = []  # (session_id, its events' last ts)
    stats = {"reused_ids": 0, "continued_ids": 0}
    for index in range(sessions):
        start = base_ts_ms + rng.randrange(span_ms)
        session_id = f"s{index:05d}"
        new = _session_events(rng, index, session_id, start)
        events.extend(new)
        session_ids.append((session_id, new[-1]["ts_ms"]))
        roll = rng.random()
        if roll < 0.10:
            # The same session_id again after the gap: a second session under the same id.
            gap = rng.choice([GAP_MS, GAP_MS + rng.randrange(3 * 3600 * 1000)])
            again = _session_events(rng, 100_000 + index, session_id, new[-1]["ts_ms"] + gap)
            for event in again:
                event["event_id"] = "r" + event["event_id"]
            # Its first event exactly ``gap`` after the first session's last one.
            shift = new[-1]["ts_ms"] + gap - again[0]["ts_ms"]
            for event in again:
                event["ts_ms"] += shift
            events.extend(again)
            stats["reused_ids"] += 1
        elif roll < 0.12:
            # Continued just under the gap: one session.
            again = _session_events(rng, 200_000 + index, session_id, new[-1]["ts_ms"] + GAP_MS - 1)
            shift = new[-1]["ts_ms"] + GAP_MS - 1 - again[0]["ts_ms"]
            for event in again:
                event["event_id"] = "c" + event["event_id"]
                event["ts_ms"] += shift
            events.extend(again)
            stats["continued_ids"] += 1

    personal_values = (
        _inject_personal_data(events, random.Random(seed + 6)) if personal_data else []
    )
    deliveries = build_deliveries(events, rng, duplicate_share=duplicate_share)
    if invalid:
        for line in _invalid_lines(rng):
            position = rng.randrange(len(deliveries) + 1)
            deliveries.insert(position, Delivery(raw=line.raw, key=line.key, invalid=line))
    stats["events"] = len(events)
    stats["deliveries"] = len(deliveries)
    stats["duplicates"] = sum(d.duplicate for d in deliveries)
    return GeneratedStream(
        events=events,
        deliveries=deliveries,
        session_count_hint=sessions,
        stats=stats,
        personal_values=personal_values,
    )


def build_deliveries(
    events: list[dict[str, Any]], rng: random.Random, *, duplicate_share: float = 0.02
) -> list[Delivery]:
    """Valid events in delivery order: out of order within < 10 s, some delivered twice.

    Each delivery is ordered by ``ts_ms`` plus a jitter in [0, 9 s), so when an event is
    delivered no event more than 9 s later in event time has been delivered before it.
    """
    keyed: list[tuple[int, int, Delivery]] = []
    for n, event in enumerate(events):
        raw = encode_event(event, rng)
        key = event["session_id"].encode()
        keyed.append((event["ts_ms"] + rng.randrange(MAX_JITTER_MS), n, Delivery(raw, key, event)))
        if rng.random() < duplicate_share:
            # A producer retry: identical content, delivered again a little later.
            keyed.append(
                (
                    event["ts_ms"] + rng.randrange(MAX_JITTER_MS),
                    n,
                    Delivery(raw, key, event, duplicate=True),
                )
            )
    keyed.sort(key=lambda item: (item[0], item[1], item[2].duplicate))
    return [d for _, _, d in keyed]
