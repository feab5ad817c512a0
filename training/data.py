"""Pool samples: from a flagged-session message to labeled training rows.

Pure functions, no I/O: the Kafka consumer (``training.pool``) and the tests call them.

A flagged-session message (contract section 5) becomes

* one **intent sample** per user message of the transcript that has a
  ``predicted_intent``, labeled by the rule below, and
* one **edit pair** per ``edit`` feedback with ``corrected_text`` whose ``request_id``
  names an assistant message (the causal-LM task).

Label rule (in this order):

1. ``correction`` feedback with the message's ``request_id`` and a ``corrected_intent``
   in the label set -> ``label = corrected_intent``, ``label_source = "correction"``,
   ``quality = "high"``. A corrected intent outside the label set is kept for review
   with a ``note`` (never silently used, never dropped).
2. Auto-label: the prediction had ``intent_confidence >= auto_label_min_confidence``,
   the session ended with an order (when ``auto_label_requires_order``), and no
   negative feedback (``thumbs_down``, ``correction``, ``edit``, ``rating <= 2``) names
   this request -> the predicted intent is kept, ``label_source = "auto"``,
   ``quality = "medium"``.
3. Everything else -> ``quality = "review"`` (the human review queue).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from features.compute import is_negative_feedback
from schemas.flagged import FlaggedMessage, InvalidFlaggedMessage, TranscriptEntry
from training.errors import EmptyPoolError, OneClassPoolError, UnknownLabelError
from training.settings import PoolConfig
from training.synthetic import LabeledText, normalize

QUALITY_HIGH = "high"
QUALITY_MEDIUM = "medium"
QUALITY_REVIEW = "review"
TRAINABLE_QUALITIES = (QUALITY_HIGH, QUALITY_MEDIUM)

# Which row wins when the same (session_id, request_id) appears more than once.
_SOURCE_RANK = {"human": 4, "correction": 3, "auto": 2, "": 1}

POOL_SLICE = "flagged"


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSample:
    """One user message of a flagged session, with its label (if any)."""

    session_id: str
    request_id: str
    text: str
    predicted_intent: str
    confidence: float | None
    reasons: tuple[str, ...] = ()
    model_version: str = ""
    label: str | None = None
    label_source: str = ""
    quality: str = QUALITY_REVIEW
    note: str = ""
    user_id: str = ""
    session_start_ms: int = 0
    ts_ms: int = 0
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    added_ms: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.session_id, self.request_id)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["reasons"] = list(self.reasons)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PoolSample:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in row.items() if k in names}
        kwargs["reasons"] = tuple(kwargs.get("reasons") or ())
        return cls(**kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class EditPair:
    """An assistant response the user rewrote: the causal-LM training pair."""

    session_id: str
    request_id: str
    prompt: str
    response: str
    corrected_response: str
    model_version: str = ""
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    added_ms: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.session_id, self.request_id)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EditPair:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True, slots=True, kw_only=True)
class FlaggedRejection:
    """A flagged message that could not be read (errors are data)."""

    reason: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    raw: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Extracted:
    samples: list[PoolSample] = field(default_factory=list)
    edits: list[EditPair] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourcePosition:
    topic: str = ""
    partition: int = -1
    offset: int = -1


def validate_flagged(message: Any) -> str | None:
    """None when the decoded message is one the pool can use, else why not."""
    try:
        FlaggedMessage.from_dict(message)
    except InvalidFlaggedMessage as exc:
        return str(exc)
    return None


def extract_samples(
    message: FlaggedMessage | Mapping[str, Any],
    config: PoolConfig,
    label_set: Sequence[str],
    *,
    source: SourcePosition = SourcePosition(),
    now_ms: int = 0,
) -> Extracted:
    """Pool samples and edit pairs of one flagged-session message.

    A decoded JSON object is read with ``FlaggedMessage.from_dict`` first (it raises
    ``InvalidFlaggedMessage`` for one the pool cannot use).
    """
    if not isinstance(message, FlaggedMessage):
        message = FlaggedMessage.from_dict(message)
    session_id = message.session_id
    ordered = int(message.features.get("order_count") or 0) > 0
    corrections: dict[str, str] = {}
    negative_requests: set[str] = set()
    edits_by_request: dict[str, str] = {}
    for item in message.feedback:
        if not item.request_id:
            continue
        if is_negative_feedback(item.kind, item.rating):
            negative_requests.add(item.request_id)
        if item.kind == "correction" and item.corrected_intent:
            corrections[item.request_id] = item.corrected_intent
        if item.kind == "edit" and item.corrected_text:
            edits_by_request[item.request_id] = item.corrected_text

    common: dict[str, Any] = {
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "added_ms": now_ms,
    }
    samples: list[PoolSample] = []
    edits: list[EditPair] = []
    transcript = message.transcript
    for index, turn in enumerate(transcript):
        request_id = turn.request_id
        if turn.role == "user" and turn.predicted_intent:
            # A message without request_id still gets a stable key: its position.
            key = request_id if request_id else f"@{turn.ts_ms}:{index}"
            label, source_name, quality, note = _label(
                key,
                turn.predicted_intent,
                turn.intent_confidence,
                corrections,
                negative_requests,
                ordered,
                config,
                label_set,
            )
            samples.append(
                PoolSample(
                    session_id=session_id,
                    request_id=key,
                    text=turn.text,
                    predicted_intent=turn.predicted_intent,
                    confidence=turn.intent_confidence,
                    reasons=message.reasons,
                    model_version=message.model_version,
                    label=label,
                    label_source=source_name,
                    quality=quality,
                    note=note,
                    user_id=message.user_id,
                    session_start_ms=message.session_start_ms,
                    ts_ms=turn.ts_ms,
                    **common,
                )
            )
        elif turn.role == "assistant" and request_id and request_id in edits_by_request:
            context = transcript[max(0, index - config.edit_context_turns) : index]
            edits.append(
                EditPair(
                    session_id=session_id,
                    request_id=request_id,
                    prompt=format_prompt(context),
                    response=turn.text,
                    corrected_response=edits_by_request[request_id],
                    model_version=message.model_version,
                    **common,
                )
            )
    return Extracted(samples=samples, edits=edits)


def format_prompt(turns: Sequence[TranscriptEntry | Mapping[str, Any]]) -> str:
    """Dialogue turns as the causal LM sees them, ending where the assistant answers."""
    lines = []
    role: Any
    text: Any
    for turn in turns:
        if isinstance(turn, TranscriptEntry):
            role, text = turn.role, turn.text
        else:
            role, text = turn.get("role"), turn.get("text")
        speaker = "User" if role == "user" else "Assistant"
        lines.append(f"{speaker}: {text or ''}")
    lines.append("Assistant:")
    return "\n".join(lines)


def _label(
    request_id: str,
    predicted: str,
    confidence: float | None,
    corrections: Mapping[str, str],
    negative_requests: set[str],
    ordered: bool,
    config: PoolConfig,
    label_set: Sequence[str],
) -> tuple[str | None, str, str, str]:
    corrected = corrections.get(request_id)
    if corrected is not None:
        if corrected in label_set:
            return corrected, "correction", QUALITY_HIGH, ""
        return None, "", QUALITY_REVIEW, f"corrected_intent {corrected!r} is not a known intent"
    if (
        confidence is not None
        and confidence >= config.auto_label_min_confidence
        and (ordered or not config.auto_label_requires_order)
        and request_id not in negative_requests
        and predicted in label_set
    ):
        return predicted, "auto", QUALITY_MEDIUM, ""
    return None, "", QUALITY_REVIEW, ""


def _rank(sample: PoolSample) -> tuple[int, int, int, int]:
    return (
        _SOURCE_RANK.get(sample.label_source, 0) if sample.label else 0,
        sample.added_ms,
        sample.source_offset,
        sample.source_partition,
    )


def dedupe_samples(samples: Iterable[PoolSample]) -> list[PoolSample]:
    """One sample per (session_id, request_id): the best label, then the newest write."""
    best: dict[tuple[str, str], PoolSample] = {}
    for sample in samples:
        current = best.get(sample.key)
        if current is None or _rank(sample) > _rank(current):
            best[sample.key] = sample
    return sorted(best.values(), key=lambda s: (s.session_id, s.ts_ms, s.request_id))


def dedupe_edits(edits: Iterable[EditPair]) -> list[EditPair]:
    """One edit pair per (session_id, request_id), the newest write winning."""
    best: dict[tuple[str, str], EditPair] = {}
    for pair in edits:
        current = best.get(pair.key)
        if current is None or (pair.added_ms, pair.source_offset) > (
            current.added_ms,
            current.source_offset,
        ):
            best[pair.key] = pair
    return sorted(best.values(), key=lambda p: p.key)


def apply_human_labels(
    samples: Iterable[PoolSample], labels: Mapping[tuple[str, str], tuple[str, int]]
) -> list[PoolSample]:
    """Overlay imported human labels ((session_id, request_id) -> (label, added_ms))."""
    out = []
    for sample in samples:
        human = labels.get(sample.key)
        if human is not None:
            sample = replace(
                sample,
                label=human[0],
                label_source="human",
                quality=QUALITY_HIGH,
                note="",
                added_ms=max(sample.added_ms, human[1]),
            )
        out.append(sample)
    return out


def pool_counts(samples: Sequence[PoolSample]) -> dict[str, int]:
    """The ``fw:pool`` hash fields."""
    counts = Counter(s.quality for s in samples)
    return {
        "samples_total": len(samples),
        "labeled_high": counts[QUALITY_HIGH],
        "labeled_medium": counts[QUALITY_MEDIUM],
        "review_queue": counts[QUALITY_REVIEW],
    }


def session_bucket(session_id: str) -> float:
    """Position of a session in [0, 1), from the SHA-256 of its id."""
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_eval_session(session_id: str, eval_share: float) -> bool:
    """Sessions held out of training to form the gate's failure slice."""
    return session_bucket(session_id) < eval_share


