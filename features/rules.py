"""Rules (contract section 4): named boolean expressions over the feature columns.

The rule language is parsed by a small tokenizer and recursive-descent parser and compiled
to closures; a rule file is never executed as code (no eval, exec or ast). Grammar::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand [("<" | "<=" | ">" | ">=" | "==" | "!=") operand]
    operand    := "(" expr ")" | column | number | "-" number | true | false | True | False

Typing is checked when a rule is loaded: `and`/`or`/`not` take booleans (bool columns,
comparisons, true/false); `<`, `<=`, `>`, `>=` compare numbers; `==`/`!=` compare two
numbers or two booleans. A comparison with a null value (min_intent_confidence of a
session without confidences) is false.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from features.columns import COLUMN_TYPES, NULLABLE_COLUMNS, RULE_OUTPUT_COLUMNS

RULE_ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
MAX_EXPRESSION_CHARS = 4096
MAX_NESTING = 50


class RuleError(ValueError):
    """A rule file or expression is invalid; `rule_id` names the rule when known."""

    def __init__(self, rule_id: str | None, message: str) -> None:
        self.rule_id = rule_id
        self.detail = message
        prefix = f"rule {rule_id!r}: " if rule_id is not None else "rules: "
        super().__init__(prefix + message)


# --------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|==|!=|<|>)
  | (?P<paren>[()])
  | (?P<minus>-)
    """,
    re.VERBOSE,
)

_FORBIDDEN_CHARS = {
    ".": "attribute access is not allowed",
    "+": "arithmetic is not supported",
    "*": "arithmetic is not supported",
    "/": "arithmetic is not supported",
    "%": "arithmetic is not supported",
    "@": "arithmetic is not supported",
    "^": "bitwise operators are not supported",
    "|": "bitwise operators are not supported; use 'or'",
    "&": "bitwise operators are not supported; use 'and'",
    "~": "bitwise operators are not supported; use 'not'",
    "!": "use 'not' for negation",
    "=": "assignment is not allowed; use '==' to compare",
    "'": "string literals are not allowed",
    '"': "string literals are not allowed",
    "[": "indexing and lists are not allowed",
    "]": "indexing and lists are not allowed",
    "{": "braces are not allowed",
    "}": "braces are not allowed",
    ",": "commas are not allowed (no function calls or tuples)",
    ":": "colons are not allowed",
    ";": "only one expression is allowed",
    "\\": "backslashes are not allowed",
    "`": "backticks are not allowed",
    "$": "'$' is not allowed",
    "#": "comments are not allowed in expressions",
}

