"""Bucket parsing, channel names and the /ws message protocol (pure)."""

from __future__ import annotations

import json

import pytest

from fieldlink.core import buckets, channels
from fieldlink.core.closecodes import CloseCode, should_reconnect
from fieldlink.core.errors import ProtocolError, ValidationError
from fieldlink.gateway import protocol
from fieldlink.gateway.frames import text_frame


@pytest.mark.parametrize(("text", "ms"), [("10s", 10_000), ("1m", 60_000), ("15m", 900_000),
                                           ("1h", 3_600_000), ("1d", 86_400_000), ("1000ms", 1000)])
def test_buckets(text: str, ms: int) -> None:
    assert buckets.parse_bucket(text) == ms


@pytest.mark.parametrize("text", ["", "10", "1w", "-1m", "500ms", "1.5m", "9999999s"])
def test_bad_buckets(text: str) -> None:
    with pytest.raises(ValidationError):
        buckets.parse_bucket(text)


def test_aggregates_and_ranges() -> None:
    assert buckets.check_aggregate("last") == "last"
    with pytest.raises(ValidationError):
        buckets.check_aggregate("median")
    with pytest.raises(ValidationError):
        buckets.check_range(10, 5, None)
    with pytest.raises(ValidationError) as info:
        buckets.check_range(0, 10**12, 1000)
    assert info.value.code == "too_many_buckets"


def test_channel_catalogue() -> None:
    assert channels.device("n1") == "device:n1"
    assert channels.for_device_event("n1", "t1") == ("device:n1", "tenant:t1", "all")
    assert channels.for_command_event("c1", "n1", "t1") == ("command:c1", "device:n1",
                                                            "tenant:t1", "all")
    assert channels.parse("all") == ("all", None)
    assert channels.parse("device:a:b") == ("device", "a:b")
    assert channels.parse("tenant:acme") == ("tenant", "acme")
    assert channels.tenant_in(channels.for_device_event("n1", "acme")) == "acme"
    assert channels.tenant_in(("device:n1", "all")) is None
    for bad in ("device:", "device:has space", "tenant:", "command:c1", "ALL", 5, None,
                "device:" + "x" * 129):
        with pytest.raises(ProtocolError):
            channels.parse(bad)


@pytest.mark.parametrize(("payload", "code"), [
    (b"nope", "invalid_json"), (b"[1]", "bad_message"), (b'{"type":"dance"}', "unknown_type"),
    (b'{"channel":"all"}', "unknown_type"), (b'{"type":"subscribe","channel":"x"}', "bad_channel"),
])
def test_client_message_errors(payload: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_message(payload)
    assert info.value.code == code


def test_server_messages_are_valid_json_with_echoed_ids() -> None:
    sub = json.loads(protocol.subscribed("device:n1", 7, b'{"latest":null}', {"id": "r1"}))
    assert sub == {"type": "subscribed", "channel": "device:n1", "seq": 7, "id": "r1",
                   "snapshot": {"latest": None}}
    assert "id" not in json.loads(protocol.unsubscribed("all", {"id": True}))
    err = json.loads(protocol.error("bad_channel", "no", {"id": 3}))
    assert err == {"type": "error", "code": "bad_channel", "message": "no", "id": 3}
    event = json.loads(protocol.event_payload("telemetry", "all", 9, b'{"device_id":"n1","v":1}'))
    assert event == {"type": "telemetry", "channel": "all", "seq": 9,
                     "data": {"device_id": "n1", "v": 1}}


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_text_frame_lengths(n: int) -> None:
    frame = text_frame(b"x" * n)
    assert frame[0] == 0x81 and len(frame) - n in (2, 4, 10)


def test_close_code_ranges() -> None:
    assert should_reconnect(CloseCode.GOING_AWAY) and should_reconnect(CloseCode.SLOW_CONSUMER)
    assert not should_reconnect(CloseCode.MESSAGE_TOO_BIG)
    assert not should_reconnect(CloseCode.TOO_MANY_ERRORS)
