"""Redis bus and latest-state cache (``redis://``) for several hub instances.

Bus. Every event is delivered to this instance's handlers synchronously (no round trip), and,
unless it is ``local_only``, sent whole (core/events.py ``encode_for_bus``) to Redis pub/sub on
one channel with this instance's id, in publish order, pipelined once per loop tick. Other
instances' events arrive through the subscriber task. The subscription is confirmed before
``start`` returns, so nothing published after it is missed; after a Redis failure the task
reconnects with capped backoff (0.1 s to 2 s) and resubscribes, and ``on_resume`` handlers run
(the read models catch up). Redis pub/sub is at most once: events published while Redis is
down are counted in ``dropped`` and lost for other instances' clients (they resync from
snapshots); Redis is never the source of truth, the store is.

Cache. Reads come from a local mirror (kept current by this instance's ingest and by every
other instance's events through the bus), so the hot path never awaits Redis. Writes go
behind, once per tick and latest-per-device, to ``node:{id}:last_state`` with the TTL. After
Redis restarts empty, the mirror is written back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fieldlink.backends.memory import MemoryCache
from fieldlink.core.events import DomainEvent, decode_from_bus, encode_for_bus
from fieldlink.core.measures import Measure
from fieldlink.core.model import Record
from fieldlink.ports import EventHandler, ResumeHandler

log = logging.getLogger("fieldlink.redis")

EVENTS_CHANNEL = "fieldlink:events"
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0


def encode_event(origin: str, event: DomainEvent) -> bytes:
    return origin.encode() + b"\n" + encode_for_bus(event)


def decode_event(message: bytes) -> tuple[str, DomainEvent]:
    origin, _, data = message.partition(b"\n")
    return origin.decode(), decode_from_bus(data)


class RedisBus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.instance_id = secrets.token_hex(6)
        self.client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._handlers: list[EventHandler] = []
        self._remote_handlers: list[EventHandler] = []
        self._outbox: list[bytes] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.connected = False
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.reconnects = 0
        self.malformed = 0
        self._resume_handlers: list[ResumeHandler] = []

    def subscribe(self, handler: EventHandler, *, remote_only: bool = False) -> None:
        """Every event: this instance's (synchronously) and other instances'; with
        ``remote_only``, other instances' only, before the other handlers."""
        (self._remote_handlers if remote_only else self._handlers).append(handler)

    def on_resume(self, handler: ResumeHandler) -> None:
        self._resume_handlers.append(handler)

    def ok(self) -> bool:
        return self.connected

    def measures(self) -> Iterator[Measure]:
        for name, help_text, value in (
            ("fieldlink_bus_published", "Events sent to other instances (Redis)", self.published),
            (
                "fieldlink_bus_received",
                "Events received from other instances (Redis)",
                self.received,
            ),
            (
                "fieldlink_bus_dropped",
                "Events not sent to other instances because Redis was unreachable",
                self.dropped,
            ),
        ):
            yield Measure(name, help_text, "counter", value)

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._subscribed.wait(), timeout_s)

    def publish(self, event: DomainEvent) -> None:
        for handler in self._handlers:
            handler(event)
        if event.local_only:
            return
        self._outbox.append(encode_event(self.instance_id, event))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                if not self.connected:
                    self.dropped += len(batch)
                    continue
                # One retry: after a Redis restart the pool's idle connections are dead, the
                # next one is fresh. ``connected`` follows the subscriber only.
                for attempt in (1, 2):
                    try:
                        pipe = self.client.pipeline(transaction=False)
                        for message in batch:
                            pipe.publish(EVENTS_CHANNEL, message)
                        await pipe.execute()
                        self.published += len(batch)
                        break
                    except (RedisError, OSError) as exc:
                        if attempt == 2:
                            self.dropped += len(batch)
                            log.warning(
                                "redis publish failed, %d events dropped: %s", len(batch), exc
                            )
        finally:
            self._flushing = False

    async def _listen(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                # Wait for the confirmation: from here on nothing published is missed.
                while True:
                    message = await pubsub.get_message(timeout=2.0)
                    if message and message["type"] == "subscribe":
                        break
                if self.reconnects or self._subscribed.is_set():
                    self.reconnects += 1
                self.connected = True
                self._subscribed.set()
                delay = BACKOFF_MIN_S
                for handler in self._resume_handlers if self.reconnects else ():
                    await handler()
                log.info("redis bus subscribed on %s", self.url)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        await self.client.ping()  # notice a dead connection while idle
                        continue
                    self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.connected:
                    log.warning("redis bus lost (%s); reconnecting", exc)
                self.connected = False
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _deliver(self, message: bytes) -> None:
        try:
            origin, event = decode_event(message)
        except (ValueError, TypeError, msgspec.DecodeError) as exc:  # never stop the listener
            self.malformed += 1
            log.warning("ignored a malformed message on %s: %s", EVENTS_CHANNEL, exc)
            return
        if origin == self.instance_id:
            return  # already delivered locally at publish time
        self.received += 1
        for handler in self._remote_handlers:
            handler(event)
        for handler in self._handlers:
            handler(event)

    async def close(self) -> None:
        if self._outbox and self.connected:
            await self._flush()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()


class RedisCache:
    """Latest state per device: a local mirror for reads, Redis written behind."""

    def __init__(self, url: str, ttl_s: float = 300.0) -> None:
        self.ttl_s = ttl_s
        self.mirror = MemoryCache(ttl_s)
        self.client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._pending: dict[str, bytes] = {}
        self._flushing = False
        self.write_errors = 0
        self.failing = False

    @staticmethod
    def key(device_id: str) -> str:
        return f"node:{device_id}:last_state"

    def set_latest(self, record: Record, now_ms: int) -> None:
        self.mirror.set_latest(record, now_ms)
        current = self.mirror.get_latest(record.device_id, now_ms)
        if current is not record:
            return  # an older record: the mirror kept the newer one
        self._pending[record.device_id] = orjson.dumps(record.to_event_data())
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())

    def get_latest(self, device_id: str, now_ms: int) -> Record | None:
        return self.mirror.get_latest(device_id, now_ms)

    def remember(self, record: Record, now_ms: int) -> None:
        """Update the mirror only (an event from another instance, which wrote Redis itself)."""
        self.mirror.set_latest(record, now_ms)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                try:
                    pipe = self.client.pipeline(transaction=False)
                    for device_id, value in batch.items():
                        pipe.set(self.key(device_id), value, ex=max(1, int(self.ttl_s)))
                    await pipe.execute()
                    if self.failing:
                        self.failing = False
                        log.warning("redis cache writes work again")
                except (RedisError, OSError) as exc:
                    self.write_errors += 1
                    if not self.failing:  # once per outage, not once per write
                        self.failing = True
                        log.warning("redis cache writes fail (the local mirror serves): %s", exc)
        finally:
            self._flushing = False

    async def rebuild(self, now_ms: int) -> int:
        """Write every live entry back to Redis (after Redis restarted empty): the mirror,
        which the caller has first brought up to date from the store."""
        entries = self.mirror.entries(now_ms)
        for record in entries:
            self._pending[record.device_id] = orjson.dumps(record.to_event_data())
        if entries and not self._flushing:
            self._flushing = True
            await self._flush()
        return len(entries)

    async def read(self, device_id: str) -> dict[str, Any] | None:
        """What Redis holds for a device (for tests and diagnostics)."""
        value = await self.client.get(self.key(device_id))
        return orjson.loads(value) if value is not None else None

    async def close(self) -> None:
        if self._pending:
            await self._flush()
        await self.client.aclose()
