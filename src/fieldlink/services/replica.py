"""Keeps this instance's read models (registry, status table, latest-state cache) in step with
what other instances ingest, warms the cache from the store at start, and catches up from the
store after the bus was lost.

Nothing is stored or re-published here: the instance that ingested an event did both. After
a bus outage other instances' events are missed; Redis is never the source of truth, so
``resume`` reads every device's newest record from the store, updates the cache, tells this
instance's clients about the ones they missed (``local_only`` events: every instance does
this itself) and writes the shared cache back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fieldlink.core.errors import FieldlinkError
from fieldlink.core.events import (
    DeviceAction,
    DeviceChanged,
    DomainEvent,
    StatusChanged,
    TelemetryAccepted,
)
from fieldlink.core.model import Device, Record
from fieldlink.ports import Bus, Cache, Store
from fieldlink.services.presence import Presence
from fieldlink.services.registry import DeviceRegistry

log = logging.getLogger("fieldlink.replica")


class Replica:
    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        presence: Presence,
        cache: Cache,
        store: Store,
        bus: Bus,
        clock_ms: Callable[[], int],
        cache_ttl_s: float,
    ) -> None:
        self.registry = registry
        self.presence = presence
        self.cache = cache
        self.store = store
        self.bus = bus
        self.clock_ms = clock_ms
        self.cache_ttl_s = cache_ttl_s

    def apply(self, event: DomainEvent) -> None:
        """Bus handler for other instances' events (``remote_only``)."""
        now_ms = self.clock_ms()
        if isinstance(event, TelemetryAccepted):
            record = event.record
            self.cache.remember(record, now_ms)
            self.presence.seen(record.device_id, now_ms)
            if self.registry.get(record.device_id) is None:
                self.registry.adopt(
                    Device(
                        record.device_id,
                        record.kind,
                        dict(record.meta or {}),
                        now_ms,
                        now_ms,
                        record.tenant_id,
                    )
                )
        elif isinstance(event, DeviceChanged) and event.action is DeviceAction.DELETED:
            self.registry.forget(event.device_id, event.tenant_id)
        elif isinstance(event, DeviceChanged):
            self.registry.adopt(
                Device(
                    event.device_id,
                    event.kind,
                    dict(event.meta),
                    event.created_ms,
                    None,
                    event.tenant_id,
                )
            )
        elif isinstance(event, StatusChanged):
            self.presence.adopt(event)

    async def warm(self) -> int:
        """At start: the latest state of every device that reported within the cache TTL,
        from the store, so snapshots and latest readings survive a restart. Returns how many."""
        now_ms = self.clock_ms()
        records = await self.store.latest_since(now_ms - int(self.cache_ttl_s * 1000))
        for record in records:
            record.tenant_id = self.registry.tenant_of(record.device_id)
            self.cache.remember(record, now_ms)
        return len(records)

    async def resume(self) -> None:
        """The bus is back after an outage: catch up from the store (see the module doc)."""
        since = self.clock_ms() - int(self.cache_ttl_s * 1000)
        try:
            missed = self.catch_up(await self.store.latest_since(since))
        except FieldlinkError as exc:
            log.warning("the bus is back, but the store is not (%s): mirror only", exc)
            missed = 0
        rebuilt = await self.cache.rebuild(self.clock_ms())
        log.warning(
            "the bus is back: cache rebuilt with %d devices from the store "
            "(%d newer than shown here)",
            rebuilt,
            missed,
        )

    def catch_up(self, records: list[Record]) -> int:
        """Records from the store newer than this instance's latest state: update the cache
        and publish them to this instance's clients. Returns how many were newer."""
        now_ms = self.clock_ms()
        newer = 0
        for record in records:
            current = self.cache.get_latest(record.device_id, now_ms)
            if current is not None and current.ts_ms >= record.ts_ms:
                continue
            newer += 1
            self.cache.remember(record, now_ms)
            record.tenant_id = self.registry.tenant_of(record.device_id)
            self.bus.publish(TelemetryAccepted(record, local_only=True))
        return newer
