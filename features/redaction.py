"""Redaction of personal data in texts on their way out (contract section 6).

Each kind has a candidate pattern (cheap, in ``re``) and, where the contract names a
check, a validator from a kept library: ``stdnum`` for the Luhn check and the Chinese
resident identity check digit, ``phonenumbers`` for international and landline numbers,
``ipaddress`` for IP addresses. Kinds are tried in a fixed order and a span claimed by an
earlier kind is never re-examined, so ``Redactor.find`` reports non-overlapping spans in
the original text and ``Redactor.redact`` replaces each by its kind's placeholder.

Features are computed on the text as sent; only copies that leave the job or the
retraining pipeline are redacted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from stdnum import luhn
from stdnum.cn import ric

Kind = Literal["URL_SECRET", "EMAIL", "ID", "CARD", "PHONE", "IP"]

PLACEHOLDERS: dict[str, str] = {
    "URL_SECRET": "<URL_SECRET>",
    "EMAIL": "<EMAIL>",
    "ID": "<ID>",
    "CARD": "<CARD>",
    "PHONE": "<PHONE>",
    "IP": "<IP>",
}

# A text with none of these cannot hold any kind (every kind has a digit, an "@" or a
# "=" in it, or is a user pattern, which is always tried): most chat texts stop here.
_TRIGGER = re.compile(r"[0-9@=:]")

# Full-width digits and signs as typed on Chinese keyboards ("１３８…", "＠", "（＋86）"),
# mapped one character to one so that spans found in the mapped text hold in the original.
_HALF_WIDTH = str.maketrans(
    {chr(0xFF10 + i): str(i) for i in range(10)}
    | {"＠": "@", "＋": "+", "（": "(", "）": ")", "－": "-", "．": ".", "＝": "=", "：": ":"}
)
_NOT_DIGIT = re.compile(r"[^0-9]")


def _digits(value: str) -> str:
    return _NOT_DIGIT.sub("", value)


# Boundaries are ASCII letters and digits only: a Chinese character next to a number
# ("手机13812345678，") is a boundary, a letter ("SF1403958827361") is not.
_B = r"(?<![A-Za-z0-9])"
_E = r"(?![A-Za-z0-9])"

_SECRET_PARAMS = (
    "access_token|refresh_token|id_token|client_secret|api_key|apikey|api-key|key|token|"
    "password|passwd|pwd|pass|secret|sig|signature|auth|session|sessionid|sid|code|otp"
)
_URL_SECRET = re.compile(
    rf"(?i)[?&;#](?:{_SECRET_PARAMS})=([A-Za-z0-9_~%+/=.\-]*[A-Za-z0-9_~%+/=\-])"
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
    r"(?![A-Za-z0-9\-])"
)
_ID = re.compile(rf"(?a){_B}\d{{17}}[\dXx]{_E}")
_CARD = re.compile(rf"(?a){_B}\d(?:[ \-]?\d){{12,18}}{_E}")
_INTERNATIONAL = re.compile(
    rf"(?a)(?<![A-Za-z0-9+])(?:\+|00)\d{{1,3}}(?:[ .\-]?(?:\(\d{{1,4}}\)|\d{{1,5}})){{1,6}}{_E}"
)
_CN_MOBILE = re.compile(
    r"(?a)(?<![A-Za-z0-9+])(?:(?:\+|00)?86[ \-]?|\(\+?86\)[ \-]?)?"
    rf"1[3-9]\d(?:[ \-]?\d{{4}}){{2}}{_E}"
)
_CN_LANDLINE = re.compile(rf"(?a){_B}(?:\(0\d{{2,3}}\)|0\d{{2,3}})[ \-]?\d{{3,4}}[ \-]?\d{{4}}{_E}")
_US_PHONE = re.compile(
    rf"(?a){_B}(?:\+?1[ .\-]?)?(?:\(\d{{3}}\)[ .\-]?|\d{{3}}[ .\-])\d{{3}}[ .\-]\d{{4}}{_E}"
)
# "IP" written against the address ("设备IP192.168.0.108") is a label, not part of a word.
_IPV4 = re.compile(
    r"(?a)(?:(?<![A-Za-z0-9.])|(?<=IP)|(?<=ip))(?:\d{1,3}\.){3}\d{1,3}(?![A-Za-z0-9]|\.\d)"
)
_IPV6 = re.compile(r"(?<![A-Za-z0-9:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![A-Za-z0-9:])")
# "version 10.2.0.1", "版本 10.2.0.1", "build 4.1.0.2": a version, not an address.
# "系统版本 HarmonyOS 4.2.0.137", "iOS 17.4.1.2", "MIUI 14.0.3.0": a version too.
_VERSION_BEFORE = re.compile(
    r"(?i)(?:(?:(?<![A-Za-z])(?:version|ver\.?|build|firmware|v)|版本号?|固件|系统)"
    r"\s*[:：]?\s*(?:[A-Za-z]+\s+)?|(?<![A-Za-z])(?:[A-Za-z]*OS|Android|EMUI|MIUI)\s*)$"
)

# Card numbers start with an issuer's major industry digit 2-6 (Mastercard 2-series, Amex,
# JCB, Diners, Visa, Mastercard, Maestro, UnionPay, Discover): a Luhn-valid order number
# or timestamp starting with 1, 7, 8, 9 or 0 is not a card.
_CARD_FIRST_DIGITS = frozenset("23456")


@dataclass(frozen=True, slots=True)
class Finding:
    """One span of personal data in a text: ``text[start:end]`` is of ``kind``."""

    kind: str
    start: int
    end: int


Span = tuple[int, int]
Validator = Callable[[re.Match[str]], Span | None]


def _whole(match: re.Match[str]) -> Span:
    return match.span()


def _valid_id(match: re.Match[str]) -> Span | None:
    value = match.group(0).upper()
    return match.span() if ric.is_valid(_digits(value[:17]) + value[17]) else None


def _valid_card(match: re.Match[str]) -> Span | None:
    digits = _digits(match.group(0))
    if digits[0] not in _CARD_FIRST_DIGITS or not luhn.is_valid(digits):
        return None
    return match.span()


def _phone_valid(value: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def _valid_international(match: re.Match[str]) -> Span | None:
    # The pattern may take a number's trailing neighbours ("+1 415 555 2671 2 pcs"):
    # try the whole run, then without its last groups.
    value = match.group(0)
    start = match.start()
    while value:
        normalized = "+" + value[2:] if value.startswith("00") else value
        if _phone_valid(normalized, None):
            return start, start + len(value)
        cut = max(value.rfind(" "), value.rfind("-"), value.rfind("."))
        if cut <= 2:
            return None
        value = value[:cut]
    return None


def _valid_landline(match: re.Match[str]) -> Span | None:
    return match.span() if _phone_valid(match.group(0), "CN") else None


def _valid_us(match: re.Match[str]) -> Span | None:
    return match.span() if _phone_valid(match.group(0), "US") else None


def _valid_ipv4(match: re.Match[str]) -> Span | None:
    if _VERSION_BEFORE.search(match.string, 0, match.start()):
        return None
    try:
        ipaddress.IPv4Address(match.group(0))
    except ValueError:
        return None
    return match.span()


def _valid_ipv6(match: re.Match[str]) -> Span | None:
    value = match.group(0)
    if value.count(":") < 2 or not any(c.isdigit() for c in value):
        return None
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return match.span()


def _secret_value(match: re.Match[str]) -> Span:
    return match.span(1)


class Redactor:
    """Finds and replaces personal data; ``extra_id_patterns`` are regexes for ``<ID>``."""

    def __init__(self, extra_id_patterns: Sequence[str] = ()) -> None:
        extra: list[tuple[str, re.Pattern[str], Validator]] = []
        for pattern in extra_id_patterns:
            try:
                extra.append(("ID", re.compile(pattern), _whole))
            except re.error as exc:
                raise ValueError(f"redaction pattern {pattern!r} is not a regex: {exc}") from exc
        self.extra_id_patterns = tuple(extra_id_patterns)
        self._extra = extra
        # The order matters where kinds could overlap: the secret in a URL before the
        # URL's address, e-mail before the digits in it, the checksum kinds before phones.
        self._passes: list[tuple[str, re.Pattern[str], Validator]] = [
            ("URL_SECRET", _URL_SECRET, _secret_value),
            ("EMAIL", _EMAIL, _whole),
            *extra,
            ("ID", _ID, _valid_id),
            ("CARD", _CARD, _valid_card),
            ("PHONE", _INTERNATIONAL, _valid_international),
            ("PHONE", _CN_MOBILE, _whole),
            ("PHONE", _CN_LANDLINE, _valid_landline),
            ("PHONE", _US_PHONE, _valid_us),
            ("IP", _IPV4, _valid_ipv4),
            ("IP", _IPV6, _valid_ipv6),
        ]

    def find(self, text: str) -> list[Finding]:
        """The spans of personal data in ``text``, in order, none overlapping."""
        scan = text.translate(_HALF_WIDTH)
        passes = self._passes if _TRIGGER.search(scan) else self._extra
        claimed: list[Finding] = []
        for kind, pattern, validate in passes:
            for match in pattern.finditer(scan):
                span = validate(match)
                if span is None or span[0] == span[1]:
                    continue
                start, end = span
                if any(start < f.end and f.start < end for f in claimed):
                    continue
                claimed.append(Finding(kind, start, end))
        return sorted(claimed, key=lambda f: f.start)

    def redact(self, text: str) -> str:
        """``text`` with every finding replaced by its placeholder (``<PHONE>``, ...)."""
        if not text:
            return text
        findings = self.find(text)
        if not findings:
            return text
        parts: list[str] = []
        position = 0
        for finding in findings:
            parts.append(text[position : finding.start])
            parts.append(PLACEHOLDERS[finding.kind])
            position = finding.end
        parts.append(text[position:])
        return "".join(parts)

    def redact_optional(self, text: str | None) -> str | None:
        return None if text is None else self.redact(text)


DEFAULT_REDACTOR = Redactor()
