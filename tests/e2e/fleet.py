"""Simulated battery nodes for the dashboard tests: real MQTT devices (the simulator's
``SimulatedDevice``) on the hub's broker, each with its own report loop, so a test can silence
one (it stays connected and sends nothing: the hub's silence timeout takes it offline) or stop
one (a clean disconnect). And a backfill of past records over HTTP ingest, so that history
charts have a day to show."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx

from fieldlink.simulator.model import NodeModel
from fieldlink.simulator.runner import CommandBehavior, HostStats, SimulatedDevice
from tests.support.clients import wait_until


class Nodes:
    def __init__(self, hub: Any, interval_s: float = 0.5, seed: int = 7) -> None:
        self.hub = hub
        self.interval_s = interval_s
        self.seed = seed
        self.http = httpx.AsyncClient(base_url=hub.http_url, timeout=5.0)
        self.host = HostStats()
        self.devices: dict[str, SimulatedDevice] = {}
        self.loops: dict[str, asyncio.Task[None]] = {}

    def add(
        self, device_id: str, *, behavior: CommandBehavior = "ack", site: str = ""
    ) -> NodeModel:
        model = NodeModel.create(device_id, self.seed)
        model.site = site
        self.devices[device_id] = SimulatedDevice(
            model,
            mqtt_url=self.hub.mqtt_url,
            http=self.http,
            host_stats=self.host,
            command_behavior=behavior,
        )
        return model

    async def start(self) -> None:
        """Connect every node and start its reports; returns once the hub has them online."""
        for index, (device_id, device) in enumerate(self.devices.items()):
            device.start()
            offset = self.interval_s * index / max(1, len(self.devices))
            self.loops[device_id] = asyncio.create_task(self._report(device, offset))
        views = self.hub.runtime.views

        def online() -> bool:
            for device_id in self.devices:
                summary = views.get(device_id)
                if summary is None or summary["status"] != "online" or summary["latest"] is None:
                    return False
            return True

        await wait_until(online, timeout=15, what="nodes online with a reading")

    async def _report(self, device: SimulatedDevice, offset_s: float) -> None:
        await asyncio.sleep(offset_s)
        next_at = time.monotonic()
        while True:
            if device.mqtt_connected:
                await device.tick()
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def silence(self, device_id: str) -> None:
        """Stop its reports; it stays connected to the broker."""
        task = self.loops.pop(device_id)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stop(self, device_id: str) -> None:
        """Stop its reports and disconnect cleanly (it says so on its status topic)."""
        if device_id in self.loops:
            await self.silence(device_id)
        await self.devices[device_id].stop()

    async def close(self) -> None:
        for device_id in list(self.loops):
            await self.silence(device_id)
        await asyncio.gather(*(d.stop() for d in self.devices.values()), return_exceptions=True)
        await self.http.aclose()


async def backfill(
    hub: Any, models: list[NodeModel], hours: float = 24, step_s: float = 300
) -> int:
    """Post ``hours`` of past records for each node (its model driven through simulated time,
    no sleeping) over HTTP ingest, without ``seq`` so that the live records that follow are not
    taken for duplicates. Returns how many records were stored."""
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - int(hours * 3_600_000)
    stored = 0
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=10.0) as http:
        for model in models:
            snapshot = (model.battery.soc, model.battery.power_kw, model.seq)
            records = []
            ts = start_ms
            while ts < now_ms - 60_000:
                record = model.step(step_s, {"cpu": 12.0, "ram": 40.0, "disk": 30.0}, ts)
                record.pop("seq", None)
                records.append({"device_id": model.device_id, **record})
                ts += int(step_s * 1000)
            model.battery.soc, model.battery.power_kw, model.seq = snapshot
            for i in range(0, len(records), 100):
                while True:
                    response = await http.post("/api/telemetry", json=records[i : i + 100])
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                response.raise_for_status()
                stored += len(records[i : i + 100])
    return stored
