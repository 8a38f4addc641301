"""The client/server message protocol of ``/ws`` (docs/protocol.md), sans I/O.

Parses client messages into dicts it has checked, and builds server messages. Event frames are
built from the event's pre-encoded ``data`` with byte concatenation, never by re-encoding.
"""

from __future__ import annotations

from typing import Any

import orjson

from fieldlink.core import channels
from fieldlink.core.errors import ProtocolError

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
CLIENT_TYPES = ("subscribe", "unsubscribe", "ping", "command", "auth", "decide")


def parse_client_message(payload: bytes) -> dict[str, Any]:
    """Decode one client text message. Raises ``ProtocolError`` with a stable code."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc.msg}", code="invalid_json") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object with a 'type'", code="bad_message")
    kind = message.get("type")
    if kind not in CLIENT_TYPES:
        shown = repr(kind)[:60]
        raise ProtocolError(
            f"unknown message type {shown}; expected one of {', '.join(CLIENT_TYPES)}",
            code="unknown_type",
        )
    if kind in ("subscribe", "unsubscribe"):
        channels.parse(message.get("channel"))
    if kind == "decide" and (
        not isinstance(message.get("proposal"), str)
        or message.get("decision") not in ("approve", "reject")
    ):
        raise ProtocolError(
            "send {'type': 'decide', 'proposal': ID, 'decision': 'approve'|'reject'}",
            code="bad_message",
        )
    if kind == "subscribe" and "throttle_ms" in message:
        message["throttle_ms"] = throttle_ms(message["throttle_ms"])
    return message


MAX_THROTTLE_MS = 60_000


def throttle_ms(value: object) -> int:
    """A display throttle in milliseconds: 0 (off) to 60,000; ``ProtocolError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THROTTLE_MS:
        raise ProtocolError(
            f"throttle_ms must be a whole number of milliseconds from 0 to {MAX_THROTTLE_MS}",
            code="bad_message",
        )
    return value


def _with_id(body: dict[str, Any], request: dict[str, Any] | None) -> dict[str, Any]:
    if request is not None and "id" in request:
        request_id = request["id"]
        if isinstance(request_id, (str, int)) and not isinstance(request_id, bool):
            body["id"] = request_id
    return body


def connected(client_id: str, server_time_ms: int, identity: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "type": "connected",
        "client_id": client_id,
        "server_time": server_time_ms,
    }
    if identity:
        body.update(identity)
    return orjson.dumps(body)


def auth_ok(expires_ms: int | None, request: dict[str, Any] | None) -> bytes:
    return orjson.dumps(_with_id({"type": "auth", "status": "ok", "expires": expires_ms}, request))


def rate_limited(retry_after_ms: int) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "code": "rate_limited",
            "message": "too many messages; slow down",
            "retry_after_ms": retry_after_ms,
        }
    )


def subscribed(channel: str, seq: int, snapshot: bytes, request: dict[str, Any] | None) -> bytes:
    head = orjson.dumps(_with_id({"type": "subscribed", "channel": channel, "seq": seq}, request))
    return head[:-1] + b',"snapshot":' + snapshot + b"}"


def unsubscribed(channel: str, request: dict[str, Any] | None) -> bytes:
    return orjson.dumps(_with_id({"type": "unsubscribed", "channel": channel}, request))


def pong(request: dict[str, Any] | None, server_time_ms: int) -> bytes:
    return orjson.dumps(_with_id({"type": "pong", "server_time": server_time_ms}, request))


def decided(proposal: bytes, request: dict[str, Any] | None) -> bytes:
    """The answer to a ``decide`` message: the proposal after the decision."""
    head = orjson.dumps(_with_id({"type": "decided"}, request))
    return head[:-1] + b',"proposal":' + proposal + b"}"


def command_refused(command_id: str | None, code: str, message: str) -> bytes:
    """A command that never entered the log (invalid, or its id is taken)."""
    body: dict[str, Any] = {"type": "command", "status": "rejected", "reason": code}
    if command_id is not None:
        body["id"] = command_id
    body["error"] = message
    return orjson.dumps(body)


def error(code: str, message: str, request: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps(_with_id({"type": "error", "code": code, "message": message}, request))


def event_payload(event_type: str, channel: str, seq: int, data: bytes) -> bytes:
    """One event as JSON. Channel names come from the catalogue and need no escaping.
    A command event carries its fields at the top level (``{"type":"command","id",
    "status",...}``): its data object is spliced into the envelope."""
    if event_type == "command":
        return b'{"type":"command","channel":"%s","seq":%d,%s' % (
            channel.encode(),
            seq,
            data[1:],
        )
    return b'{"type":"%s","channel":"%s","seq":%d,"data":%s}' % (
        event_type.encode(),
        channel.encode(),
        seq,
        data,
    )
