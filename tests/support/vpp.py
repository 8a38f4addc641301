"""Helpers for the VPP tests: battery nodes built explicitly (simulator models with a chosen
capacity, energy and SoC, not drawn from a seed), run as real MQTT devices that report on a
short interval, and REST polling of the dispatch log."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from fieldlink.simulator.model import Battery, NodeModel
from fieldlink.simulator.runner import CommandBehavior, HostStats, SimulatedDevice
from tests.support.clients import wait_until


@dataclass(frozen=True)
class NodeSpec:
    device_id: str
    capacity_kw: float
    battery_kwh: float
    soc: float  # percent
    behavior: CommandBehavior = "ack"


def node_model(spec: NodeSpec) -> NodeModel:
    """An idle node that holds its state until commanded (no daily routine)."""
    battery = Battery(capacity_kw=spec.capacity_kw, battery_kwh=spec.battery_kwh, soc=spec.soc)
    return NodeModel(device_id=spec.device_id, rng=random.Random(spec.device_id),
                     battery=battery, auto_dispatch=False)


@asynccontextmanager
async def reporting_fleet(hub: Any, specs: list[NodeSpec], interval_s: float = 0.5,
                          mqtt_url: str | None = None) -> AsyncIterator[list[SimulatedDevice]]:
    """The nodes as ``SimulatedDevice``s on the hub's broker, each reporting every
    ``interval_s`` (staggered), registered with the hub and known to its aggregate as online
    with a SoC reading before this yields."""
    host = HostStats()
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth, timeout=5.0) as http:
        devices = [SimulatedDevice(node_model(s), mqtt_url=mqtt_url or hub.mqtt_url, http=http,
                                   host_stats=host, command_behavior=s.behavior)
                   for s in specs]
        for device in devices:
            device.start()

        async def report(device: SimulatedDevice, offset_s: float) -> None:
            await asyncio.sleep(offset_s)
            next_at = time.monotonic()
            while True:
                if device.mqtt_connected:
                    await device.tick()
                next_at += interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        tasks = [asyncio.create_task(report(d, interval_s * i / len(devices)))
                 for i, d in enumerate(devices)]
        ids = {s.device_id for s in specs}
        aggregate = hub.runtime.aggregate

        def ready() -> bool:
            nodes = [n for n in aggregate.nodes("default") if n.device_id in ids]
            return len(nodes) == len(ids) and all(n.online and n.soc is not None for n in nodes)

        try:
            await wait_until(ready, timeout=15, what="nodes online with readings")
            yield devices
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(d.stop() for d in devices), return_exceptions=True)


def setpoints(device: SimulatedDevice) -> list[float]:
    """The ``kw`` of every setpoint command the device received, in order."""
    return [c["params"]["kw"] for c in device.commands_received if c.get("action") == "setpoint"]


async def poll_dispatch(http: httpx.AsyncClient, dispatch_id: str,
                        until: Callable[[dict[str, Any]], bool], within: float,
                        what: str) -> dict[str, Any]:
    """The dispatch log entry (REST) once ``until`` holds for it; polled every 0.1 s, as the
    log has no event a REST reader could await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        answer = await http.get(f"/api/vpp/dispatches/{dispatch_id}")
        assert answer.status_code == 200, answer.text
        doc: dict[str, Any] = answer.json()
        if until(doc):
            return doc
        if loop.time() > deadline:
            raise AssertionError(f"{what} not within {within} s: state {doc['state']}, "
                                 f"achieved {doc['achieved_kw']}, notes {doc['notes']}, "
                                 f"shares {doc['shares']}")
        await asyncio.sleep(0.1)


def energy_room_kwh(spec: NodeSpec, soc_min: float = 10.0) -> float:
    """Energy a node holds above ``soc_min``."""
    return max(0.0, (spec.soc - soc_min) / 100.0 * spec.battery_kwh)


def discharge_headroom_kw(spec: NodeSpec, duration_s: float, soc_min: float = 10.0) -> float:
    """What a node can discharge for ``duration_s``: its capacity, or its energy above
    ``soc_min`` spread over the duration, whichever is less."""
    return min(spec.capacity_kw, energy_room_kwh(spec, soc_min) * 3600.0 / duration_s)
