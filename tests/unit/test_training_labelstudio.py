"""Review queue export to Label Studio tasks, and import of Label Studio's JSON export."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from training.data import QUALITY_HIGH, QUALITY_REVIEW, PoolSample
from training.errors import LabelImportError
from training.labelstudio import (
    export_tasks,
    labeling_config,
    parse_export,
    read_export,
    write_tasks,
)
from training.synthetic import INTENTS


def _sample(request_id: str, quality: str = QUALITY_REVIEW) -> PoolSample:
    return PoolSample(
        session_id="sess-1",
        request_id=request_id,
        text=f"how many days to Lyon? ({request_id})",
        predicted_intent="order_status",
        confidence=0.61,
        reasons=("explicit_negative",),
        model_version="intent-v1",
        label="shipping" if quality == QUALITY_HIGH else None,
        label_source="correction" if quality == QUALITY_HIGH else "",
        quality=quality,
    )


def test_export_writes_review_queue_tasks_with_prediction(tmp_path: Path) -> None:
    tasks = export_tasks([_sample("a"), _sample("b", QUALITY_HIGH)])
    assert len(tasks) == 1
    task = tasks[0]
    assert task["data"]["text"] == "how many days to Lyon? (a)"
    assert task["meta"]["session_id"] == "sess-1" and task["meta"]["request_id"] == "a"
    prediction = task["predictions"][0]
    assert prediction["model_version"] == "intent-v1" and prediction["score"] == 0.61
    assert prediction["result"][0] == {
        "id": "prediction",
        "from_name": "intent",
        "to_name": "text",
        "type": "choices",
        "value": {"choices": ["order_status"]},
    }
    assert len(export_tasks([_sample("a"), _sample("b", QUALITY_HIGH)], include_labeled=True)) == 2
    jsonl, as_list = tmp_path / "review.jsonl", tmp_path / "review.json"
    write_tasks(tasks, jsonl)
    write_tasks(tasks, as_list)
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == tasks
    assert json.loads(as_list.read_text()) == tasks
    assert read_export(jsonl) == read_export(as_list) == tasks


def test_labeling_config_names_every_intent() -> None:
    root = ET.fromstring(labeling_config(INTENTS))
    choices = root.find("Choices")
    assert (
        choices is not None and choices.get("name") == "intent" and choices.get("toName") == "text"
    )
    assert [c.get("value") for c in choices.findall("Choice")] == list(INTENTS)


def _annotated(task: dict[str, Any], *choices: str, cancelled: bool = False) -> dict[str, Any]:
    """What Label Studio's JSON export holds for an annotated task."""
    return {
        "id": 17,
        **task,
        "annotations": [
            {
                "id": 5,
                "completed_by": 3,
                "was_cancelled": cancelled,
                "result": [
                    {
                        "id": "x1",
                        "from_name": "intent",
                        "to_name": "text",
                        "type": "choices",
                        "origin": "manual",
                        "value": {"choices": list(choices)},
                    }
                ],
            }
        ],
    }


def test_import_reads_annotations_back_as_human_labels() -> None:
    tasks = export_tasks([_sample("a"), _sample("b"), _sample("c")])
    exported = [
        _annotated(tasks[0], "shipping"),
        _annotated(tasks[1], "price", cancelled=True),  # skipped: cancelled
        tasks[2],  # skipped: not annotated
    ]
    result = parse_export(
        exported, INTENTS, {("sess-1", "a"), ("sess-1", "b"), ("sess-1", "c")}, now_ms=7
    )
    assert result.labels == [
        {
            "session_id": "sess-1",
            "request_id": "a",
            "label": "shipping",
            "annotator": "3",
            "added_ms": 7,
        }
    ]
    assert result.skipped_unlabeled == 2


def test_import_accepts_json_min_export() -> None:
    rows = [{"text": "x", "session_id": "sess-1", "request_id": "a", "intent": "returns"}]
    assert parse_export(rows, INTENTS).labels[0]["label"] == "returns"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: _annotated(t, "gift_cards"), "not in the label map"),
        (lambda t: _annotated(t, "price", "shipping"), "one choice"),
        (lambda t: _annotated({"data": {"text": "x"}}, "price"), "session_id"),
        (
            lambda t: _annotated({**t, "data": {**t["data"], "request_id": "zzz"}}, "price"),
            "no pool sample",
        ),
    ],
)
def test_import_is_all_or_nothing_and_names_the_bad_task(mutate: Any, message: str) -> None:
    good, bad = export_tasks([_sample("a"), _sample("b")])
    with pytest.raises(LabelImportError, match=message):
        parse_export(
            [_annotated(good, "shipping"), mutate(bad)], INTENTS, {("sess-1", "a"), ("sess-1", "b")}
        )


def test_unreadable_export_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text("[{not json")
    with pytest.raises(LabelImportError, match="neither a JSON list nor JSON Lines"):
        read_export(path)
    with pytest.raises(LabelImportError, match="cannot read"):
        read_export(tmp_path / "missing.json")
