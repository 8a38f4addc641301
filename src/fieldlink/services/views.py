"""Read models over the registry, the status table and the latest-state cache: what REST
answers and what a client gets as a channel's snapshot. Reads only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from fieldlink.core import channels
from fieldlink.core.model import Device, Record
from fieldlink.ports import Cache, OpenAlerts
from fieldlink.services.presence import Presence
from fieldlink.services.registry import DeviceRegistry


class TenantSnapshot(Protocol):
    def __call__(self, tenant_id: str) -> dict[str, Any]: ...


class DeviceViews:
    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        presence: Presence,
        cache: Cache,
        alerts: OpenAlerts,
        aggregate: TenantSnapshot,
        dispatch: TenantSnapshot,
        clock_ms: Callable[[], int],
    ) -> None:
        self.registry = registry
        self.presence = presence
        self.cache = cache
        self.alerts = alerts
        self.aggregate = aggregate  # a tenant's fleet aggregate (services/aggregate.py)
        self.dispatch = dispatch  # its active dispatches and pending proposals
        self.clock_ms = clock_ms

    def summary(self, device: Device) -> dict[str, Any]:
        presence = self.presence
        latest = self.cache.get_latest(device.id, self.clock_ms())
        return {
            "device_id": device.id,
            "kind": device.kind,
            "meta": device.meta,
            "status": str(presence.status(device.id)),
            "status_since": presence.since_ms(device.id),
            "status_reason": _reason(presence.reason(device.id)),
            "last_seen": presence.last_seen_ms(device.id) or device.last_seen_ms,
            "created": device.created_ms,
            "tenant": device.tenant_id,
            "latest": latest.to_event_data() if latest else None,
        }

    def list(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Every device, or one tenant's."""
        devices = sorted(self.registry, key=lambda d: d.id)
        return [self.summary(d) for d in devices if tenant_id in (None, d.tenant_id)]

    def latest(self, device_id: str) -> Record | None:
        return self.cache.get_latest(device_id, self.clock_ms())

    def get(self, device_id: str) -> dict[str, Any] | None:
        device = self.registry.get(device_id)
        return self.summary(device) if device else None

    def snapshot(self, channel: str) -> bytes:
        """The ``snapshot`` of a ``subscribed`` reply (docs/protocol.md)."""
        kind, ident = channels.parse(channel)
        if kind == "all":
            return orjson.dumps({"devices": self.list()})
        if kind == "tenant":
            return orjson.dumps({"devices": self.list(ident)})
        if kind == "kind":
            return orjson.dumps({"devices": [d for d in self.list() if d["kind"] == ident]})
        if kind == "alerts":
            return orjson.dumps({"alerts": [a.to_dict() for a in self.alerts.open_alerts()]})
        if kind == "aggregate":
            assert ident is not None
            return orjson.dumps(self.aggregate(ident))
        if kind == "dispatch":
            assert ident is not None
            return orjson.dumps(self.dispatch(ident))
        assert ident is not None
        device = self.get(ident)
        if device is None:
            return orjson.dumps({"device_id": ident, "status": "unknown", "latest": None})
        return orjson.dumps(device)


def _reason(reason: object) -> str | None:
    return None if reason is None else str(reason)
