"""Online/offline status of every device, and the one ``StatusChanged`` event per change.

Inputs: a device's status messages (``edge/{id}/status``, also its last will), its telemetry
(activity), and a periodic sweep that marks devices silent for longer than the timeout as
offline. The decisions are the pure table in core/status.py; this service feeds it, registers
devices that announce themselves, and publishes each change. Every instance sweeps its own
replicated table, so silence events are ``local_only``.

Flapping. A device that drops and comes back over and over would flood clients with status
events. After an offline -> online pair has been published for a device, its further changes
within ``flap_window_ms`` are held back (the table, and so REST, stays exact); when the window
has passed, the sweep publishes the device's current status if it differs from what clients
last saw. So at most one offline/online pair per window reaches clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fieldlink.core.codec import DEFAULT_LIMITS, Limits, parse_status_message
from fieldlink.core.errors import ValidationError
from fieldlink.core.events import DeviceStatus, StatusChanged, StatusReason
from fieldlink.core.measures import Measure, counter, measures_of
from fieldlink.core.model import is_valid_device_id
from fieldlink.core.status import OFFLINE, ONLINE, StatusBook, StatusChange
from fieldlink.ports import Bus
from fieldlink.services.registry import DeviceRegistry

log = logging.getLogger("fieldlink.presence")


@dataclass(slots=True)
class PresenceCounters:
    status_messages: int = counter("fieldlink_status_messages", "Status messages received")
    status_rejected: int = counter("fieldlink_status_rejected", "Status messages rejected")
    damped: int = counter(
        "fieldlink_status_damped", "Status changes held back from clients (a flapping device)"
    )


class Presence:
    def __init__(
        self,
        *,
        book: StatusBook,
        registry: DeviceRegistry,
        bus: Bus,
        clock_ms: Callable[[], int],
        limits: Limits = DEFAULT_LIMITS,
        flap_window_ms: int = 0,
    ) -> None:
        self.book = book
        self.registry = registry
        self.bus = bus
        self.clock_ms = clock_ms
        self.limits = limits
        self.flap_window_ms = flap_window_ms
        self.counters = PresenceCounters()
        self._shown: dict[str, DeviceStatus] = {}  # what clients last saw, per device
        self._pair_ms: dict[str, int] = {}  # when a device's last offline -> online was shown
        self._held: dict[str, tuple[StatusChange, bool]] = {}  # changes held back

    # ---- reads (views, commands) ----------------------------------------------------------

    def status(self, device_id: str) -> DeviceStatus:
        return self.book.status(device_id)

    def since_ms(self, device_id: str) -> int | None:
        return self.book.since_ms(device_id)

    def reason(self, device_id: str) -> StatusReason | None:
        return self.book.reason(device_id)

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
            status_text, reason = parse_status_message(payload, self.limits)
            status = DeviceStatus(status_text)
        except ValidationError as exc:
            self.counters.status_rejected += 1
            log.info("status message rejected for %r: %s", device_id[:130], exc.message)
            return
        now_ms = self.clock_ms()
        self.registry.register(device_id, "edge", None, now_ms)
        self._publish(self.book.report(device_id, status, now_ms, StatusReason(reason)))

    def activity(self, device_id: str, now_ms: int) -> None:
        """The device sent telemetry (it is online)."""
        change = self.book.activity(device_id, now_ms)
        if change is not None:  # (checked here: this runs for every record)
            self._publish(change)

    def sweep(self) -> int:
        """Mark silent devices offline and publish each change, and release held changes
        whose flapping window has passed. Returns how many changed."""
        now_ms = self.clock_ms()
        changes = self.book.sweep(now_ms)
        for change in changes:
            self._publish(change, local_only=True)
        for device_id, (change, local_only) in list(self._held.items()):
            if now_ms - self._pair_ms.get(device_id, 0) >= self.flap_window_ms:
                del self._held[device_id]
                if self._shown.get(device_id) != change.status:
                    self._show(change, local_only)
        return len(changes)

    async def run_sweeper(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.sweep()

    # ---- other instances ----------------------------------------------------------------

    def adopt(self, event: StatusChanged) -> None:
        """A change another instance decided."""
        self.book.apply(event.device_id, event.status, event.ts_ms, event.reason)

    def seen(self, device_id: str, now_ms: int) -> None:
        """Another instance received telemetry from the device."""
        self.book.seen(device_id, now_ms)

    def _publish(self, change: StatusChange | None, local_only: bool = False) -> None:
        if change is None:
            return
        device_id = change.device_id
        if self.flap_window_ms > 0 and (
            device_id in self._held
            or change.ts_ms - self._pair_ms.get(device_id, -self.flap_window_ms)
            < self.flap_window_ms
        ):
            self.counters.damped += 1
            self._held[device_id] = (change, local_only)
            return
        self._show(change, local_only)

    def _show(self, change: StatusChange, local_only: bool) -> None:
        device_id = change.device_id
        if change.status == ONLINE and self._shown.get(device_id) == OFFLINE:
            self._pair_ms[device_id] = change.ts_ms
        self._shown[device_id] = change.status
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
