"""Without orjson the parser keeps its rules: deep nesting and lone surrogates are invalid_json."""

from __future__ import annotations

import pytest

from schemas import events
from schemas.events import ParseError, decode_json, parse

DEEP = b"[" * 100_000 + b"]" * 100_000
LONE_SURROGATE = b'{"event_id":"e1","event_type":"user_message","schema_version":1,' \
    b'"session_id":"s1","user_id":"u1","ts_ms":1,"text":"\\ud800"}'  # fmt: skip


@pytest.fixture(params=["orjson", "stdlib"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "stdlib":
        monkeypatch.setattr(events, "_loads", events.stdlib_loads)
        monkeypatch.setattr(events, "_DECODE_ERRORS", (ValueError,))
    return str(request.param)


@pytest.mark.parametrize("raw", [DEEP, LONE_SURROGATE, b"[NaN]", b'{"a": Infinity}', b"\xff"])
def test_rejected_as_invalid_json_never_raised(decoder: str, raw: bytes) -> None:
    result = decode_json(raw)
    assert isinstance(result, ParseError) and result.reason == "invalid_json", decoder
    parsed = parse(raw)
    assert isinstance(parsed, ParseError) and parsed.reason == "invalid_json"


def test_both_decoders_read_valid_json_alike(decoder: str) -> None:
    raw = '{"text": "包邮吗 😀", "n": 12345678901234, "x": 1.5, "ok": true, "z": null}'.encode()
    assert decode_json(raw) == {
        "text": "包邮吗 😀", "n": 12345678901234, "x": 1.5, "ok": True, "z": None,
    }  # fmt: skip
