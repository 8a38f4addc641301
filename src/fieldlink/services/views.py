"""Read models over registry, cache, status and store: what REST and snapshots show."""

from __future__ import annotations

from typing import Any

import orjson

from fieldlink.core import channels
from fieldlink.core.model import Device
from fieldlink.services.ingest import Ingestor


class DeviceViews:
    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def summary(self, device: Device) -> dict[str, Any]:
        ing = self.ingestor
        now_ms = ing.clock_ms()
        latest = ing.cache.get_latest(device.id, now_ms)
        return {
            "device_id": device.id,
            "kind": device.kind,
            "meta": device.meta,
            "status": ing.status.status(device.id),
            "status_since": ing.status.since_ms(device.id),
            "last_seen": ing.status.last_seen_ms(device.id) or device.last_seen_ms,
            "created": device.created_ms,
            "tenant": device.tenant_id,
            "latest": latest.to_event_data() if latest else None,
        }

    def list(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Every device, or one tenant's."""
        devices = sorted(self.ingestor.devices.values(), key=lambda d: d.id)
        return [self.summary(d) for d in devices if tenant_id in (None, d.tenant_id)]

    def get(self, device_id: str) -> dict[str, Any] | None:
        device = self.ingestor.devices.get(device_id)
        return self.summary(device) if device else None

    def snapshot(self, channel: str) -> bytes:
        """The ``snapshot`` of a ``subscribed`` reply (docs/protocol.md)."""
        kind, device_id = channels.parse(channel)
        if kind == "all":
            return orjson.dumps({"devices": self.list()})
        if kind == "tenant":
            return orjson.dumps({"devices": self.list(device_id)})
        assert device_id is not None
        device = self.get(device_id)
        if device is None:
            return orjson.dumps({"device_id": device_id, "status": "unknown", "latest": None})
        return orjson.dumps(device)