def labeled(samples: Iterable[PoolSample]) -> list[PoolSample]:
    """Samples with a trainable label."""
    return [s for s in samples if s.quality in TRAINABLE_QUALITIES and s.label]


def check_labels(labels: Iterable[str], label_map: Sequence[str], where: str) -> None:
    """Raise UnknownLabelError when any label is outside the label map."""
    unknown = sorted({label for label in labels if label not in label_map})
    if unknown:
        raise UnknownLabelError(unknown, list(label_map), where)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingExample:
    """One row of a training set, with where it came from."""

    text: str
    label: str
    origin: str  # "pool" or "replay" or "base"
    slice: str = ""
    session_id: str = ""
    request_id: str = ""
    quality: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingSet:
    """What a trainer sees, plus the pool samples held out for the gate."""

    train: list[TrainingExample]
    failure_slice: list[LabeledText]
    eval_keys: list[tuple[str, str]]
    source_offsets: list[dict[str, Any]]
    # Corrections kept out as untrusted (trust_user_labels), with their reasons in `note`.
    sent_to_review: list[PoolSample] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """Training rows plus held-out keys, as written to training_data.parquet."""
        rows = [{**asdict(e), "split": "train"} for e in self.train]
        rows += [
            {
                "text": "",
                "label": "",
                "origin": "pool",
                "slice": POOL_SLICE,
                "session_id": s,
                "request_id": r,
                "quality": "",
                "split": "eval",
            }
            for s, r in self.eval_keys
        ]
        return rows


