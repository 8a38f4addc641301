"""The /ws gateway through real clients: snapshots, channel routing, unsubscribe, slow
consumers and shutdown close codes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fieldlink.core.closecodes import CloseCode
from tests.support.clients import paho_client, publish, wait_until, ws_client


async def test_device_channel_gets_only_its_device_and_all_gets_everything(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as one, ws_client(hub.ws_url, additional_headers=hub.auth) as everything:
        sub = await one.subscribe("device:a")
        assert sub["snapshot"] == {"device_id": "a", "status": "unknown", "latest": None}
        assert (await everything.subscribe("all"))["snapshot"] == {"devices": []}
        async with paho_client(hub.mqtt_port) as mqtt:
            await publish(mqtt, "edge/b/telemetry", {"v": 1, "seq": 1})
            await publish(mqtt, "edge/a/telemetry", {"v": 2, "seq": 1})
        got = await one.recv_until(lambda m: m["type"] == "telemetry")
        assert got["channel"] == "device:a" and got["data"]["device_id"] == "a"
        seen = []
        while len(seen) < 2:
            m = await everything.recv_until(lambda m: m["type"] == "telemetry")
            assert m["channel"] == "all"
            seen.append(m["data"]["device_id"])
        assert seen == ["b", "a"]


async def test_sequence_numbers_increase_per_channel_and_snapshot_carries_latest(hub) -> None:  # type: ignore[no-untyped-def]
    async with paho_client(hub.mqtt_port) as mqtt:
        await publish(mqtt, "edge/s1/telemetry", {"v": 1})
        # The PUBACK came from the broker; wait until the hub has the record.
        await wait_until(lambda: hub.runtime.ingestor.counters.received == 1)
        async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
            sub = await ws.subscribe("device:s1")
            assert sub["snapshot"]["latest"]["v"] == 1
            assert sub["snapshot"]["status"] == "online"
            start_seq = sub["seq"]
            for v in (2, 3, 4):
                await publish(mqtt, "edge/s1/telemetry", {"v": v})
            seqs, values = [], []
            while len(values) < 3:
                m = await ws.recv_until(lambda m: m["type"] == "telemetry")
                seqs.append(m["seq"])
                values.append(m["data"]["v"])
    assert values == [2, 3, 4]
    assert seqs == [start_seq + 1, start_seq + 2, start_seq + 3]


async def test_unsubscribe_stops_events(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.subscribe("device:u1")
        await ws.subscribe("device:u2")
        await ws.send({"type": "unsubscribe", "channel": "device:u1", "id": "x"})
        reply = await ws.recv_until(lambda m: m["type"] == "unsubscribed")
        assert reply == {"type": "unsubscribed", "channel": "device:u1", "id": "x"}
        async with paho_client(hub.mqtt_port) as mqtt:
            await publish(mqtt, "edge/u1/telemetry", {"v": 1})
            await publish(mqtt, "edge/u2/telemetry", {"v": 2})
        m = await ws.recv_until(lambda m: m["type"] == "telemetry")
        assert m["data"]["device_id"] == "u2"  # u1's event, published first, never arrived


async def test_ping_message_is_answered(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.send({"type": "ping", "id": 5})
        pong = await ws.recv()
        assert pong["type"] == "pong" and pong["id"] == 5 and isinstance(pong["server_time"], int)


def _raw_ws_connect(port: int, token: str) -> socket.socket:
    """A bare WebSocket client with a tiny receive buffer, so it can stop reading for real."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps({"type": "subscribe", "channel": "all"}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)
    return sock


def _read_close_code(sock: socket.socket) -> int | None:
    """Read frames until the server's close frame; return its code (None on EOF without one)."""
    sock.settimeout(10)
    buf = b""
    while True:
        while len(buf) >= 2:
            length, header = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, header = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, header = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < header + length:
                break
            opcode, body = buf[0] & 0x0F, buf[header:header + length]
            buf = buf[header + length:]
            if opcode == 0x8:
                return int(struct.unpack("!H", body[:2])[0])
        chunk = sock.recv(1 << 20)
        if not chunk:
            return None
        buf += chunk


