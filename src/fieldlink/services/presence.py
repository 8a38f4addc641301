"""Online/offline status of every device, and the one ``StatusChanged`` event per change.

Inputs: a device's status messages (``edge/{id}/status``, also its last will), its telemetry
(activity), and a periodic sweep that marks devices silent for longer than the timeout as
offline. The decisions are the pure table in core/status.py; this service feeds it, registers
devices that announce themselves, and publishes each change. Every instance sweeps its own
replicated table, so silence events are ``local_only``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fieldlink.core.codec import DEFAULT_LIMITS, Limits, parse_status
from fieldlink.core.errors import ValidationError
from fieldlink.core.events import DeviceStatus, StatusChanged
from fieldlink.core.measures import Measure, counter, measures_of
from fieldlink.core.model import is_valid_device_id
from fieldlink.core.status import StatusBook, StatusChange
from fieldlink.ports import Bus
from fieldlink.services.registry import DeviceRegistry

log = logging.getLogger("fieldlink.presence")


@dataclass(slots=True)
class PresenceCounters:
    status_messages: int = counter("fieldlink_status_messages", "Status messages received")
    status_rejected: int = counter("fieldlink_status_rejected", "Status messages rejected")


class Presence:
    def __init__(
        self,
        *,
        book: StatusBook,
        registry: DeviceRegistry,
        bus: Bus,
        clock_ms: Callable[[], int],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.book = book
        self.registry = registry
        self.bus = bus
        self.clock_ms = clock_ms
        self.limits = limits
        self.counters = PresenceCounters()

    # ---- reads (views, commands) ----------------------------------------------------------

    def status(self, device_id: str) -> DeviceStatus:
        return self.book.status(device_id)

    def since_ms(self, device_id: str) -> int | None:
        return self.book.since_ms(device_id)

    def last_seen_ms(self, device_id: str) -> int | None:
        return self.book.last_seen_ms(device_id)

    # ---- inputs -----------------------------------------------------------------------------

    def status_message(self, device_id: str, payload: bytes) -> None:
        """A message on ``edge/{id}/status``. Bad ones are counted and logged, never raised."""
        self.counters.status_messages += 1
        if not payload:  # an empty retained message clears the retained status: nothing to do
            return
        try:
            if not is_valid_device_id(device_id):
                raise ValidationError("invalid_device_id", "invalid device id in status topic")
            status = DeviceStatus(parse_status(payload, self.limits))
        except ValidationError as exc:
            self.counters.status_rejected += 1
            log.info("status message rejected for %r: %s", device_id[:130], exc.message)
            return
        now_ms = self.clock_ms()
        self.registry.register(device_id, "edge", None, now_ms)
        self._publish(self.book.report(device_id, status, now_ms))

    def activity(self, device_id: str, now_ms: int) -> None:
        """The device sent telemetry (it is online)."""
        change = self.book.activity(device_id, now_ms)
        if change is not None:  # (checked here: this runs for every record)
            self._publish(change)

    def sweep(self) -> int:
        """Mark silent devices offline and publish each change. Returns how many changed."""
        changes = self.book.sweep(self.clock_ms())
        for change in changes:
            self._publish(change, local_only=True)
        return len(changes)

    async def run_sweeper(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()

    # ---- other instances ----------------------------------------------------------------

    def adopt(self, event: StatusChanged) -> None:
        """A change another instance decided."""
        self.book.apply(event.device_id, event.status, event.ts_ms)

    def seen(self, device_id: str, now_ms: int) -> None:
        """Another instance received telemetry from the device."""
        self.book.seen(device_id, now_ms)

    def _publish(self, change: StatusChange | None, local_only: bool = False) -> None:
        if change is None:
            return
        self.bus.publish(
            StatusChanged(
                change.device_id,
                self.registry.tenant_of(change.device_id),
                change.status,
                change.ts_ms,
                change.reason,
                local_only,
            )
        )

    def measures(self) -> Iterator[Measure]:
        yield from measures_of(self.counters)
        counts = {k: float(v) for k, v in self.book.counts().items()}
        yield Measure(
            "fieldlink_devices_by_status",
            "Devices by status",
            "gauge",
            label="status",
            values=counts,
        )
