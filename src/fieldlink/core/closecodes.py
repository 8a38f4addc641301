"""WebSocket close codes, in one catalogue (after Centrifugo's disconnect.go).

Ranges tell a client what to do:
- 1000-1015: RFC 6455 codes. 1001 (server going away) and 1011/1013 mean "reconnect".
- 4000-4499: fieldlink codes after which the client should reconnect (with backoff).
- 4500-4999: terminal fieldlink codes: do not reconnect without changing something.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  # binary frame on a text protocol
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001  # reconnect with a fresh token (or send {"type":"auth"} in time)
    SLOW_CONSUMER = 4008  # its bounded outbox overflowed: reconnect and resync
    TOO_MANY_ERRORS = 4500  # kept sending messages we cannot act on
    REVOKED = 4503  # the user was disabled: a new token will be refused too


def should_reconnect(code: int) -> bool:
    """The client-side rule for every code above."""
    if code in (CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR, CloseCode.TRY_AGAIN_LATER):
        return True
    return 4000 <= code < 4500
