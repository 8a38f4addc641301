"""Three hub instances against one mosquitto, one Redis and one PostgreSQL (SPEC §2 shape 3):
telemetry is consumed once through a shared subscription, stored exactly once, and reaches
WebSocket clients on every instance."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from tests.support.clients import paho_client, wait_until, ws_client
from tests.support.jepsen import Stream, stored_rows, tally, wait_stored


async def test_three_instances_store_once_and_fan_out_everywhere(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        hubs = [
            await stack.enter_async_context(make_hub(
                mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                mqtt_shared_group="hubs", data_dir=tmp_path / f"hub{i}"))
            for i in (1, 2, 3)
        ]
        watcher = await stack.enter_async_context(ws_client(hubs[0].ws_url, additional_headers=hubs[0].auth))
        assert (await watcher.subscribe("all"))["type"] == "subscribed"

        devices = [f"so-{i:02d}" for i in range(30)]
        stream = Stream(mosquitto.port, devices)
        for _ in range(300):
            stream.publish_one()
        await stream.stop()
        acked = stream.acknowledged()
        assert len(acked) == 300

        # The WebSocket client on instance 1 sees every record, whichever instance took it.
        seen: set[tuple[str, int]] = set()
        while len(seen) < 300:
            event = await watcher.recv_until(lambda m: m["type"] == "telemetry", timeout=10)
            seen.add((event["data"]["device_id"], event["data"]["seq"]))
        assert seen == acked

        rows = await wait_stored(pg_url, acked)
        count = tally(stream, rows)
        print(f"three instances: {count}")
        assert (count.lost, count.duplicated, count.stored) == (0, 0, 300)
        stored_by = [hub.runtime.ingestor.counters.stored for hub in hubs]
        assert sum(stored_by) == 300
        assert all(n > 0 for n in stored_by), f"every instance takes a share: {stored_by}"

        # Read models everywhere: instance 3's REST knows every device and its latest value.
        async with httpx.AsyncClient(base_url=hubs[2].http_url, headers=hubs[2].auth) as http:
            listed = (await http.get("/api/devices")).json()
            assert {d["device_id"] for d in listed["devices"]} == set(devices)
            last = max(seq for device, seq in acked if device == "so-07")
            detail = (await http.get("/api/devices/so-07")).json()
            assert detail["latest"]["seq"] == last and detail["status"] == "online"

        # The shared cache: node:{id}:last_state with the TTL.
        r = aioredis.from_url(redis_server.url)
        try:
            value = json.loads(await r.get("node:so-07:last_state"))
            ttl = await r.ttl("node:so-07:last_state")
        finally:
            await r.aclose()
        assert value["seq"] == last and 0 < ttl <= 300
        for hub in hubs:
            health = hub.runtime.health.report()
            assert health["status"] == "ok", health


async def test_first_event_after_start_is_not_lost(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, tmp_path: Path
) -> None:
    """The bus subscription is confirmed before an instance ingests: an event produced the
    moment a second instance is up reaches the first instance's clients."""
    async with make_hub(mqtt_url=mosquitto.url, redis_url=redis_server.url,
                        mqtt_shared_group="g", data_dir=tmp_path / "a") as a:
        async with ws_client(a.ws_url, additional_headers=a.auth) as ws:
            await ws.subscribe("device:first")
            async with make_hub(mqtt_url=mosquitto.url, redis_url=redis_server.url,
                                data_dir=tmp_path / "b") as b:
                async with httpx.AsyncClient(base_url=b.http_url, headers=b.auth) as http:
                    answer = await http.post("/api/telemetry",
                                             json={"device_id": "first", "seq": 1, "v": 1})
                    assert answer.status_code == 200
                event = await ws.recv_until(lambda m: m["type"] == "telemetry", timeout=5)
                assert event["data"]["seq"] == 1
                assert a.runtime.bus is not None and a.runtime.bus.received >= 1


async def test_a_stopped_instance_leaves_the_group_so_its_share_is_not_parked(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    """mosquitto keeps routing a shared subscription's share to a member that is away; a hub
    that stops cleanly unsubscribes first, so the remaining instance gets everything."""
    common = dict(mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                  mqtt_shared_group="hubs")
    async with make_hub(**common, data_dir=tmp_path / "a") as a:
        async with make_hub(**common, data_dir=tmp_path / "b"):
            pass  # b started, joined the group, and stopped cleanly
        stream = Stream(mosquitto.port, ["left-1", "left-2"])
        for _ in range(100):
            stream.publish_one()
        await stream.stop()
        rows = await wait_stored(pg_url, stream.acknowledged(), timeout_s=10)
        count = tally(stream, rows)
        assert (count.acknowledged, count.lost, count.duplicated) == (100, 0, 0)
        assert a.runtime.ingestor.counters.stored == 100


async def test_garbage_on_the_redis_channel_does_not_stop_the_bus(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, tmp_path: Path
) -> None:
    async with make_hub(mqtt_url=mosquitto.url, redis_url=redis_server.url,
                        mqtt_shared_group="g", data_dir=tmp_path / "a") as a, \
            make_hub(mqtt_url=mosquitto.url, redis_url=redis_server.url,
                     mqtt_shared_group="g", data_dir=tmp_path / "b") as b:
        r = aioredis.from_url(redis_server.url)
        try:
            for junk in (b"not json", b'["x"]\n{}', b'{"a": 1}\n', b"\xff\xfe"):
                await r.publish("fieldlink:events", junk)
        finally:
            await r.aclose()
        bus = a.runtime.bus
        assert bus is not None
        await wait_until(lambda: bus.malformed == 4, timeout=5)
        async with ws_client(a.ws_url, additional_headers=a.auth) as ws:
            await ws.subscribe("device:after")
            async with httpx.AsyncClient(base_url=b.http_url) as http:
                assert (await http.post("/api/telemetry",
                                        json={"device_id": "after", "v": 1})).is_success
            event = await ws.recv_until(lambda m: m["type"] == "telemetry", timeout=5)
        assert event["data"]["device_id"] == "after"
