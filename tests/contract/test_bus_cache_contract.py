"""Contract suites for the Bus and Cache ports (ports.py), run against every implementation:
the in-process ones and Redis (a private redis-server per test). What only makes sense with
several instances (events crossing, resuming after an outage) runs against Redis alone: the
in-process bus is single node by contract."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fieldlink.backends.memory import MemoryBus, MemoryCache
from fieldlink.backends.redis import EVENTS_CHANNEL, RedisBus, RedisCache
from fieldlink.core.commands import Command, Status
from fieldlink.core.events import (
    CommandMoved,
    DeviceAction,
    DeviceChanged,
    DeviceStatus,
    DomainEvent,
    StatusChanged,
    StatusReason,
    TelemetryAccepted,
)
from fieldlink.core.model import Record
from fieldlink.ports import Bus, Cache
from tests.support.clients import wait_until
from tests.support.servers import Redis

T0 = 1_764_000_000_000


def events() -> list[DomainEvent]:
    """One of each event type, with every field a receiver needs."""
    return [
        DeviceChanged("n1", "acme", DeviceAction.CREATED, "battery", {"capacity_kw": 5}, T0),
        StatusChanged("n1", "acme", DeviceStatus.ONLINE, T0, StatusReason.TELEMETRY),
        TelemetryAccepted(Record("n1", T0, {"power_kw": 1.5}, 7, {"capacity_kw": 5}, "battery",
                                 "acme")),
        CommandMoved(Command("c1", "n1", "idle", {}, 1000, T0, T0 + 1000, Status.ACKED,
                             {"pending": T0, "acked": T0 + 5}, result={"ok": 1}), "acme"),
    ]


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bus]:
    b: Bus
    if request.param == "memory":
        b = MemoryBus()
    else:
        b = RedisBus(request.getfixturevalue("redis_server").url)
    await b.start()
    yield b
    await b.close()


async def test_own_events_reach_handlers_synchronously_in_order(bus: Bus) -> None:
    seen: list[DomainEvent] = []
    remote: list[DomainEvent] = []
    bus.subscribe(seen.append)
    bus.subscribe(remote.append, remote_only=True)
    for event in events():
        bus.publish(event)
    assert seen == events()  # already delivered when publish returned
    assert remote == []  # never this instance's own events
    assert bus.ok()


@pytest.fixture
async def two_instances(redis_server: Redis) -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    a, b = RedisBus(redis_server.url), RedisBus(redis_server.url)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def test_events_cross_instances_whole_and_in_order(
    two_instances: tuple[RedisBus, RedisBus],
) -> None:
    a, b = two_instances
    order: list[str] = []
    received: list[DomainEvent] = []
    b.subscribe(lambda e: (order.append("all"), received.append(e)))
    b.subscribe(lambda e: order.append("remote"), remote_only=True)
    sent = events() * 25
    for event in sent:
        a.publish(event)
    a.publish(StatusChanged("n9", "acme", DeviceStatus.OFFLINE, T0, StatusReason.SILENCE,
                            local_only=True))
    a.publish(events()[0])  # a marker after the local-only one
    await wait_until(lambda: len(received) == len(sent) + 1, what="events crossed")
    assert received[:-1] == sent  # equal as typed values: nothing lost in transit
    assert all(e.local_only is False for e in received)  # the silence event stayed home
    assert order[:2] == ["remote", "all"]  # read models first, then everyone else
    assert b.received == len(sent) + 1
    await wait_until(lambda: a.published == len(sent) + 1, what="publishes confirmed")


async def test_a_started_bus_misses_nothing_published_afterwards(redis_server: Redis) -> None:
    a = RedisBus(redis_server.url)
    await a.start()
    try:
        for _ in range(5):
            b = RedisBus(redis_server.url)
            got: list[DomainEvent] = []
            b.subscribe(got.append)
            await b.start()
            a.publish(events()[1])  # right after start returned
            await wait_until(lambda: len(got) == 1, what="first event")
            await b.close()
    finally:
        await a.close()


async def test_garbage_on_the_channel_is_counted_and_skipped(
    two_instances: tuple[RedisBus, RedisBus],
) -> None:
    a, b = two_instances
    got: list[DomainEvent] = []
    b.subscribe(got.append)
    for junk in (b"no newline", b"x\n{not json", b'x\n{"event":"nope"}', b"\xff\xfe\n{}"):
        await a.client.publish(EVENTS_CHANNEL, junk)
    a.publish(events()[2])
    await wait_until(lambda: len(got) == 1, what="the real event after the garbage")
    assert b.malformed == 4 and got == [events()[2]]


async def test_resume_handlers_run_after_an_outage_and_ok_follows_the_link(
    tmp_path: Path,
) -> None:
    server = Redis(tmp_path / "r")
    server.start()
    bus = RedisBus(server.url)
    resumed = asyncio.Event()
    calls: list[bool] = []

    async def on_resume() -> None:
        calls.append(bus.ok())
        resumed.set()

    bus.on_resume(on_resume)
    await bus.start()
    try:
        assert bus.ok() and calls == []  # not at the first start
        server.stop(signal.SIGKILL)
        await wait_until(lambda: not bus.ok(), timeout=10, what="bus down")
        server.start()
        await asyncio.wait_for(resumed.wait(), 10)
        assert calls == [True]
    finally:
        await bus.close()
        server.stop()


def test_the_memory_bus_is_single_node() -> None:
    bus = MemoryBus()
    remote: list[Any] = []
    bus.subscribe(remote.append, remote_only=True)
    bus.on_resume(lambda: asyncio.sleep(0))
    bus.publish(events()[0])
    assert remote == [] and bus.ok()


# ---- Cache ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    c: Cache
    if request.param == "memory":
        c = MemoryCache(ttl_s=10)
    else:
        c = RedisCache(request.getfixturevalue("redis_server").url, ttl_s=10)
    yield c
    await c.close()


def rec(device: str, ts: int, **metrics: Any) -> Record:
    return Record(device, ts, metrics or {"v": ts})


async def test_latest_wins_and_an_older_record_is_ignored(cache: Cache) -> None:
    cache.set_latest(rec("d", T0 + 2000), T0)
    cache.set_latest(rec("d", T0 + 1000), T0)  # arrives late: older
    latest = cache.get_latest("d", T0 + 1)
    assert latest is not None and latest.ts_ms == T0 + 2000
    cache.remember(rec("d", T0 + 3000), T0 + 2)  # another instance's, newer
    latest = cache.get_latest("d", T0 + 3)
    assert latest is not None and latest.ts_ms == T0 + 3000
    assert cache.get_latest("other", T0) is None


async def test_entries_expire_after_the_ttl(cache: Cache) -> None:
    cache.set_latest(rec("d", T0), T0)
    assert cache.get_latest("d", T0 + 9_999) is not None
    assert cache.get_latest("d", T0 + 10_000) is None
    cache.set_latest(rec("d", T0 - 5000), T0 + 10_001)  # older, but the newer one expired
    assert cache.get_latest("d", T0 + 10_002) is not None


async def test_redis_cache_writes_behind_and_rebuilds(redis_server: Redis) -> None:
    cache = RedisCache(redis_server.url, ttl_s=30)
    try:
        now = T0
        cache.set_latest(rec("w1", T0, power_kw=2.5), now)
        for _ in range(500):  # written behind: no event to await, so poll the server
            if await cache.read("w1") is not None:
                break
            await asyncio.sleep(0.01)
        assert await cache.read("w1") == {"device_id": "w1", "ts": T0, "power_kw": 2.5}
        ttl = await cache.client.ttl(RedisCache.key("w1"))
        assert 0 < ttl <= 30
        await cache.client.flushall()  # Redis restarted empty
        assert await cache.rebuild(now) == 1
        assert await cache.read("w1") == {"device_id": "w1", "ts": T0, "power_kw": 2.5}
    finally:
        await cache.close()


async def test_memory_cache_has_nothing_to_rebuild() -> None:
    cache = MemoryCache(10)
    cache.set_latest(rec("d", T0), T0)
    assert await cache.rebuild(T0) == 0
