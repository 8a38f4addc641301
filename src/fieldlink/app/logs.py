"""Logging set-up: one format, and tokens never reach a log line."""

from __future__ import annotations

import logging
import re

# JWTs (three base64url parts, the first starting with '{"' = eyJ) and ?ticket=/?token=
# query values.
_JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*")
_QUERY = re.compile(r"([?&](?:ticket|token|access_token)=)[^&\s\"']+")


def redact(text: str) -> str:
    return _QUERY.sub(r"\1[redacted]", _JWT.sub("[redacted]", text))


class RedactTokens(logging.Filter):
    """Rewrites each record's message with tokens replaced (the record is then formatted
    from the redacted text, its args dropped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactTokens())