_KEYWORDS = {"and", "or", "not"}
_BOOL_LITERALS = {"true": True, "True": True, "false": False, "False": False}
# Python words a user might try; rejected with a clear message (they are not columns).
_FORBIDDEN_WORDS = {
    "if", "else", "elif", "lambda", "import", "from", "is", "in", "for", "while", "def",
    "class", "return", "yield", "await", "async", "with", "as", "del", "global", "nonlocal",
    "assert", "raise", "try", "except", "finally", "pass", "break", "continue", "None",
    "null", "none", "eval", "exec",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number | name | op | paren | minus | keyword | bool | end
    text: str
    pos: int


def _tokenize(expression: str, rule_id: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if match is None:
            char = expression[pos]
            reason = _FORBIDDEN_CHARS.get(char, f"unexpected character {char!r}")
            raise RuleError(rule_id, f"{reason} (at position {pos}: {char!r})")
        kind = match.lastgroup or ""
        text = match.group()
        if kind == "name":
            if text in _KEYWORDS:
                kind = "keyword"
            elif text in _BOOL_LITERALS:
                kind = "bool"
            elif text.startswith("__"):
                raise RuleError(rule_id, f"dunder names are not allowed: {text!r}")
            elif text in _FORBIDDEN_WORDS:
                raise RuleError(rule_id, f"{text!r} is not part of the rule language")
            elif expression[match.end() :].lstrip().startswith("("):
                raise RuleError(rule_id, f"function calls are not allowed: {text}(...)")
        elif kind == "number" and match.end() < len(expression):
            following = expression[match.end()]
            if following.isalpha() or following == "_":
                raise RuleError(rule_id, f"malformed number at position {pos}")
        if kind != "space":
            tokens.append(_Token(kind, text, pos))
        pos = match.end()
    tokens.append(_Token("end", "", pos))
    return tokens


# --------------------------------------------------------------------------- parser

Row = Mapping[str, Any]
_Eval = Callable[[Row], Any]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True, slots=True)
class _Node:
    kind: str  # "bool" | "number"
    evaluate: _Eval
    nullable: bool = False


class _Parser:
    def __init__(self, rule_id: str, expression: str) -> None:
        self.rule_id = rule_id
        self.tokens = _tokenize(expression, rule_id)
        self.index = 0
        self.columns: set[str] = set()
        self.depth = 0

    def error(self, message: str) -> RuleError:
        return RuleError(self.rule_id, message)

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def parse(self) -> _Node:
        if self.current.kind == "end":
            raise self.error("expression is empty")
        node = self.parse_or()
        token = self.current
        if token.kind != "end":
            raise self.unexpected(token)
        self.require_bool(node, "a rule")
        return node

    def unexpected(self, token: _Token) -> RuleError:
        if token.kind == "minus":
            return self.error(f"arithmetic is not supported ('-' at position {token.pos})")
        return self.error(f"unexpected {token.text!r} at position {token.pos}")

    def require_bool(self, node: _Node, where: str) -> None:
        if node.kind != "bool":
            raise self.error(f"{where} needs a boolean, got a number (compare it, e.g. '> 0')")

    def parse_or(self) -> _Node:
        node = self.parse_and()
        while self.current.kind == "keyword" and self.current.text == "or":
            self.advance()
            right = self.parse_and()
            self.require_bool(node, "'or'")
            self.require_bool(right, "'or'")
            node = _Node("bool", _or(node.evaluate, right.evaluate))
        return node

    def parse_and(self) -> _Node:
        node = self.parse_not()
        while self.current.kind == "keyword" and self.current.text == "and":
            self.advance()
            right = self.parse_not()
            self.require_bool(node, "'and'")
            self.require_bool(right, "'and'")
            node = _Node("bool", _and(node.evaluate, right.evaluate))
        return node

    def parse_not(self) -> _Node:
        if self.current.kind == "keyword" and self.current.text == "not":
            self.advance()
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.error(f"expression is nested too deeply (more than {MAX_NESTING})")
            operand = self.parse_not()
            self.depth -= 1
            self.require_bool(operand, "'not'")
            return _Node("bool", _not(operand.evaluate))
        return self.parse_comparison()

    def parse_comparison(self) -> _Node:
        left = self.parse_operand()
        if self.current.kind != "op":
            return left
        op = self.advance().text
        right = self.parse_operand()
        if self.current.kind == "op":
            raise self.error("chained comparisons are not supported; join them with 'and'")
        if op in ("<", "<=", ">", ">=") and (left.kind != "number" or right.kind != "number"):
            raise self.error(f"'{op}' compares numbers only")
        if left.kind != right.kind:
            raise self.error(f"'{op}' cannot compare a {left.kind} with a {right.kind}")
        nullable = left.nullable or right.nullable
        return _Node("bool", _comparison(_COMPARE[op], left.evaluate, right.evaluate, nullable))

    def parse_operand(self) -> _Node:
        token = self.advance()
        if token.kind == "paren" and token.text == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.error(f"expression is nested too deeply (more than {MAX_NESTING})")
            node = self.parse_or()
            self.depth -= 1
            closing = self.advance()
            if closing.kind != "paren" or closing.text != ")":
                raise self.error(f"expected ')' at position {closing.pos}")
            return node
        if token.kind == "number":
            return _Node("number", _constant(_number(token.text)))
        if token.kind == "minus":
            number = self.advance()
            if number.kind != "number":
                raise self.error("arithmetic is not supported ('-' only negates a number literal)")
            return _Node("number", _constant(-_number(number.text)))
        if token.kind == "bool":
            return _Node("bool", _constant(_BOOL_LITERALS[token.text]))
        if token.kind == "name":
            return self.column(token)
        if token.kind == "end":
            raise self.error("expression ends too early")
        raise self.unexpected(token)

    def column(self, token: _Token) -> _Node:
        name = token.text
        if name in RULE_OUTPUT_COLUMNS:
            raise self.error(f"column {name!r} is computed from the rules; a rule cannot use it")
        column_type = COLUMN_TYPES.get(name)
        if column_type is None:
            known = ", ".join(sorted(set(COLUMN_TYPES) - RULE_OUTPUT_COLUMNS))
            raise self.error(f"unknown column {name!r} (known columns: {known})")
        if column_type == "bool":
            kind = "bool"
        elif column_type in ("int64", "float64"):
            kind = "number"
        else:
            raise self.error(
                f"column {name!r} is a {column_type}; the rule language has no string literals"
            )
        self.columns.add(name)
        return _Node(kind, _column(name), nullable=name in NULLABLE_COLUMNS)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _constant(value: object) -> _Eval:
    return lambda row: value


def _column(name: str) -> _Eval:
    return lambda row: row[name]


def _and(left: _Eval, right: _Eval) -> _Eval:
    return lambda row: bool(left(row)) and bool(right(row))


def _or(left: _Eval, right: _Eval) -> _Eval:
    return lambda row: bool(left(row)) or bool(right(row))


def _not(operand: _Eval) -> _Eval:
    return lambda row: not operand(row)


def _comparison(
    compare: Callable[[Any, Any], bool], left: _Eval, right: _Eval, nullable: bool
) -> _Eval:
    if not nullable:
        return lambda row: compare(left(row), right(row))

    def evaluate(row: Row) -> bool:
        a = left(row)
        b = right(row)
        return a is not None and b is not None and compare(a, b)

    return evaluate


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule."""

    id: str
    expression: str
    description: str = ""
    columns: frozenset[str] = frozenset()
    _predicate: _Eval = field(default=lambda row: False, repr=False, compare=False)

    @classmethod
    def compile(cls, rule_id: str, expression: str, description: str = "") -> Rule:
        """Parse and type-check `expression`; raises RuleError naming `rule_id`."""
        if not isinstance(rule_id, str) or RULE_ID_PATTERN.fullmatch(rule_id) is None:
            raise RuleError(
                str(rule_id),
                "rule id must start with a letter and hold only letters, digits, '_', '.', '-'"
                " (at most 64 characters)",
            )
        if not isinstance(expression, str):
            kind = type(expression).__name__
            raise RuleError(rule_id, f"expression must be a string, got {kind}")
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise RuleError(rule_id, f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
        parser = _Parser(rule_id, expression)
        try:
            node = parser.parse()
        except RecursionError:
            raise RuleError(rule_id, "expression is nested too deeply") from None
        return cls(rule_id, expression, description, frozenset(parser.columns), node.evaluate)

    def holds(self, row: Row) -> bool:
        """Whether the rule holds for a feature row (mapping column -> value)."""
        return bool(self._predicate(row))


class RuleSet:
    """An ordered set of rules with distinct ids."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        ordered: dict[str, Rule] = {}
        for rule in rules:
            if rule.id in ordered:
                raise RuleError(rule.id, "duplicate rule id")
            ordered[rule.id] = rule
        self._rules = tuple(ordered.values())

    @classmethod
    def from_mapping(cls, expressions: Mapping[str, str]) -> RuleSet:
        """Rules from {id: expression}."""
        return cls(Rule.compile(rule_id, expr) for rule_id, expr in expressions.items())

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str]) -> RuleSet:
        """Rules from YAML text, or from a file when given a path.

        A `str` is read as a path when it is one line that ends in .yaml/.yml or names an
        existing file; otherwise as YAML text. Accepted layouts:
        ``rules: [{id, expression, description?}, ...]``, ``rules: {id: expression, ...}``,
        or the bare list / mapping.
        """
        if isinstance(source, os.PathLike) or (
            "\n" not in source
            and (source.strip().endswith((".yaml", ".yml")) or os.path.isfile(source))
        ):
            return cls.from_file(source)
        return cls.from_text(source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RuleSet:
        """Rules from a YAML file."""
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise RuleError(None, f"cannot read rule file {os.fspath(path)!r}: {exc}") from exc
        return cls.from_text(text)

    @classmethod
    def from_text(cls, text: str) -> RuleSet:
        """Rules from YAML text."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RuleError(None, f"not valid YAML: {exc}") from exc
        return cls(_rules_from_document(document))

    @classmethod
    def default(cls) -> RuleSet:
        """The contract's default rules (features/default_rules.yaml)."""
        text = resources.files("features").joinpath("default_rules.yaml").read_text("utf-8")
        return cls.from_text(text)

    @property
    def ids(self) -> tuple[str, ...]:
        """Rule ids in file order."""
        return tuple(rule.id for rule in self._rules)

    @property
    def columns(self) -> frozenset[str]:
        """Every column some rule reads."""
        return frozenset().union(*(rule.columns for rule in self._rules))

    def evaluate(self, row: Row) -> list[str]:
        """Sorted ids of the rules that hold for `row`."""
        return sorted(rule.id for rule in self._rules if rule.holds(row))

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RuleSet({', '.join(self.ids)})"


def _rules_from_document(document: object) -> Iterator[Rule]:
    if isinstance(document, Mapping) and set(document) == {"rules"}:
        document = document["rules"]
    if document is None:
        return
    if isinstance(document, Mapping):
        for rule_id, expression in document.items():
            yield Rule.compile(str(rule_id), expression)
        return
    if not isinstance(document, list):
        raise RuleError(None, "expected a list of rules or a mapping of id -> expression")
    for index, entry in enumerate(document):
        if not isinstance(entry, Mapping):
            raise RuleError(None, f"rule #{index + 1} must be a mapping with id and expression")
        rule_id = entry.get("id")
        if not isinstance(rule_id, str):
            raise RuleError(None, f"rule #{index + 1} has no string 'id'")
        unknown = set(entry) - {"id", "expression", "description"}
        if unknown:
            raise RuleError(rule_id, f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
        if "expression" not in entry:
            raise RuleError(rule_id, "missing 'expression'")
        description = entry.get("description") or ""
        yield Rule.compile(rule_id, entry["expression"], str(description))