def source_offsets(samples: Iterable[PoolSample]) -> list[dict[str, Any]]:
    """Kafka offset range per (topic, partition) that the samples were read from."""
    ranges: dict[tuple[str, int], list[int]] = defaultdict(list)
    for sample in samples:
        if sample.source_topic and sample.source_offset >= 0:
            ranges[(sample.source_topic, sample.source_partition)].append(sample.source_offset)
    return [
        {"topic": t, "partition": p, "first_offset": min(o), "last_offset": max(o)}
        for (t, p), o in sorted(ranges.items())
    ]


def base_examples(rows: Iterable[LabeledText], origin: str = "base") -> list[TrainingExample]:
    return [TrainingExample(text=r.text, label=r.label, origin=origin, slice=r.slice) for r in rows]


# Contradicted corrections after which a user's other corrections of the round go to review.
UNTRUSTED_AFTER_CONTRADICTIONS = 2


def _contradictions(
    corrections: Sequence[PoolSample],
    by_text: Mapping[str, Sequence[PoolSample]],
    ignored_users: set[str],
) -> dict[tuple[str, str], str]:
    """Corrections whose label differs from the others' for the same normalized text.

    Human labels decide where there are any; else each other user counts once (so one
    user posting many labels outvotes nobody), users in ``ignored_users`` not at all.
    """
    demoted: dict[tuple[str, str], str] = {}
    for sample in corrections:
        if sample.user_id in ignored_users:
            continue
        same_text = by_text[normalize(sample.text)]
        others = Counter(o.label for o in same_text if o.label_source == "human")
        if not others:
            others = Counter(
                label
                for _, label in {
                    (o.user_id, o.label)
                    for o in same_text
                    if o.user_id != sample.user_id and o.user_id not in ignored_users
                }
            )
        if others and others.get(sample.label or "", 0) < max(others.values()):
            demoted[sample.key] = (
                f"corrected_intent {sample.label!r} contradicts other labels for this text "
                f"({dict(sorted(others.items(), key=lambda kv: str(kv[0])))})"
            )
    return demoted


