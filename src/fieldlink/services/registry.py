"""The device registry: which devices exist, their kind, attributes (``meta``) and tenant.

Devices register themselves by sending (telemetry or status), or are created, changed and
deleted over REST; the registry saves them to the store with the next write batch and
publishes every change once as a ``DeviceChanged`` event: created (the whole device), updated
(exactly what changed, old -> new; nothing when nothing changed), deleted. Kinds with named
events (core/kinds.py: drones) get one event per mapped attribute. Other instances' changes
arrive through ``Replica`` (services/replica.py). A device's tenant comes from its
credentials or its creator, never from its topic; anonymous devices belong to the default
tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fieldlink.core import kinds
from fieldlink.core.access import DEFAULT_TENANT
from fieldlink.core.errors import Conflict, NotFound
from fieldlink.core.events import DeviceAction, DeviceChanged
from fieldlink.core.measures import Measure
from fieldlink.core.model import Device
from fieldlink.ports import Bus, CredentialDirectory, Store

DELETED_DOC = "deleted_device"


class DeviceExists(Conflict):
    code = "device_exists"


class DeviceRegistry:
    """One per hub process; implements ``ports.DeviceDirectory``."""

    def __init__(
        self,
        *,
        store: Store,
        bus: Bus,
        credentials: CredentialDirectory,
        clock_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.bus = bus
        self.credentials = credentials
        self.clock_ms = clock_ms
        self.devices: dict[str, Device] = {}
        # Deleted devices' tenants: their history and commands stay readable by that tenant.
        self.deleted: dict[str, str] = {}

    async def load(self) -> None:
        """Load the registry from the store (once, at start)."""
        for device in await self.store.list_devices():
            self.devices[device.id] = device
        for device_id, doc in await self.store.list_docs(DELETED_DOC):
            self.deleted[device_id] = str(doc["tenant"])

    def owner_of(self, device_id: str) -> str | None:
        """The tenant whose records these are: the device's, or a deleted device's last one."""
        device = self.devices.get(device_id)
        return device.tenant_id if device is not None else self.deleted.get(device_id)

    def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def __contains__(self, device_id: str) -> bool:
        return device_id in self.devices

    def __iter__(self) -> Iterator[Device]:
        return iter(self.devices.values())

    def tenant_of(self, device_id: str) -> str:
        """The tenant a device belongs to: its registration, else its credentials, else the
        default tenant (anonymous devices)."""
        device = self.devices.get(device_id)
        if device is not None:
            return device.tenant_id
        return self.credentials.credential_tenant(device_id) or DEFAULT_TENANT

    def register(
        self,
        device_id: str,
        kind: str,
        meta: dict[str, Any] | None,
        now_ms: int,
        tenant_id: str | None = None,
    ) -> Device:
        """The device, registered now if it is new (tenant: ``tenant_id``, else its
        credentials', else the default) or with ``meta`` merged in if that changes anything."""
        device = self.devices.get(device_id)
        if device is None:
            tenant = tenant_id or self.credentials.credential_tenant(device_id) or DEFAULT_TENANT
            device = Device(device_id, kind, dict(meta or {}), now_ms, now_ms, tenant)
            self.devices[device_id] = device
            self.store.save_device(device)
            self._publish(device, DeviceAction.CREATED)
        elif meta and any(device.meta.get(k) != v for k, v in meta.items()):
            changes = kinds.diff(device.meta, {**device.meta, **meta})
            device.meta.update(meta)
            self.store.save_device(device)
            self._publish_update(device, changes)
        return device

    # ---- the registry API (REST) ----------------------------------------------------------

    def create(
        self, device_id: str, kind: str, attributes: dict[str, Any], tenant_id: str, now_ms: int
    ) -> Device:
        """A new device; ``DeviceExists`` if the id is taken (in any tenant)."""
        if device_id in self.devices:
            raise DeviceExists(f"device {device_id!r} exists")
        device = Device(device_id, kind, dict(attributes), now_ms, None, tenant_id)
        self.devices[device_id] = device
        self.store.save_device(device)
        self._publish(device, DeviceAction.CREATED)
        return device

    def update(
        self, device_id: str, *, kind: str | None = None, attributes: dict[str, Any] | None = None
    ) -> kinds.Changes:
        """Change the kind and/or attributes (a None value removes the attribute). Returns
        exactly what changed, ``{name: [old, new]}`` (``kind`` included); publishes nothing
        when nothing changed."""
        device = self.devices.get(device_id)
        if device is None:
            raise NotFound(f"device {device_id!r} is not registered")
        new_meta = dict(device.meta)
        for key, value in (attributes or {}).items():
            if value is None:
                new_meta.pop(key, None)
            else:
                new_meta[key] = value
        changes = kinds.diff(device.meta, new_meta)
        if kind is not None and kind != device.kind:
            changes["kind"] = [device.kind, kind]
            device.kind = kind
        if not changes:
            return changes
        device.meta = new_meta
        self.store.save_device(device)
        self._publish_update(device, changes)
        return changes

    async def delete(self, device_id: str, purge: bool) -> int:
        """Remove the device (its history stays unless ``purge``); returns the telemetry rows
        purged."""
        device = self.devices.get(device_id)
        if device is None:
            raise NotFound(f"device {device_id!r} is not registered")
        purged = await self.store.delete_device(device_id, purge)
        await self.store.put_doc(
            DELETED_DOC, device_id, {"tenant": device.tenant_id, "deleted": self.clock_ms()}
        )
        self.devices.pop(device_id, None)
        self.deleted[device_id] = device.tenant_id
        self._publish(device, DeviceAction.DELETED)
        return purged

    def forget(self, device_id: str, tenant_id: str) -> None:
        """Another instance deleted the device."""
        self.devices.pop(device_id, None)
        self.deleted[device_id] = tenant_id

    def assign_tenant(self, device_id: str, tenant_id: str) -> None:
        """New credentials moved a registered device to ``tenant_id``."""
        device = self.devices.get(device_id)
        if device is not None and device.tenant_id != tenant_id:
            device.tenant_id = tenant_id
            self.store.save_device(device)

    def adopt(self, device: Device) -> None:
        """A registration another instance made (no event: that instance published it)."""
        known = self.devices.get(device.id)
        if known is not None:
            device.created_ms = known.created_ms
        self.devices[device.id] = device

    def _publish(self, device: Device, action: DeviceAction) -> None:
        self.bus.publish(
            DeviceChanged(
                device.id,
                device.tenant_id,
                action,
                device.kind,
                dict(device.meta),
                device.created_ms,
                name=kinds.lifecycle_event(device.kind, str(action)),
            )
        )

    def _publish_update(self, device: Device, changes: kinds.Changes) -> None:
        for name, part in kinds.update_events(device.kind, changes):
            self.bus.publish(
                DeviceChanged(
                    device.id,
                    device.tenant_id,
                    DeviceAction.UPDATED,
                    device.kind,
                    dict(device.meta),
                    device.created_ms,
                    changes=part,
                    name=name,
                )
            )

    def measures(self) -> Iterator[Measure]:
        yield Measure("fieldlink_devices", "Registered devices", "gauge", len(self.devices))
