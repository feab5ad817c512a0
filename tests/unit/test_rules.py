"""The rule language: defaults, evaluation, and everything it must refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from features import FEATURE_COLUMNS, RuleError, RuleSet
from features.rules import Rule

DEFAULT_EXPRESSIONS = {
    "cta_ignored": "cta_not_clicked_count > 0 and no_order",
    "stuck_loop": "repeated_question_count > 0 and fsm_stalled",
    "abandoned": "long_silence_count > 0 and no_conversion",
    "explicit_negative": "negative_feedback_count > 0",
    "uncertain_and_corrected": (
        "low_confidence_count > 0 and (correction_count > 0 or repeated_question_count > 0)"
    ),
}


def quiet_row(**overrides: Any) -> dict[str, Any]:
    """A feature row on which no default rule holds."""
    row: dict[str, Any] = {
        "session_id": "s", "user_id": "u", "session_start_ms": 1, "session_end_ms": 2,
        "event_count": 2, "user_turns": 1, "assistant_turns": 1, "cta_sent_count": 0,
        "cta_clicked_count": 0, "cta_not_clicked_count": 0, "order_count": 0,
        "carted": False, "no_order": True, "no_conversion": True,
        "repeated_question_count": 0, "fsm_state_final": "", "fsm_transitions": 0,
        "max_stall_turns": 1, "fsm_stalled": False, "long_silence_count": 0,
        "low_confidence_count": 0, "min_intent_confidence": None, "correction_count": 0,
        "negative_feedback_count": 0, "positive_feedback_count": 0,
        "slow_response_count": 0, "model_version": "", "reasons": [], "flagged": False,
    }  # fmt: skip
    assert list(row) == list(FEATURE_COLUMNS)
    row.update(overrides)
    return row


def test_default_rules_are_the_contracts() -> None:
    rules = RuleSet.default()
    assert {rule.id: rule.expression for rule in rules} == DEFAULT_EXPRESSIONS
    assert rules.ids == tuple(DEFAULT_EXPRESSIONS)
    assert len(rules) == 5


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, []),
        ({"cta_not_clicked_count": 1}, ["cta_ignored"]),
        ({"cta_not_clicked_count": 1, "no_order": False}, []),
        ({"repeated_question_count": 1, "fsm_stalled": True}, ["stuck_loop"]),
        ({"repeated_question_count": 1}, []),
        ({"long_silence_count": 2}, ["abandoned"]),
        ({"long_silence_count": 2, "no_conversion": False}, []),
        ({"negative_feedback_count": 1}, ["explicit_negative"]),
        ({"low_confidence_count": 1, "correction_count": 1}, ["uncertain_and_corrected"]),
        ({"low_confidence_count": 1}, []),
        (
            {"low_confidence_count": 1, "repeated_question_count": 1, "fsm_stalled": True,
             "negative_feedback_count": 3, "cta_not_clicked_count": 1,
             "long_silence_count": 1},
            ["abandoned", "cta_ignored", "explicit_negative", "stuck_loop",
             "uncertain_and_corrected"],
        ),
    ],
)  # fmt: skip
def test_default_rules_evaluate_sorted(overrides: dict[str, Any], expected: list[str]) -> None:
    assert RuleSet.default().evaluate(quiet_row(**overrides)) == expected


@pytest.mark.parametrize(
    ("expression", "overrides", "holds"),
    [
        ("event_count >= 2", {}, True),
        ("event_count > 2", {}, False),
        ("event_count <= 2 and event_count < 3", {}, True),
        ("event_count == 2", {}, True),
        ("event_count != 2", {}, False),
        ("not carted", {}, True),
        ("not not carted", {}, False),
        ("carted == false", {}, True),
        ("carted == False", {}, True),
        ("no_order == true", {}, True),
        ("no_order != True", {}, False),
        ("true", {}, True),
        ("false or (true and not false)", {}, True),
        ("carted or no_order and false", {}, False),  # and binds tighter than or
        ("(carted or no_order) and true", {}, True),
        ("not event_count > 5", {}, True),  # not applies to the comparison
        ("(event_count > 1) == (user_turns > 0)", {}, True),
        ("min_intent_confidence < 0.5", {"min_intent_confidence": 0.4}, True),
        ("min_intent_confidence < 0.5", {"min_intent_confidence": None}, False),
        ("min_intent_confidence >= 0.5", {"min_intent_confidence": None}, False),
        ("min_intent_confidence != 0.5", {"min_intent_confidence": None}, False),
        ("session_end_ms - 1 > 0", {}, None),  # arithmetic: rejected below
        ("cta_not_clicked_count > -1", {}, True),
        ("event_count > 1.5", {}, True),
        ("event_count > 1e0", {}, True),
        ("event_count>1and user_turns==1", {}, None),  # malformed number '1and'
        ("event_count > 1 and user_turns == 1", {}, True),
        ("\n  event_count > 1\n", {}, True),
    ],
)
def test_expressions(expression: str, overrides: dict[str, Any], holds: bool | None) -> None:
    if holds is None:
        with pytest.raises(RuleError):
            Rule.compile("r", expression)
        return
    assert Rule.compile("r", expression).holds(quiet_row(**overrides)) is holds


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("unknown_column > 0", "unknown column 'unknown_column'"),
        ("Event_count > 0", "unknown column 'Event_count'"),
        ("__import__('os').system('x')", "dunder"),
        ("len(reasons) > 0", "function calls are not allowed"),
        ("max(event_count, 3) > 0", "function calls are not allowed"),
        ("event_count.real > 0", "attribute access"),
        ("session_id.__class__", "attribute access"),
        ("event_count + 1 > 2", "arithmetic"),
        ("event_count * 2 > 2", "arithmetic"),
        ("event_count > 2 - 1", "arithmetic"),
        ("event_count / 2 > 2", "arithmetic"),
        ("model_version == 'm-1'", "string literals"),
        ('model_version == "m-1"', "string literals"),
        ("fsm_state_final == fsm_state_final", "string"),
        ("session_id", "string"),
        ("flagged", "computed from the rules"),
        ("reasons", "computed from the rules"),
        ("event_count", "needs a boolean"),
        ("event_count and carted", "needs a boolean"),
        ("not event_count", "needs a boolean"),
        ("carted > 0", "compares numbers only"),
        ("carted == 1", "cannot compare"),
        ("1 < event_count < 3", "chained comparisons"),
        ("event_count = 1", "use '=='"),
        ("event_count > 1 && carted", "use 'and'"),
        ("event_count > 1 || carted", "use 'or'"),
        ("!carted", "use 'not'"),
        ("event_count in [1, 2]", "not part of the rule language"),
        ("carted is True", "not part of the rule language"),
        ("lambda: 1", "not part of the rule language"),
        ("carted if true else false", "not part of the rule language"),
        ("min_intent_confidence == None", "not part of the rule language"),
        ("[x for x in y]", "lists are not allowed"),
        ("carted; import os", "only one expression"),
        ("(carted", "expected ')'"),
        ("carted)", "unexpected ')'"),
        ("carted and", "ends too early"),
        ("", "empty"),
        ("   ", "empty"),
        ("carted carted", "unexpected 'carted'"),
        ("event_count > 0 # comment", "comments"),
        ("event_count > 0x10", "malformed number"),
        ("carted ** 2", "arithmetic"),
        ("{1: 2}", "braces"),
        ("`carted`", "backticks"),
        ("événements > 0", "unexpected character"),
        ("(" * 51 + "carted" + ")" * 51, "nested too deeply"),
        ("not " * 51 + "carted", "nested too deeply"),
        ("(" * 200 + "carted" + ")" * 200, "nested too deeply"),
    ],
)
def test_forbidden_and_invalid_expressions_name_the_rule(expression: str, message: str) -> None:
    with pytest.raises(RuleError) as info:
        RuleSet.from_mapping({"my_rule": expression})
    assert info.value.rule_id == "my_rule"
    assert "rule 'my_rule'" in str(info.value)
    assert message in str(info.value)


def test_rules_never_evaluate_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch() or true"
    with pytest.raises(RuleError):
        RuleSet.from_mapping({"evil": payload})
    assert not marker.exists()


def test_from_yaml_text_list_form() -> None:
    rules = RuleSet.from_yaml(
        "rules:\n"
        "  - id: many_turns\n"
        "    expression: user_turns >= 10\n"
        "    description: Long conversation\n"
        "  - id: slow\n"
        "    expression: slow_response_count > 0\n"
    )
    assert rules.ids == ("many_turns", "slow")
    assert rules.columns == {"user_turns", "slow_response_count"}
    assert list(rules)[0].description == "Long conversation"
    assert rules.evaluate(quiet_row(user_turns=12, slow_response_count=1)) == ["many_turns", "slow"]


def test_from_yaml_mapping_forms() -> None:
    assert RuleSet.from_yaml("rules:\n  a: carted\n  b: no_order\n").ids == ("a", "b")
    assert RuleSet.from_yaml("a: carted\n").ids == ("a",)
    assert RuleSet.from_yaml("- id: a\n  expression: carted\n").ids == ("a",)
    assert len(RuleSet.from_yaml("rules: []\n")) == 0
    assert RuleSet.from_yaml("rules: []\n").evaluate(quiet_row()) == []


def test_from_yaml_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - id: x\n    expression: carted\n", encoding="utf-8")
    assert RuleSet.from_yaml(path).ids == ("x",)
    assert RuleSet.from_yaml(str(path)).ids == ("x",)
    assert RuleSet.from_file(path).ids == ("x",)
    other = tmp_path / "rules.conf"
    other.write_text("- id: y\n  expression: carted\n", encoding="utf-8")
    assert RuleSet.from_yaml(str(other)).ids == ("y",)
    with pytest.raises(RuleError, match="cannot read rule file"):
        RuleSet.from_yaml(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize(
    ("text", "rule_id", "message"),
    [
        ("rules:\n  - id: a\n    expression: carted\n  - id: a\n    expression: carted\n",
         "a", "duplicate rule id"),
        ("rules:\n  - id: a\n", "a", "missing 'expression'"),
        ("rules:\n  - id: a\n    expression: carted\n    severity: high\n", "a",
         "unknown keys: severity"),
        ("rules:\n  - expression: carted\n", None, "no string 'id'"),
        ("rules:\n  - carted\n", None, "must be a mapping"),
        ("rules: 5\n", None, "expected a list of rules"),
        ("rules: [\n", None, "not valid YAML"),
        ("rules:\n  a: 5\n", "a", "expression must be a string"),
        ("rules:\n  'bad,id': carted\n", "bad,id", "rule id must start with a letter"),
        ("rules:\n  1st: carted\n", "1st", "rule id must start with a letter"),
        ("rules:\n  ok: nope > 1\n", "ok", "unknown column 'nope'"),
    ],
)  # fmt: skip
def test_bad_rule_files(text: str, rule_id: str | None, message: str) -> None:
    with pytest.raises(RuleError) as info:
        RuleSet.from_yaml(text)
    assert info.value.rule_id == rule_id
    assert message in str(info.value)


def test_yaml_is_loaded_safely() -> None:
    with pytest.raises(RuleError, match="not valid YAML"):
        RuleSet.from_yaml("rules: !!python/object/apply:os.system ['true']\n")
