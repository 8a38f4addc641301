"""Tokens never reach a log line."""

from __future__ import annotations

import logging

from fieldlink.app.logs import RedactTokens, redact

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXBhcnQ"


def test_jwts_and_query_tokens_are_redacted() -> None:
    assert redact(f"Bearer {TOKEN} rest") == "Bearer [redacted] rest"
    assert redact("GET /ws?ticket=abc.def&x=1") == "GET /ws?ticket=[redacted]&x=1"
    assert redact("GET /ws?token=secret") == "GET /ws?token=[redacted]"
    assert redact("nothing secret here") == "nothing secret here"


def test_the_filter_rewrites_formatted_records() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "refused %s", (TOKEN,), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == "refused [redacted]"
