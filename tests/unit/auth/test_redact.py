"""What the audit trail never keeps of a prompt or an answer."""

from __future__ import annotations

import pytest

from vllm_service.auth.redact import redact


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("write to jane.doe+x@example.co.uk today", "write to [REDACTED:EMAIL] today"),
        ("card 4111 1111 1111 1111 exp 12/29", "card [REDACTED:CARD] exp 12/29"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", "Authorization: [REDACTED:TOKEN]"),
        ("key sk-proj-abcdefghijklmnop1234", "key [REDACTED:KEY]"),
        ("our key vs-UB-ynGflpRyigFmYlTPeIKXRRWEK7LeUsTp0qOiDLSI", "our key [REDACTED:KEY]"),
        ("call +1 (415) 555-2671 now", "call [REDACTED:PHONE] now"),
        ("order 12345 of 2024-06-01", "order 12345 of 2024-06-01"),
        ("plain text stays", "plain text stays"),
    ],
)
def test_redaction(text: str, kept: str) -> None:
    assert redact(text) == kept


def test_a_number_that_fails_luhn_is_not_called_a_card() -> None:
    # Its digits may still be redacted as a phone number: more redacted, never less.
    assert "CARD" not in redact("id 4111 1111 1111 1112")
