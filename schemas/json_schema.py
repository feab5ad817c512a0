"""Access to the JSON Schema files in schemas/json/ and a validator that enforces them fully.

The plain draft 2020-12 meta-semantics cannot express two of the contract's rules, so
`validator()` extends the standard validator:

- integers are strict: a JSON number written with a fraction (``3.0``) is not an integer
  (JSON Schema's data model treats 3.0 as the integer 3; `schemas.parse` rejects it);
- ``x-maxUtf8Bytes`` limits a string's UTF-8 length in bytes (``maxLength`` counts code
  points, so on its own it is only a necessary condition).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

# jsonschema is imported lazily (about 0.2 s): the streaming hot path only needs `parse`.

SCHEMA_NAMES = ("event.v1", "feature_row.v1", "flagged_session.v1", "dlq_message.v1")


def _canonical(name: str) -> str:
    base = name.removesuffix(".json")
    if base in SCHEMA_NAMES:
        return base
    for known in SCHEMA_NAMES:  # allow "event" for "event.v1"
        if known.split(".", 1)[0] == base:
            return known
    raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")


@cache
def _load(name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath("json", f"{name}.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def load_schema(name: str) -> dict[str, Any]:
    """A fresh copy of the schema `name` ("event.v1", "event.v1.json" or "event")."""
    return copy.deepcopy(_load(_canonical(name)))


def _strict_integer(checker: object, instance: object) -> bool:
    return type(instance) is int


def _max_utf8_bytes(validator: Any, limit: int, instance: object, schema: Any) -> Iterator[Any]:
    from jsonschema import ValidationError  # type: ignore[import-untyped]

    if isinstance(instance, str):
        size = len(instance.encode("utf-8", "surrogatepass"))
        if size > limit:
            yield ValidationError(f"string is {size} bytes of UTF-8, more than {limit}")


@cache
def _strict_validator_class() -> Any:
    from jsonschema import Draft202012Validator, validators

    return validators.extend(
        Draft202012Validator,
        validators={"x-maxUtf8Bytes": _max_utf8_bytes},
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
    )


@cache
def _registry() -> Any:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resources_by_uri = []
    for name in SCHEMA_NAMES:
        schema = _load(name)
        resource = Resource.from_contents(schema, default_specification=DRAFT202012)
        resources_by_uri.append((schema["$id"], resource))
        resources_by_uri.append((f"{name}.json", resource))
    return Registry().with_resources(resources_by_uri)


@cache
def validator(name: str) -> Any:
    """A jsonschema validator for schema `name` with the strict extensions described above."""
    schema = _load(_canonical(name))
    return _strict_validator_class()(schema, registry=_registry())


def validation_errors(name: str, instance: object) -> list[str]:
    """Human-readable problems of `instance` against schema `name` (empty when valid)."""
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