def trust_user_labels(
    samples: Sequence[PoolSample], *, max_corrections_per_user: int
) -> tuple[list[PoolSample], list[PoolSample]]:
    """End users' corrections are untrusted labels: ``(kept, sent to review)``.

    * A correction whose label differs from what human labelers gave the same normalized
      text (or, without human labels, what most other users gave it, each user counted
      once) goes to the review queue.
    * A user with ``UNTRUSTED_AFTER_CONTRADICTIONS`` (2) or more such contradictions is
      untrusted for the round: all their corrections go to review and their labels no
      longer count against anyone else's. Users are judged worst first, again after
      each one is set aside, so an attacker copying honest users' texts takes only
      themselves out, not the users they contradicted.
    * A trusted user's corrections count at most ``max_corrections_per_user`` per
      training set (their earliest ones); the rest go to the review queue.

    Human labels and auto labels are kept as they are.
    """
    corrections = [s for s in samples if s.label_source == "correction" and s.label]
    by_text: dict[str, list[PoolSample]] = defaultdict(list)
    for sample in samples:
        if sample.label and sample.label_source in ("correction", "human"):
            by_text[normalize(sample.text)].append(sample)
    untrusted: dict[str, int] = {}
    untrusted_notes: dict[tuple[str, str], str] = {}  # their contradictions, as found
    while True:
        demoted = _contradictions(corrections, by_text, set(untrusted))
        user_of = {s.key: s.user_id for s in corrections if s.key in demoted}
        per_user = Counter(user_of.values())
        if not per_user:
            break
        worst, count = min(per_user.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < UNTRUSTED_AFTER_CONTRADICTIONS:
            break
        untrusted[worst] = count
        untrusted_notes.update({k: v for k, v in demoted.items() if user_of[k] == worst})
    for sample in corrections:
        if sample.user_id in untrusted:
            demoted[sample.key] = untrusted_notes.get(sample.key) or (
                f"this user's corrections contradict other users' labels "
                f"({untrusted[sample.user_id]} times this round)"
            )
    counted: dict[str, int] = Counter()
    for sample in sorted(corrections, key=lambda s: (s.ts_ms, s.session_id, s.request_id)):
        if sample.key in demoted:
            continue
        counted[sample.user_id] += 1
        if counted[sample.user_id] > max_corrections_per_user:
            demoted[sample.key] = (
                f"over {max_corrections_per_user} corrections from one user in one round"
            )
    kept: list[PoolSample] = []
    review: list[PoolSample] = []
    for sample in samples:
        note = demoted.get(sample.key)
        if note is None or sample.label_source != "correction":
            kept.append(sample)
        else:
            review.append(
                replace(sample, label=None, label_source="", quality=QUALITY_REVIEW, note=note)
            )
    return kept, review


def build_training_set(
    pool: Sequence[PoolSample],
    base: Sequence[LabeledText],
    label_map: Sequence[str],
    *,
    replay_ratio: float,
    min_replay: int = 0,
    eval_share: float,
    min_pool_classes: int,
    seed: int,
    max_corrections_per_user: int | None = None,
) -> TrainingSet:
    """Labeled pool (minus the held-out sessions) plus a stratified replay of base data.

    With ``max_corrections_per_user``, end users' corrections pass ``trust_user_labels``
    first. Raises EmptyPoolError, OneClassPoolError or UnknownLabelError before any
    training.
    """
    review: list[PoolSample] = []
    if max_corrections_per_user is not None:
        pool, review = trust_user_labels(pool, max_corrections_per_user=max_corrections_per_user)
    usable = labeled(pool)
    if not usable:
        raise EmptyPoolError(
            f"the pool has no labeled samples ({len(pool)} samples, all in the review queue); "
            "label them (flywheel label export/import) or wait for corrections"
        )
    check_labels([s.label or "" for s in usable], label_map, "pool")
    train_pool = [s for s in usable if not is_eval_session(s.session_id, eval_share)]
    eval_pool = [s for s in usable if is_eval_session(s.session_id, eval_share)]
    if not train_pool:
        raise EmptyPoolError(
            f"all {len(usable)} labeled samples fall in held-out sessions; the pool is too small"
        )
    classes = sorted({s.label or "" for s in usable})
    if len(classes) < min_pool_classes:
        raise OneClassPoolError(
            f"the labeled pool covers {len(classes)} intent(s) {classes}; at least "
            f"{min_pool_classes} are required (set trainer.min_pool_classes to change)"
        )
    pool_texts = {normalize(s.text) for s in usable}
    candidates = [r for r in base if normalize(r.text) not in pool_texts]
    replay_n = min(len(candidates), max(min_replay, math.ceil(replay_ratio * len(train_pool))))
    replay = stratified_sample(candidates, replay_n, seed)
    train = [
        TrainingExample(
            text=s.text,
            label=s.label or "",
            origin="pool",
            slice=POOL_SLICE,
            session_id=s.session_id,
            request_id=s.request_id,
            quality=s.quality,
        )
        for s in train_pool
    ] + base_examples(replay, origin="replay")
    random.Random(f"order:{seed}").shuffle(train)
    return TrainingSet(
        train=train,
        failure_slice=[
            LabeledText(text=s.text, label=s.label or "", slice=POOL_SLICE) for s in eval_pool
        ],
        eval_keys=[s.key for s in eval_pool],
        source_offsets=source_offsets(usable),
        sent_to_review=review,
    )


def stratified_sample(rows: Sequence[LabeledText], n: int, seed: int) -> list[LabeledText]:
    """``n`` rows with every label represented in proportion, deterministically."""
    if n >= len(rows):
        return list(rows)
    by_label: dict[str, list[LabeledText]] = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    rng = random.Random(f"replay:{seed}")
    total = len(rows)
    labels = sorted(by_label)
    # Largest-remainder apportionment: exactly n rows, each label in proportion.
    quotas = {label: n * len(by_label[label]) / total for label in labels}
    takes = {label: int(quotas[label]) for label in labels}
    by_remainder = sorted(labels, key=lambda label: (-(quotas[label] - takes[label]), label))
    for label in by_remainder[: n - sum(takes.values())]:
        takes[label] += 1
    out: list[LabeledText] = []
    for label in labels:
        out += rng.sample(by_label[label], takes[label])
    return out


def dataset_sha256(rows: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 of rows as canonical JSON lines: the exact-data fingerprint."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


__all__ = [
    "EditPair",
    "Extracted",
    "FlaggedRejection",
    "POOL_SLICE",
    "PoolSample",
    "QUALITY_HIGH",
    "QUALITY_MEDIUM",
    "QUALITY_REVIEW",
    "SourcePosition",
    "TrainingExample",
    "TrainingSet",
    "apply_human_labels",
    "build_training_set",
    "check_labels",
    "dataset_sha256",
    "dedupe_edits",
    "dedupe_samples",
    "extract_samples",
    "format_prompt",
    "is_eval_session",
    "labeled",
    "pool_counts",
    "source_offsets",
    "stratified_sample",
    "trust_user_labels",
    "validate_flagged",
]