async def test_slow_consumer_is_closed_with_its_code_while_a_reader_gets_the_latest(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(ws_max_pending_bytes=128 * 1024, ws_slow_timeout_s=1.0) as hub:
        slow = await asyncio.to_thread(_raw_ws_connect, hub.http_port, hub.token)
        try:
            async with ws_client(hub.ws_url, additional_headers=hub.auth, max_size=None) as good:
                await good.subscribe("all")
                await wait_until(lambda: hub.runtime.hub.subscriber_count("all") == 2)
                bulk = {f"b{k}": "x" * 1000 for k in range(16)}  # 16 KB within the string limit
                n = 400
                async with paho_client(hub.mqtt_port) as mqtt:
                    for i in range(n):
                        mqtt.publish("edge/big/telemetry", json.dumps({**bulk, "seq": i}), qos=0)
                    await publish(mqtt, "edge/big/telemetry", {"blob": "end", "seq": n})
                    # The reader may be conflated during the burst, but the newest value reaches it.
                    last = await good.recv_until(
                        lambda m: m["type"] == "telemetry" and m["data"]["seq"] == n, timeout=20
                    )
                    assert last["data"]["blob"] == "end"
                    assert hub.runtime.ingestor.counters.rejected == {}
                    await wait_until(lambda: hub.runtime.hub.stats.slow_disconnects == 1, timeout=10)
                    # The reader is still connected and served.
                    await publish(mqtt, "edge/big/telemetry", {"blob": "after", "seq": n + 1})
                    after = await good.recv_until(lambda m: m["type"] == "telemetry")
                    assert after["data"]["blob"] == "after"
            assert await asyncio.to_thread(_read_close_code, slow) == CloseCode.SLOW_CONSUMER
            assert hub.runtime.hub.stats.slow_disconnects == 1
        finally:
            slow.close()


async def test_shutdown_closes_clients_with_going_away(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub() as hub:
        ws = await connect(hub.ws_url, additional_headers=hub.auth)
        await ws.recv()
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.GOING_AWAY
    await ws.close()


async def test_display_throttle_caps_a_fast_device_and_ends_on_its_last_value(hub) -> None:  # type: ignore[no-untyped-def]
    """A device at 50 records/s; a client subscribed with throttle_ms=200 gets at most 5 a
    second and its last event is the device's last record; an unthrottled client (the
    control) gets all of them."""
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as slow, ws_client(hub.ws_url, additional_headers=hub.auth) as full:
        await slow.send({"type": "subscribe", "channel": "device:fast", "throttle_ms": 200})
        assert (await slow.recv_until(lambda m: m["type"] == "subscribed"))["channel"] == "device:fast"
        await full.subscribe("device:fast")
        bad = await slow.subscribe_raw({"type": "subscribe", "channel": "device:fast", "throttle_ms": -1})
        assert (bad["type"], bad["code"]) == ("error", "bad_message")
        n, loop = 100, asyncio.get_running_loop()
        async with paho_client(hub.mqtt_port) as mqtt:
            started = loop.time()
            for seq in range(1, n + 1):
                mqtt.publish("edge/fast/telemetry", json.dumps({"seq": seq, "v": seq}), qos=0)
                await asyncio.sleep(max(0.0, started + seq / 50 - loop.time()))  # pacing, 50/s
            duration_s = loop.time() - started
        got_full = [(await full.recv_until(lambda m: m["type"] == "telemetry"))["data"]["seq"]
                    for _ in range(n)]
        got_slow = []
        while not got_slow or got_slow[-1] != n:
            got_slow.append((await slow.recv_until(lambda m: m["type"] == "telemetry"))["data"]["seq"])
    assert got_full == list(range(1, n + 1))
    assert got_slow == sorted(got_slow) and len(set(got_slow)) == len(got_slow)
    assert 3 <= len(got_slow) <= duration_s * 5 + 2, (len(got_slow), duration_s)
    assert hub.runtime.hub.stats.throttled >= n - len(got_slow) - 5
