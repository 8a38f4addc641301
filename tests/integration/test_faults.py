"""Fault tests with a Jepsen-style count (sent, acknowledged by the broker, stored, lost,
duplicated): Redis killed, PostgreSQL stopped, a hub instance killed, the broker restarted.
Each prints its count; run with -s to see them (docs/scale-out.md quotes them)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from fieldlink.mqtt.broker import free_port
from tests.support.clients import wait_until, ws_client
from tests.support.jepsen import Stream, tally, wait_stored

DEVICES = [f"f-{i:02d}" for i in range(20)]


async def test_redis_sigkill_loses_nothing_and_clients_catch_up(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        hubs = [
            await stack.enter_async_context(make_hub(
                mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                mqtt_shared_group="hubs", data_dir=tmp_path / f"hub{i}"))
            for i in (1, 2)
        ]
        watcher = await stack.enter_async_context(
            ws_client(hubs[0].ws_url, additional_headers=hubs[0].auth))
        await watcher.subscribe("all")
        shown: dict[str, int] = {}  # the newest seq instance 1's client has seen per device

        async def watch() -> None:
            while True:
                event = await watcher.recv(timeout=60)
                if event["type"] == "telemetry":
                    device, seq = event["data"]["device_id"], event["data"]["seq"]
                    shown[device] = max(shown.get(device, 0), seq)

        watching = asyncio.create_task(watch())
        stream = Stream(mosquitto.port, DEVICES, rate=200)
        stream.start()
        await wait_until(lambda: stream.seq >= 300, timeout=10)

        redis_server.stop(signal.SIGKILL)
        bus0 = hubs[0].runtime.bus
        assert bus0 is not None
        await wait_until(lambda: not bus0.connected, timeout=10, what="the bus notices")
        health = hubs[0].runtime.health.report()
        assert health["status"] == "degraded" and health["checks"]["bus"] == "down"
        during = sum(h.runtime.ingestor.counters.stored for h in hubs)
        await wait_until(lambda: stream.seq >= 600, timeout=10)
        await stream.stop()  # the outage ends with no new traffic: what follows is catch-up
        rows = await wait_stored(pg_url, stream.acknowledged())
        newest_stored: dict[str, int] = {}
        for device, seq in rows:
            newest_stored[device] = max(newest_stored.get(device, 0), seq)
        behind = [d for d in DEVICES if shown.get(d, 0) < newest_stored[d]]
        assert behind, "instance 2's records during the outage never reached instance 1"

        redis_server.start()  # same port, empty: no persistence
        restarted = time.monotonic()
        await wait_until(lambda: shown == newest_stored, timeout=10,
                         what="instance 1's client caught up with the store")
        caught_up_s = time.monotonic() - restarted
        r = aioredis.from_url(redis_server.url)
        try:
            async def cache_matches_store() -> bool:
                for device in DEVICES:
                    value = await r.get(f"node:{device}:last_state")
                    if value is None or json.loads(value)["seq"] != newest_stored[device]:
                        return False
                return True
            deadline = time.monotonic() + 10
            while not await cache_matches_store():
                assert time.monotonic() < deadline, "cache not rebuilt within 10 s"
                await asyncio.sleep(0.1)
        finally:
            await r.aclose()
        rebuilt_s = time.monotonic() - restarted
        watching.cancel()

        count = tally(stream, rows)
        stored_during = sum(h.runtime.ingestor.counters.stored for h in hubs) - during
        print(f"redis SIGKILL: {count}; {len(behind)} of {len(DEVICES)} devices behind on "
              f"instance 1 during the outage; clients caught up {caught_up_s:.2f} s and the "
              f"cache matched the store {rebuilt_s:.2f} s after the restart")
        assert count.lost == 0 and count.duplicated == 0
        assert count.acknowledged == count.sent
        assert stored_during > 0
        assert all(h.runtime.health.report()["status"] == "ok" for h in hubs)


async def test_postgres_stopped_for_10_s_loses_nothing(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, postgres, pg_url: str, tmp_path: Path
) -> None:
    async with make_hub(mqtt_url=mosquitto.url, database_url=pg_url,
                        data_dir=tmp_path / "hub") as hub:
        ingestor, writer = hub.runtime.ingestor, hub.runtime.writer
        stream = Stream(mosquitto.port, DEVICES, rate=100)
        stream.start()
        http_sent: list[tuple[str, int]] = []
        refused = 0
        retry_after: set[str] = set()
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth, timeout=10) as http:

            async def post_until_stored(device: str, seq: int) -> None:
                """An HTTP device: retries what it was told to retry."""
                nonlocal refused
                while True:
                    answer = await http.post("/api/telemetry",
                                             json={"device_id": device, "seq": seq, "v": seq})
                    if answer.status_code == 200:
                        http_sent.append((device, seq))
                        return
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["error"]["code"] == "unavailable"
                    refused += 1
                    retry_after.add(answer.headers["retry-after"])
                    await asyncio.sleep(float(answer.headers["retry-after"]) / 4)

            await wait_until(lambda: stream.seq >= 100, timeout=10)
            await post_until_stored("http-1", 1)
            try:
                postgres.stop(mode="fast")  # a clean stop: the test cluster runs with synchronous_commit=off, so a crash would lose its own acknowledged commits
                stopped = time.monotonic()
                await wait_until(lambda: writer.store_down, timeout=10, what="store down")
                health = (await http.get("/health"))
                assert health.status_code == 503
                assert health.json()["checks"]["store"] == "down"
                history = await http.get("/api/devices/f-01/telemetry")
                assert history.status_code == 503 and history.headers["retry-after"]
                assert history.json()["error"]["code"] == "unavailable"
                # Live reads do not need the database: the latest state is still served.
                assert (await http.get("/api/devices/f-01")).json()["latest"] is not None
                seq = 2
                while time.monotonic() - stopped < 10:  # a 10 s outage, by the terms
                    answer = await http.post("/api/telemetry",
                                             json={"device_id": "http-1", "seq": seq, "v": 1})
                    assert answer.status_code == 503 and answer.headers["retry-after"]
                    refused += 1
                    await asyncio.sleep(0.5)
                buffered = writer.buffered()
            finally:
                postgres.start()
            await post_until_stored("http-1", seq)
            await stream.stop(settle_s=30)
            await wait_until(lambda: not writer.store_down, timeout=30, what="store back")
        rows = await wait_stored(pg_url, stream.acknowledged() | set(http_sent))
        count = tally(stream, [r for r in rows if r[0] != "http-1"])
        http_rows = [r for r in rows if r[0] == "http-1"]
        print(f"postgres stopped 10 s: {count}; MQTT records buffered during the outage "
              f"{buffered}; HTTP: {len(http_sent)} accepted, {refused} answers 503, "
              f"{len(http_rows)} stored")
        assert count.lost == 0 and count.duplicated == 0
        assert count.acknowledged == count.sent
        assert buffered > 0 and refused > 0 and retry_after
        assert sorted(http_rows) == sorted(http_sent)
        assert ingestor.counters.dropped == {}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _serve(mqtt_url: str, pg_url: str, redis_url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fieldlink.cli", "serve", "--mqtt-url", mqtt_url,
         "--database-url", pg_url, "--redis-url", redis_url, "--mqtt-shared-group", "hubs",
         "--data-dir", str(data_dir), "--http-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, port


async def _healthy(port: int, timeout_s: float = 30) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the hub did not become healthy"
            await asyncio.sleep(0.1)


async def test_hub_sigkill_during_qos1_ingest_loses_nothing(  # type: ignore[no-untyped-def]
    mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    a, a_port = _serve(mosquitto.url, pg_url, redis_server.url, tmp_path / "a")
    b, b_port = _serve(mosquitto.url, pg_url, redis_server.url, tmp_path / "b")
    try:
        await asyncio.gather(_healthy(a_port), _healthy(b_port))
        stream = Stream(mosquitto.port, DEVICES, rate=300)
        stream.start()
        await wait_until(lambda: stream.seq >= 600, timeout=10)
        # Hold the table so instance A has records received but not committed when it dies
        # (a hub that acknowledged on receipt would lose exactly these).
        locker = await asyncpg.connect(pg_url)
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE telemetry IN EXCLUSIVE MODE")
        token = (tmp_path / "a" / "admin.token").read_text().strip()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a_port}",
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            deadline = time.monotonic() + 10
            while _metric((await http.get("/metrics")).text, "fieldlink_ingest_pending") < 50:
                assert time.monotonic() < deadline, "instance A never had pending writes"
                await asyncio.sleep(0.05)
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        await lock.rollback()
        await locker.close()
        await wait_until(lambda: stream.seq >= 1200, timeout=10)
        # The same instance comes back (same data dir, so the same MQTT session): the broker
        # re-sends what it never acknowledged.
        a, a_port = _serve(mosquitto.url, pg_url, redis_server.url, tmp_path / "a")
        await _healthy(a_port)
        await wait_until(lambda: stream.seq >= 1500, timeout=10)
        await stream.stop()
        rows = await wait_stored(pg_url, stream.acknowledged())
        count = tally(stream, rows)
        print(f"hub SIGKILL: {count}")
        assert count.lost == 0 and count.duplicated == 0
        assert count.acknowledged == count.sent
    finally:
        for process in (a, b):
            process.send_signal(signal.SIGTERM)
        for process in (a, b):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


async def test_broker_restart_reconnects_within_5_s_and_resumes(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, pg_url: str, tmp_path: Path
) -> None:
    async with make_hub(mqtt_url=mosquitto.url, database_url=pg_url,
                        data_dir=tmp_path / "hub") as hub:
        listener = hub.runtime.listener
        assert listener is not None
        stream = Stream(mosquitto.port, DEVICES, rate=100)
        stream.start()
        await wait_until(lambda: stream.seq >= 200, timeout=10)
        mosquitto.stop()
        await wait_until(lambda: not listener.connected.is_set(), timeout=5)
        mosquitto.start()
        restarted = time.monotonic()
        await wait_until(listener.connected.is_set, timeout=5, what="hub reconnects in 5 s")
        reconnect_s = time.monotonic() - restarted
        mark = stream.seq
        stored_before = hub.runtime.ingestor.counters.stored
        await wait_until(lambda: stream.seq >= mark + 200, timeout=10)
        await stream.stop(settle_s=30)
        rows = await wait_stored(pg_url, stream.acknowledged())
        count = tally(stream, rows)
        print(f"mosquitto restart: {count}; hub reconnected {reconnect_s:.2f} s after the "
              "broker was back")
        assert count.lost == 0 and count.duplicated == 0
        assert hub.runtime.ingestor.counters.stored > stored_before
        assert reconnect_s < 5


async def test_broker_outage_backs_off_and_reconnects_once_it_is_back(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, tmp_path: Path
) -> None:
    from fieldlink.mqtt.connection import RECONNECT_MAX_S, RECONNECT_MIN_S

    async with make_hub(mqtt_url=mosquitto.url, data_dir=tmp_path / "hub") as hub:
        listener = hub.runtime.listener
        assert listener is not None
        config = listener.client._connection_state.config  # gmqtt reads it before each retry
        mosquitto.stop()
        await wait_until(lambda: not listener.connected.is_set(), timeout=5)
        # Failed attempts double the delay: 0.25, 0.5, 1, 2, 4 s (the cap).
        await wait_until(lambda: config["reconnect_delay"] >= 2.0, timeout=15,
                         what="the reconnect delay grows")
        assert config["reconnect_delay"] <= RECONNECT_MAX_S
        mosquitto.start()
        back = time.monotonic()
        await wait_until(listener.connected.is_set, timeout=RECONNECT_MAX_S + 1,
                         what="reconnected within the cap")
        print(f"broker outage: reconnected {time.monotonic() - back:.2f} s after it was back")
        await wait_until(lambda: config["reconnect_delay"] == RECONNECT_MIN_S, timeout=2)
