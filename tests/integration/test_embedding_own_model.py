"""A user's own sentence model, given by ``embedding_model_path``, compares Chinese texts.

The packaged all-MiniLM-L6-v2 reads most Chinese characters as ``[UNK]``, so the
contract's unreadable-text rule keeps Chinese messages out of every embedding comparison
(test_embedding_unreadable.py). A user who needs them compared brings a model that reads
them. This test builds one offline (``reference.tiny_sentence_model``: a vocabulary of
the stream's Chinese characters and nothing else, a text's vector its bag of characters),
runs the real streaming and batch jobs over a stream with Chinese sessions with that
model configured, and checks every closed session against the contract reference
computed with the same model. The rule follows the configured model's tokenizer: to
this model the English texts are the unreadable ones.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reference.contract_reference import (
    ModelSimilarity,
    assert_rows_equal_reference,
    compute_reference,
    model_similarity,
)
from reference.generator import BASE_TS_MS, generate_stream, literal_event
from reference.job_harness import JobSandbox, job_sandbox, running_job
from reference.tiny_sentence_model import build_character_model

pytestmark = [pytest.mark.integration, pytest.mark.flink]

CJK = re.compile(r"[\u3400-\u9fff\uff01-\uff5e\u3000-\u303f]")
THRESHOLD_MARGIN = 0.01
ASK_PRICE = "请问这个多少钱"
ASK_PRICE_AGAIN = "请问这个多少钱呢"  # not normalized-equal: a repeat only by embedding
ASK_SHIPPING = "什么时候能发货"


def _chinese_sessions() -> list[dict[str, Any]]:
    """Two hand-written Chinese sessions: a paraphrased repeat and two different questions."""
    t = BASE_TS_MS + 3_600_000
    events: list[dict[str, Any]] = []
    for sid, texts in (
        ("zh-repeat", [ASK_PRICE, ASK_PRICE_AGAIN]),
        ("zh-distinct", [ASK_PRICE, ASK_SHIPPING]),
    ):
        n = 0
        for text in texts:
            n += 1
            events.append(
                literal_event(sid, n, "user_message", t, text=text, request_id=f"{sid}-q{n}")
            )
            n += 1
            events.append(
                literal_event(
                    sid, n, "assistant_message", t + 2_000, text="好的", request_id=f"{sid}-a{n}"
                )
            )
            t += 20_000
    return events


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    generated = generate_stream(60, seed=31337, invalid=False, duplicate_share=0.0).events
    return sorted(generated + _chinese_sessions(), key=lambda e: (e["ts_ms"], e["event_id"]))


@pytest.fixture(scope="module")
def model_path(events: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    characters = {
        c for e in events if e["event_type"] == "user_message" for c in e["text"] if CJK.match(c)
    }
    return build_character_model(tmp_path_factory.mktemp("own-model") / "model", characters)


@pytest.fixture(scope="module")
def similarity(model_path: Path, events: list[dict[str, Any]]) -> ModelSimilarity:
    own = ModelSimilarity(model_path)
    own.prepare(e["text"] for e in events if e["event_type"] == "user_message")
    return own


@pytest.fixture(scope="module")
def sandbox(
    stack_endpoints: Any, kafka_admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobSandbox]:
    with job_sandbox(
        stack_endpoints, kafka_admin, tmp_path_factory.mktemp("own-model-job"), "ownmodel"
    ) as box:
        yield box


def _lines(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e, ensure_ascii=False).encode() for e in events]


@pytest.fixture(scope="module")
def streaming(
    sandbox: JobSandbox, events: list[dict[str, Any]], model_path: Path
) -> list[dict[str, Any]]:
    """The streaming job over the events on Kafka, with the own model configured."""
    sandbox.produce(
        (e["session_id"].encode(), line) for e, line in zip(events, _lines(events), strict=True)
    )
    started = time.monotonic()
    with running_job(sandbox.context(embedding_model_path=str(model_path))) as run:
        run.stop_when_idle(idle_s=3, drain=True)
    print(f"\nstreaming with own model: {len(events)} events in {time.monotonic() - started:.0f} s")
    return sandbox.parquet_rows("flywheel/session_features")


@pytest.fixture(scope="module")
def backfill(
    sandbox: JobSandbox, events: list[dict[str, Any]], model_path: Path
) -> list[dict[str, Any]]:
    """The batch job over the same events as JSON Lines, with the own model configured."""
    from jobs.commands import run_backfill

    sandbox.put_object("input/part-0.jsonl", b"\n".join(_lines(events)) + b"\n")
    ctx = sandbox.context(embedding_model_path=str(model_path))
    started = time.monotonic()
    run_backfill(ctx, f"s3://{sandbox.bucket}/input/", f"s3://{sandbox.bucket}/backfill")
    print(f"\nbackfill with own model: {len(events)} events in {time.monotonic() - started:.0f} s")
    return sandbox.parquet_rows("backfill/session_features")


def _assert_rows_equal_reference(rows: list[dict[str, Any]], reference: Any) -> None:
    assert_rows_equal_reference(rows, reference)
    repeats = {r["session_id"]: r["repeated_question_count"] for r in rows}
    assert repeats["zh-repeat"] == 1, "the paraphrased Chinese question counts as a repeat"
    assert repeats["zh-distinct"] == 0


@pytest.fixture(scope="module")
def reference(events: list[dict[str, Any]], similarity: ModelSimilarity) -> Any:
    reference = compute_reference(events, similarity=similarity)
    # Chinese texts were compared by embedding, none of them near the threshold, where
    # float rounding between two processes could decide differently.
    assert reference.similarity_log.repeats_by_embedding_only >= 1
    assert reference.similarity_log.closest_to(0.85) >= THRESHOLD_MARGIN
    return reference


def test_the_rule_follows_the_configured_models_tokenizer(similarity: ModelSimilarity) -> None:
    assert similarity.readable(ASK_PRICE) and similarity.readable(ASK_SHIPPING)
    assert not similarity.readable("How long does shipping to Lyon take?")
    assert similarity(ASK_PRICE, ASK_PRICE_AGAIN) >= 0.85 + THRESHOLD_MARGIN
    assert similarity(ASK_PRICE, ASK_SHIPPING) <= 0.85 - THRESHOLD_MARGIN
    # The packaged model cannot read either text: with it no Chinese pair is ever compared.
    assert model_similarity()(ASK_PRICE, ASK_PRICE_AGAIN) == float("-inf")


def test_streaming_with_own_model_equals_the_reference_with_that_model(
    streaming: list[dict[str, Any]], reference: Any
) -> None:
    _assert_rows_equal_reference(streaming, reference)


def test_backfill_with_own_model_equals_the_reference_with_that_model(
    backfill: list[dict[str, Any]], reference: Any
) -> None:
    _assert_rows_equal_reference(backfill, reference)
