"""Jepsen-style bookkeeping for fault tests: a real paho publisher of numbered records that
knows which ones the broker acknowledged, and the count against what PostgreSQL holds."""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt


@dataclass
class Tally:
    sent: int
    acknowledged: int
    stored: int
    lost: int  # acknowledged by the broker, never stored
    duplicated: int  # rows beyond the first for one (device, seq)

    def __str__(self) -> str:
        return (f"sent={self.sent} acknowledged={self.acknowledged} stored={self.stored} "
                f"lost={self.lost} duplicated={self.duplicated}")


@dataclass
class Stream:
    """Publishes ``{"seq": n, "v": n}`` to ``edge/<device>/telemetry`` at QoS 1 from its own
    paho client (which reconnects and re-sends unacknowledged messages by itself)."""

    port: int
    devices: list[str]
    rate: float = 200.0
    sent: list[tuple[tuple[str, int], mqtt.MQTTMessageInfo]] = field(default_factory=list)
    seq: int = 0

    def __post_init__(self) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="stream-" + secrets.token_hex(4))
        self.client.reconnect_delay_set(0.1, 1)
        # PUBACKs by packet id, from paho's thread (a stream stays under 65,535 messages, so
        # ids are not reused). MQTTMessageInfo.is_published() raises for a message that was
        # queued while disconnected, even after it went out and was acknowledged.
        self.acked_mids: set[int] = set()
        self.client.on_publish = lambda c, u, mid, rc, props: self.acked_mids.add(mid)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def publish_one(self) -> tuple[str, int]:
        assert self.seq < 65_000, "packet ids would repeat"
        device = self.devices[self.seq % len(self.devices)]
        self.seq += 1
        info = self.client.publish(f"edge/{device}/telemetry",
                                   json.dumps({"seq": self.seq, "v": self.seq}), qos=1)
        self.sent.append(((device, self.seq), info))
        return device, self.seq

    async def _run(self) -> None:
        period = 1.0 / self.rate
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stop.is_set():
            self.publish_one()
            next_at += period
            delay = next_at - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, settle_s: float = 20.0) -> None:
        """Stop publishing and wait (bounded) until the broker acknowledged what was sent."""
        self._stop.set()
        if self._task is not None:
            await self._task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle_s
        while loop.time() < deadline and len(self.acknowledged()) < len(self.sent):
            await asyncio.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()

    def acknowledged(self) -> set[tuple[str, int]]:
        acked = set(self.acked_mids)
        return {key for key, info in self.sent if info.mid in acked}


async def stored_rows(pg_url: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT device_id, seq FROM telemetry")
    finally:
        await conn.close()
    return [(r["device_id"], r["seq"]) for r in rows]


def tally(stream: Stream, rows: list[tuple[str, int]]) -> Tally:
    acked = stream.acknowledged()
    distinct = set(rows)
    return Tally(sent=len(stream.sent), acknowledged=len(acked), stored=len(distinct),
                 lost=len(acked - distinct), duplicated=len(rows) - len(distinct))


async def wait_stored(pg_url: str, keys: set[tuple[str, int]], timeout_s: float = 30.0) -> Any:
    """Poll PostgreSQL until every key is stored (or the deadline passes); returns the rows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        rows = await stored_rows(pg_url)
        if keys <= set(rows) or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.2)
