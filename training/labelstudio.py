"""The human review queue, in and out of Label Studio.

Export writes Label Studio tasks (``data.text`` plus ids, ``meta``, and the model's
prediction as a pre-annotation) for the pool samples in the review queue. Import reads
Label Studio's JSON export (``annotations[].result[].value.choices``) or its JSON-MIN
export and writes the labels back to the pool as ``label_source = "human"``,
``quality = "high"``. An import is all-or-nothing: one bad task (unknown intent,
missing ids, several choices, a sample that is not in the pool) fails it and nothing
is written.

Project setup: create a Label Studio project with ``labeling_config()`` (printed by
``flywheel label config``), import the exported file, annotate, export as JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from features.redaction import DEFAULT_REDACTOR, Redactor
from training.data import QUALITY_REVIEW, PoolSample
from training.errors import LabelImportError

FROM_NAME = "intent"
TO_NAME = "text"


def labeling_config(labels: Sequence[str]) -> str:
    """Label Studio labeling config (XML) for the intent task."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return (
        "<View>\n"
        f'  <Text name="{TO_NAME}" value="$text"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def to_task(sample: PoolSample, redactor: Redactor = DEFAULT_REDACTOR) -> dict[str, Any]:
    """One Label Studio task with the model's prediction as pre-annotation."""
    ids = {"session_id": sample.session_id, "request_id": sample.request_id}
    task: dict[str, Any] = {
        "data": {
            "text": redactor.redact(sample.text),
            **ids,
            "predicted_intent": sample.predicted_intent,
            "confidence": sample.confidence,
        },
        "meta": {
            **ids,
            "model_version": sample.model_version,
            "reasons": list(sample.reasons),
            "note": sample.note,
        },
    }
    if sample.predicted_intent:
        task["predictions"] = [
            {
                "model_version": sample.model_version or "unknown",
                "score": sample.confidence if sample.confidence is not None else 0.0,
                "result": [
                    {
                        "id": "prediction",
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "type": "choices",
                        "value": {"choices": [sample.predicted_intent]},
                    }
                ],
            }
        ]
    return task


def export_tasks(
    samples: Iterable[PoolSample],
    *,
    include_labeled: bool = False,
    redactor: Redactor = DEFAULT_REDACTOR,
) -> list[dict[str, Any]]:
    """Tasks for the review queue (or every sample with ``include_labeled``)."""
    return [to_task(s, redactor) for s in samples if include_labeled or s.quality == QUALITY_REVIEW]


def write_tasks(tasks: Sequence[Mapping[str, Any]], path: Path) -> None:
    """``.json``: a JSON list (every Label Studio version imports it); else JSON Lines."""
    if path.suffix == ".json":
        path.write_text(
            json.dumps(list(tasks), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
    else:
        path.write_text(
            "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks), encoding="utf-8"
        )


def read_export(path: Path) -> list[dict[str, Any]]:
    """Tasks of a Label Studio export: a JSON list, or JSON Lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelImportError(f"cannot read {path}: {exc}") from exc
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            tasks = json.loads(text)
        else:
            tasks = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise LabelImportError(f"{path} is neither a JSON list nor JSON Lines: {exc}") from exc
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise LabelImportError(f"{path}: every task must be a JSON object")
    return list(tasks)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    labels: list[dict[str, Any]]
    skipped_unlabeled: int


def _choice(task: Mapping[str, Any]) -> tuple[str | None, str]:
    """(label, annotator) of the task's latest kept annotation; JSON-MIN has a flat field."""
    if "annotations" not in task:
        value = task.get(FROM_NAME)
        if isinstance(value, Mapping):  # JSON-MIN for choices: {"choices": [...]}
            value = value.get("choices")
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"expected one choice, got {value}")
            value = value[0]
        return (str(value) if value else None), str(task.get("annotator", ""))
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not kept:
        return None, ""
    annotation = kept[-1]
    choices: list[str] = []
    for result in annotation.get("result") or []:
        if result.get("type") == "choices" and result.get("from_name", FROM_NAME) == FROM_NAME:
            choices += list((result.get("value") or {}).get("choices") or [])
    if not choices:
        return None, ""
    if len(choices) != 1:
        raise ValueError(f"expected one choice, got {choices}")
    return str(choices[0]), str(annotation.get("completed_by", ""))


def parse_export(
    tasks: Sequence[Mapping[str, Any]],
    label_map: Sequence[str],
    known_keys: set[tuple[str, str]] | None = None,
    now_ms: int | None = None,
) -> ImportResult:
    """Human labels of an export, validated; LabelImportError lists every problem."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    problems: list[str] = []
    labels: list[dict[str, Any]] = []
    skipped = 0
    for number, task in enumerate(tasks, start=1):
        where = f"task {task.get('id', number)}"
        data: Mapping[str, Any] = task["data"] if isinstance(task.get("data"), Mapping) else task
        meta: Mapping[str, Any] = task["meta"] if isinstance(task.get("meta"), Mapping) else {}
        session_id = data.get("session_id") or meta.get("session_id")
        request_id = data.get("request_id") or meta.get("request_id")
        try:
            label, annotator = _choice(task)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if label is None:
            skipped += 1
            continue
        if not session_id or not request_id:
            problems.append(f"{where}: data.session_id and data.request_id are required")
            continue
        if label not in label_map:
            problems.append(f"{where}: label {label!r} is not in the label map {list(label_map)}")
            continue
        key = (str(session_id), str(request_id))
        if known_keys is not None and key not in known_keys:
            problems.append(
                f"{where}: no pool sample with session_id={key[0]!r} request_id={key[1]!r}"
            )
            continue
        labels.append(
            {
                "session_id": key[0],
                "request_id": key[1],
                "label": label,
                "annotator": annotator,
                "added_ms": now_ms,
            }
        )
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise LabelImportError(f"{len(problems)} bad task(s), nothing imported: {shown}{more}")
    return ImportResult(labels=labels, skipped_unlabeled=skipped)


__all__ = [
    "ImportResult",
    "export_tasks",
    "labeling_config",
    "parse_export",
    "read_export",
    "to_task",
    "write_tasks",
]
