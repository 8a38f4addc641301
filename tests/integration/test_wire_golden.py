"""The native ``/ws`` protocol's bytes on the wire, pinned.

A fixed script of inputs (MQTT telemetry and status, client messages, commands with a device
that answers) is played against a hub the test starts; every text frame the client receives is
recorded exactly as it arrives. Values that depend on the clock or on randomness (server time,
client id, timestamps the hub stamps itself) are replaced by placeholders; everything else,
including key order, spacing and how events share frames, must match
``tests/golden/native_wire.json`` byte for byte. A ping after each step is a barrier: whatever
the step produced arrives before its pong, so the recording does not depend on timing.

Regenerate (only when a wire change is intended and documented): FIELDLINK_REGEN_GOLDEN=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.support.clients import paho_client, publish

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "native_wire.json"
FIXED_TS = 1_700_000_000_000  # record timestamps given by the script (2023-11-14)


def normalize(frame: str, now_ms: int) -> str:
    """Replace clock- and randomness-dependent values, leave every other byte as it is."""
    frame = re.sub(r'"client_id":"[^"]*"', '"client_id":"<id>"', frame)

    def clock(match: re.Match[str]) -> str:
        value = int(match.group(2))
        near_now = abs(value - now_ms) < 86_400_000
        return f'{match.group(1)}{"<now>" if near_now else value}'

    return re.sub(r'(":)(\d{13})(?=[,}\]])', clock, frame)


class Recorder:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[str] = []
        self._pings = 0

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        """Record frames until one holds a message matching ``predicate``."""
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(raw, str)
            self.frames.append(raw)
            parsed = json.loads(raw)
            for message in parsed if isinstance(parsed, list) else [parsed]:
                if predicate(message):
                    return

    async def barrier(self) -> None:
        self._pings += 1
        ping_id = f"barrier-{self._pings}"
        await self.ws.send(json.dumps({"type": "ping", "id": ping_id}))
        await self.until(lambda m: m.get("type") == "pong" and m.get("id") == ping_id)

    async def send(self, message: Any, expect: Any) -> None:
        await self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))
        await self.until(expect)
        await self.barrier()


def is_type(kind: str, **fields: Any) -> Any:
    return lambda m: m.get("type") == kind and all(m.get(k) == v for k, v in fields.items())


async def play(hub: Any) -> list[str]:
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth, timeout=10) as http:
        created = await http.post(
            "/api/users", json={"username": "golden", "password": "golden-pass-1", "role": "admin"}
        )
        assert created.status_code == 201, created.text
        login = await http.post(
            "/api/auth/token", json={"username": "golden", "password": "golden-pass-1"}
        )
        token = login.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(hub.ws_url, additional_headers=headers) as ws, paho_client(
        hub.mqtt_port, client_id="golden-g2"
    ) as device:
        rec = Recorder(ws)
        await rec.until(is_type("connected"))
        await rec.send({"type": "subscribe", "channel": "all", "id": 1}, is_type("subscribed"))
        await rec.send(
            {"type": "subscribe", "channel": "device:g1", "id": "two"}, is_type("subscribed")
        )
        await publish(
            device,
            "edge/g1/telemetry",
            {"ts": FIXED_TS, "seq": 1, "temp": 21.5, "ok": True, "meta": {"capacity_kw": 5}},
        )
        await rec.until(is_type("telemetry", channel="all"))
        await rec.barrier()
        await publish(device, "edge/g1/telemetry", {"ts": FIXED_TS + 1000, "seq": 2, "temp": 22})
        await rec.until(is_type("telemetry", channel="all"))
        await rec.barrier()
        await publish(device, "edge/g1/status", "offline")
        await rec.until(is_type("status", channel="all"))
        await rec.barrier()
        await rec.send({"type": "subscribe", "channel": "tenant:default", "id": 3},
                       is_type("subscribed"))
        await rec.send({"type": "unsubscribe", "channel": "device:g1", "id": 4},
                       is_type("unsubscribed"))
        # Client mistakes: each gets an error frame and the connection stays open.
        await rec.send("{not json", is_type("error"))
        await rec.send({"type": "dance"}, is_type("error"))
        await rec.send({"type": "subscribe", "channel": "nope"}, is_type("error"))
        await rec.send(b"\x00\x01", is_type("error"))
        await rec.send({"type": "command", "id": "bad-1", "device": "g1"}, is_type("command"))
        # A command to an offline device fails at once; one to an unknown device is rejected.
        await rec.send({"type": "command", "id": "cmd-off", "device": "g1", "action": "idle"},
                       is_type("command", id="cmd-off", status="failed", channel="all"))
        await rec.send({"type": "command", "id": "cmd-unknown", "device": "nobody",
                        "action": "idle"}, is_type("command", id="cmd-unknown", status="rejected"))
        await rec.send({"type": "command", "id": "cmd-off", "device": "g1", "action": "idle"},
                       is_type("command", id="cmd-off", status="rejected"))
        # A device that answers: g2 comes online, receives the command, acks it with a result.
        loop = asyncio.get_running_loop()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            body = json.loads(message.payload)
            ack = {"id": body["id"], "ok": True, "result": {"mode": body["action"]}}
            client.publish("edge/g2/ack", json.dumps(ack), qos=1)

        device.on_message = on_message
        subscribed = loop.create_future()
        device.on_subscribe = lambda *a: loop.call_soon_threadsafe(
            lambda: subscribed.done() or subscribed.set_result(True)
        )
        device.subscribe("edge/g2/control", qos=1)
        await asyncio.wait_for(subscribed, 5)
        await publish(device, "edge/g2/telemetry", {"ts": FIXED_TS, "seq": 7, "power_kw": -1.5})
        await rec.until(is_type("telemetry", channel="all"))
        await rec.barrier()
        await rec.send({"type": "command", "id": "cmd-ack", "device": "g2", "action": "charge",
                        "params": {"setpoint_kw": 2}},
                       is_type("command", id="cmd-ack", status="acked", channel="all"))
        await rec.send({"type": "auth", "token": token, "id": 9}, is_type("auth"))
        await rec.send({"type": "auth", "token": "garbage", "id": 10}, is_type("error"))
        return rec.frames


async def test_native_wire_protocol_is_byte_identical(hub) -> None:  # type: ignore[no-untyped-def]
    frames = await play(hub)
    now_ms = int(time.time() * 1000)
    normalized = [normalize(f, now_ms) for f in frames]
    if os.environ.get("FIELDLINK_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(normalized, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    for index, (got, want) in enumerate(zip(normalized, expected, strict=False)):
        assert got == want, f"frame {index} differs"
    assert len(normalized) == len(expected)


def test_normalize_keeps_everything_but_clock_and_ids() -> None:
    now = 1_800_000_000_000
    frame = '{"type":"connected","client_id":"abc","server_time":1800000000123,"ts":1700000000000}'
    assert normalize(frame, now) == (
        '{"type":"connected","client_id":"<id>","server_time":<now>,"ts":1700000000000}'
    )
