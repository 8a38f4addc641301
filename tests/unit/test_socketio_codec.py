"""Socket.IO and Engine.IO packets, without sockets: what is accepted, what is refused, and
that encoding is the exact inverse (the clients' own encoders are exercised by the
integration tests and the official compliance suites)."""

from __future__ import annotations

import pytest

from fieldlink.gateway.engineio import EngineError, decode_payload
from fieldlink.gateway.socketio import (
    ACK,
    BINARY_EVENT,
    CONNECT,
    DISCONNECT,
    EVENT,
    PacketError,
    _reconstruct,
    encode,
    parse_packet,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("0", (CONNECT, "/", None, None, 0)),
    ('0{"token":"t"}', (CONNECT, "/", None, {"token": "t"}, 0)),
    ("0/custom,", (CONNECT, "/custom", None, None, 0)),
    ("0/custom", (CONNECT, "/custom", None, None, 0)),
    ("1", (DISCONNECT, "/", None, None, 0)),
    ("1/custom,", (DISCONNECT, "/custom", None, None, 0)),
    ('2["a",1]', (EVENT, "/", None, ["a", 1], 0)),
    ('2/admin,17["a"]', (EVENT, "/admin", 17, ["a"], 0)),
    ('3456[1,"2"]', (ACK, "/", 456, [1, "2"], 0)),
    ('51-["m",{"_placeholder":true,"num":0}]',
     (BINARY_EVENT, "/", None, ["m", {"_placeholder": True, "num": 0}], 1)),
])
def test_packets_parse(text: str, expected: tuple[object, ...]) -> None:
    p = parse_packet(text)
    assert (p.type, p.namespace, p.id, p.data, p.attachments) == expected


@pytest.mark.parametrize("text", [
    "", "a", "7", "abc", "2{}", "2[]", "2[1]", '2abc["x"]', "2[", '0["a"]', '1{"a":1}',
    '3["no id"]', '4{"message":"x"}', '5["no count"]', '5x-["a"]', '511-["a"]',
    '2' + "9" * 16 + '["a"]',
])
def test_malformed_packets_are_refused(text: str) -> None:
    with pytest.raises(PacketError):
        parse_packet(text)


def test_encoding_is_the_inverse_and_bytes_become_attachments() -> None:
    text, parts = encode(EVENT, ["device:data", {"deviceId": "d1"}])
    assert (text, parts) == ('2["device:data",{"deviceId":"d1"}]', [])
    text, parts = encode(ACK, [{"ok": True}], namespace="/custom", ack_id=12)
    assert text == '3/custom,12[{"ok":true}]' and parts == []
    text, parts = encode(EVENT, ["m", b"\x01\x02", {"x": b"\x03"}])
    assert text == '52-["m",{"_placeholder":true,"num":0},{"x":{"_placeholder":true,"num":1}}]'
    assert parts == [b"\x01\x02", b"\x03"]
    packet = parse_packet(text)
    assert packet.attachments == 2
    assert _reconstruct(packet.data, parts) == ["m", b"\x01\x02", {"x": b"\x03"}]
    with pytest.raises(PacketError):
        _reconstruct([{"_placeholder": True, "num": 5}], parts)


def test_polling_payloads() -> None:
    assert decode_payload(b"4hello\x1e2\x1ebAQIDBA==") == ["4hello", "2", b"\x01\x02\x03\x04"]
    for bad in (b"abc", b"4ok\x1e", b"b!!!", b"\xff"):
        with pytest.raises(EngineError):
            decode_payload(bad)
