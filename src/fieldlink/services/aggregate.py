"""The live fleet aggregate of every tenant (and of each group of its nodes, by a device
attribute such as ``site``), pushed as ``AggregateChanged`` events and served over REST.

Every instance computes it from its own read models (registry, presence, latest-state cache),
which follow every instance's records through the bus, so every instance computes the same
numbers for its own clients (``local_only`` events). A tenant is recomputed when one of its
nodes reports power or SoC, changes status or is registered, at most ``max_rate_hz`` times a
second, and every few seconds anyway (readings age: ``coverage`` changes with time alone).
The arithmetic is core/vpp.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

from fieldlink.core.events import (
    AggregateChanged,
    DeviceChanged,
    DomainEvent,
    StatusChanged,
    TelemetryAccepted,
)
from fieldlink.core.measures import Measure
from fieldlink.core.model import Device
from fieldlink.core.vpp import Aggregate, Node, aggregate
from fieldlink.ports import Bus, Cache, PresenceView
from fieldlink.services.registry import DeviceRegistry

POWER, SOC = "power_kw", "soc"
REFRESH_S = 5.0  # republish this often even without events (coverage ages)


def is_node(device: Device) -> bool:
    """A VPP node declares its capacity."""
    capacity = device.meta.get("capacity_kw")
    return (
        isinstance(capacity, int | float)
        and not isinstance(capacity, bool)
        and 0 < capacity < 1e300  # as the stores' fleet power history counts nodes
    )


class AggregateService:
    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        presence: PresenceView,
        cache: Cache,
        bus: Bus,
        clock_ms: Callable[[], int],
        max_rate_hz: float = 2.0,
        max_age_ms: int = 60_000,
        group_attribute: str = "site",
    ) -> None:
        self.registry = registry
        self.presence = presence
        self.cache = cache
        self.bus = bus
        self.clock_ms = clock_ms
        self.interval_s = 1.0 / max_rate_hz
        self.max_age_ms = max_age_ms
        self.group_attribute = group_attribute
        self._dirty: set[str] = set()
        self.published = 0

    # ---- reads --------------------------------------------------------------------------

    def nodes(self, tenant_id: str) -> list[Node]:
        now_ms = self.clock_ms()
        out = []
        for device in self.registry:
            if device.tenant_id != tenant_id or not is_node(device):
                continue
            latest = self.cache.get_latest(device.id, now_ms)
            power = soc = None
            if latest is not None:
                power = _number(latest.metrics.get(POWER))
                soc = _number(latest.metrics.get(SOC))
            kwh = _number(device.meta.get("battery_kwh")) or 0.0
            out.append(
                Node(
                    device.id,
                    float(device.meta["capacity_kw"]),
                    kwh,
                    power,
                    soc,
                    latest.ts_ms if latest is not None else None,
                    self.presence.status(device.id) == "online",
                    str(device.meta.get(self.group_attribute, "")),
                )
            )
        return out

    def state(self, tenant_id: str) -> dict[str, Any]:
        """``{"tenant", "total": {...}, "groups": {name: {...}}, "max_age_s"}``."""
        nodes = self.nodes(tenant_id)
        now_ms = self.clock_ms()
        groups: dict[str, list[Node]] = {}
        for node in nodes:
            if node.group:
                groups.setdefault(node.group, []).append(node)
        return {
            "tenant": tenant_id,
            "total": aggregate(nodes, now_ms, self.max_age_ms).to_dict(),
            "groups": {
                name: aggregate(members, now_ms, self.max_age_ms).to_dict()
                for name, members in sorted(groups.items())
            },
            "max_age_s": self.max_age_ms / 1000,
        }

    def capacity_kw(self, tenant_id: str) -> float:
        """The tenant's nodes' capacity now (online or not)."""
        return sum(
            float(d.meta["capacity_kw"])
            for d in self.registry
            if d.tenant_id == tenant_id and is_node(d)
        )

    def tenants(self) -> set[str]:
        """Tenants that have nodes."""
        return {d.tenant_id for d in self.registry if is_node(d)}

    def total(self, tenant_id: str) -> Aggregate:
        return aggregate(self.nodes(tenant_id), self.clock_ms(), self.max_age_ms)

    # ---- the bus ------------------------------------------------------------------------

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler: note which tenants changed (cheap: runs for every record)."""
        if isinstance(event, TelemetryAccepted):
            metrics = event.record.metrics
            if POWER in metrics or SOC in metrics:
                self._dirty.add(event.record.tenant_id)
        elif isinstance(event, StatusChanged | DeviceChanged):
            self._dirty.add(event.tenant_id)

    async def run(self) -> None:
        """Publish dirty tenants' aggregates at most ``max_rate_hz`` a second, and every
        tenant with nodes every ``REFRESH_S``, until cancelled."""
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + REFRESH_S
        while True:
            await asyncio.sleep(self.interval_s)
            if loop.time() >= next_refresh:
                next_refresh = loop.time() + REFRESH_S
                self._dirty.update(d.tenant_id for d in self.registry if is_node(d))
            dirty, self._dirty = self._dirty, set()
            for tenant_id in sorted(dirty):
                state = self.state(tenant_id)
                if state["total"]["nodes_total"]:
                    self.published += 1
                    self.bus.publish(AggregateChanged(tenant_id, state, local_only=True))

    def measures(self) -> Iterator[Measure]:
        yield Measure(
            "fieldlink_vpp_aggregates_published",
            "Fleet aggregate events published (on this instance)",
            "counter",
            self.published,
        )


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
