"""Redaction of what must not be kept in an audit trail: e-mail addresses, payment card numbers
(Luhn-checked), API keys and bearer tokens, phone numbers."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")
_KEY = re.compile(r"\b(?:vs|sk|pk|rk|ghp|xox[abp])[-_][A-Za-z0-9_-]{16,}")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[ .()-]{0,2}\d){8,14}(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[REDACTED:CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group()


def redact(text: str) -> str:
    """The text with the sensitive parts replaced by [REDACTED:<what>]."""
    text = _BEARER.sub("[REDACTED:TOKEN]", text)
    text = _KEY.sub("[REDACTED:KEY]", text)
    text = _EMAIL.sub("[REDACTED:EMAIL]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub("[REDACTED:PHONE]", text)
