"""The device registry: which devices exist, their kind, metadata and tenant.

Devices register themselves by sending (telemetry or status) and are saved to the store with
the next write batch; every registration and metadata change is published once as a
``DeviceChanged`` event. Other instances' registrations arrive through ``Replica``
(services/replica.py). A device's tenant comes from its credentials (never from its topic);
devices without credentials belong to the default tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fieldlink.core.access import DEFAULT_TENANT
from fieldlink.core.events import DeviceAction, DeviceChanged
from fieldlink.core.measures import Measure
from fieldlink.core.model import Device
from fieldlink.ports import Bus, CredentialDirectory, Store


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

    async def load(self) -> None:
        """Load the registry from the store (once, at start)."""
        for device in await self.store.list_devices():
            self.devices[device.id] = device

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
            device.meta.update(meta)
            self.store.save_device(device)
            self._publish(device, DeviceAction.UPDATED)
        return device

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
            )
        )

    def measures(self) -> Iterator[Measure]:
        yield Measure("fieldlink_devices", "Registered devices", "gauge", len(self.devices))
