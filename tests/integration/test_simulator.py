"""Simulated edge nodes against a real hub: registration, storage, and the MQTT -> HTTP ->
MQTT fallback while the test stops and restarts the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from fieldlink.simulator.model import NodeModel, device_id
from fieldlink.simulator.runner import SimulatedDevice
from tests.support.clients import wait_until


@asynccontextmanager
async def devices(n: int, mqtt_url: str, http_url: str, **kw) -> AsyncIterator[list[SimulatedDevice]]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=http_url, timeout=5.0) as http:
        fleet = [SimulatedDevice(NodeModel.create(device_id(i + 1), seed=1), mqtt_url=mqtt_url,
                                 http=http, **kw) for i in range(n)]
        for d in fleet:
            d.start()
        try:
            await wait_until(lambda: all(d.mqtt_connected for d in fleet), what="devices connected")
            yield fleet
        finally:
            for d in fleet:
                await d.stop()


async def stored_seqs(hub, device: str) -> list[int]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        response = await http.get(f"/api/devices/{device}/telemetry", params={"limit": 10000})
    return [p["seq"] for p in response.json()["points"]]


async def test_fleet_registers_and_stores(hub) -> None:  # type: ignore[no-untyped-def]
    async with devices(3, hub.mqtt_url, hub.http_url) as fleet:
        for _ in range(2):
            for d in fleet:
                assert await d.tick()
        await wait_until(lambda: hub.runtime.ingestor.counters.received == 6)
        await hub.runtime.ingestor.settled()
    assert hub.runtime.ingestor.counters.stored == 6
    registered = hub.runtime.registry.devices
    assert sorted(registered) == ["sim-001", "sim-002", "sim-003"]
    assert registered["sim-001"].meta == fleet[0].model.meta
    assert await stored_seqs(hub, "sim-002") == [1, 2]
    # stop() published a retained offline status
    await wait_until(lambda: hub.runtime.presence.status("sim-003") == "offline")


async def test_mqtt_failures_fall_back_to_http_and_recover(mosquitto, make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(mqtt_url=mosquitto.url) as hub:
        async with devices(1, mosquitto.url, hub.http_url, puback_timeout_s=0.3) as (device,):
            assert await device.tick() and device.transport == "mqtt"
            mosquitto.stop()
            await wait_until(lambda: not device.mqtt_connected, what="device saw the broker go")
            results = [await device.tick() for _ in range(3)]
            # Two failures stay in the backlog; the third switches to HTTP and sends all three.
            assert results == [False, False, True]
            assert device.transport == "http" and device.mqtt_failures == 3
            assert await device.tick() and device.sent_http == 4
            mosquitto.start()
            await wait_until(lambda: device.mqtt_connected, timeout=15, what="device reconnected")
            assert await device.tick()
            assert device.transitions == ["mqtt", "http", "mqtt"]
            delivered = list(device.delivered)
        assert delivered == [1, 2, 3, 4, 5, 6]
        await wait_until(lambda: hub.runtime.ingestor.counters.stored >= 6, timeout=10)
        await hub.runtime.ingestor.settled()
        assert await stored_seqs(hub, device.id) == [1, 2, 3, 4, 5, 6]
