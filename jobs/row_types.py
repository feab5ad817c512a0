"""Flink types derived from the column lists of features/columns.py (one home per layout).

``sql_type`` gives the Flink SQL type of a column type, ``flink_type`` its DataStream
type information, ``flink_value`` turns a JSON-ready value (dicts, lists) into what that
type information expects (Rows, lists).
"""

from __future__ import annotations

from typing import Any

from pyflink.common import Row
from pyflink.common.typeinfo import TypeInformation, Types

from features.columns import ColumnType, ListOf, Struct

_SQL_SCALARS = {
    "string": "STRING",
    "int64": "BIGINT",
    "bool": "BOOLEAN",
    "float64": "DOUBLE",
    "list<string>": "ARRAY<STRING>",
}


def sql_type(column_type: ColumnType) -> str:
    if isinstance(column_type, Struct):
        return "ROW<" + ", ".join(f"`{n}` {sql_type(t)}" for n, t in column_type) + ">"
    if isinstance(column_type, ListOf):
        return f"ARRAY<{sql_type(column_type.element)}>"
    return _SQL_SCALARS[column_type]


def sql_columns(fields: tuple[tuple[str, ColumnType], ...]) -> str:
    """The column list of a CREATE TABLE for ``fields``."""
    return ",\n  ".join(f"`{name}` {sql_type(kind)}" for name, kind in fields)


def flink_type(column_type: ColumnType) -> TypeInformation:
    if isinstance(column_type, Struct):
        return Types.ROW_NAMED([n for n, _ in column_type], [flink_type(t) for _, t in column_type])
    if isinstance(column_type, ListOf):
        return Types.OBJECT_ARRAY(flink_type(column_type.element))
    return {
        "string": Types.STRING(),
        "int64": Types.LONG(),
        "bool": Types.BOOLEAN(),
        "float64": Types.DOUBLE(),
        "list<string>": Types.BASIC_ARRAY(Types.STRING()),
    }[column_type]


def row_type(fields: tuple[tuple[str, ColumnType], ...], *extra: tuple[str, ColumnType]) -> Any:
    """The named Row type of ``fields`` (and ``extra`` columns, such as the ``dt`` partition)."""
    everything = (*fields, *extra)
    return Types.ROW_NAMED([n for n, _ in everything], [flink_type(t) for _, t in everything])


def flink_value(column_type: ColumnType, value: Any) -> Any:
    """``value`` (JSON-ready: dicts, lists, None) as ``flink_type(column_type)`` holds it."""
    if value is None:
        return None
    if isinstance(column_type, Struct):
        return Row(*[flink_value(t, value.get(n)) for n, t in column_type])
    if isinstance(column_type, ListOf):
        return [flink_value(column_type.element, item) for item in value]
    if column_type == "list<string>":
        return list(value)
    if column_type == "float64":
        return float(value)
    return value
