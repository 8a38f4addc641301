"""Online/offline bookkeeping as a pure state table.

Inputs: a device's own status report (status topic, last will), activity (any telemetry), and
sweeps with ``now_ms`` (silence longer than the timeout means offline). Output: a
``StatusChange`` only when the status actually changes, so every change is one event.
"""

from __future__ import annotations

from dataclasses import dataclass

from fieldlink.core.events import DeviceStatus, StatusReason

ONLINE, OFFLINE, UNKNOWN = DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.UNKNOWN


@dataclass(frozen=True, slots=True)
class StatusChange:
    device_id: str
    status: DeviceStatus
    ts_ms: int
    reason: StatusReason


@dataclass(slots=True)
class _Entry:
    status: DeviceStatus
    last_seen_ms: int
    since_ms: int
    reason: StatusReason


class StatusBook:
    """Tracks each device's status. ``silence_timeout_ms`` <= 0 disables silence detection."""

    def __init__(self, silence_timeout_ms: int) -> None:
        self.silence_timeout_ms = silence_timeout_ms
        self._entries: dict[str, _Entry] = {}

    def status(self, device_id: str) -> DeviceStatus:
        entry = self._entries.get(device_id)
        return entry.status if entry else UNKNOWN

    def last_seen_ms(self, device_id: str) -> int | None:
        entry = self._entries.get(device_id)
        return entry.last_seen_ms if entry else None

    def since_ms(self, device_id: str) -> int | None:
        entry = self._entries.get(device_id)
        return entry.since_ms if entry else None

    def reason(self, device_id: str) -> StatusReason | None:
        """Why the device has its current status (None if unknown)."""
        entry = self._entries.get(device_id)
        return entry.reason if entry else None

    def counts(self) -> dict[str, int]:
        out = {str(ONLINE): 0, str(OFFLINE): 0}
        for entry in self._entries.values():
            out[entry.status] = out.get(entry.status, 0) + 1
        return out

    def _set(
        self, device_id: str, status: DeviceStatus, now_ms: int, reason: StatusReason
    ) -> StatusChange | None:
        entry = self._entries.get(device_id)
        if entry is None:
            self._entries[device_id] = _Entry(status, now_ms, now_ms, reason)
            return StatusChange(device_id, status, now_ms, reason)
        if status == ONLINE:
            entry.last_seen_ms = max(entry.last_seen_ms, now_ms)
        if entry.status == status:
            return None
        entry.status = status
        entry.since_ms = now_ms
        entry.reason = reason
        return StatusChange(device_id, status, now_ms, reason)

    def report(
        self,
        device_id: str,
        status: DeviceStatus,
        now_ms: int,
        reason: StatusReason = StatusReason.REPORTED,
    ) -> StatusChange | None:
        """The device (or its broker-delivered last will) said ``online``/``offline``."""
        return self._set(device_id, DeviceStatus(status), now_ms, StatusReason(reason))

    def activity(self, device_id: str, now_ms: int) -> StatusChange | None:
        """The device sent telemetry: it is online, whatever it said before."""
        entry = self._entries.get(device_id)
        if entry is not None and entry.status == ONLINE:
            entry.last_seen_ms = max(entry.last_seen_ms, now_ms)
            return None
        return self._set(device_id, ONLINE, now_ms, StatusReason.TELEMETRY)

    def apply(
        self,
        device_id: str,
        status: DeviceStatus,
        ts_ms: int,
        reason: StatusReason = StatusReason.REPORTED,
    ) -> None:
        """Adopt a change another instance decided (no new change results)."""
        entry = self._entries.get(device_id)
        if entry is None:
            self._entries[device_id] = _Entry(status, ts_ms, ts_ms, reason)
            return
        entry.status = status
        entry.since_ms = ts_ms
        entry.reason = reason
        if status == ONLINE:
            entry.last_seen_ms = max(entry.last_seen_ms, ts_ms)

    def seen(self, device_id: str, now_ms: int) -> None:
        """Another instance received telemetry: refresh last-seen, change nothing else."""
        entry = self._entries.get(device_id)
        if entry is not None and now_ms > entry.last_seen_ms:
            entry.last_seen_ms = now_ms

    def sweep(self, now_ms: int) -> list[StatusChange]:
        """Mark devices silent for longer than the timeout as offline."""
        if self.silence_timeout_ms <= 0:
            return []
        cutoff = now_ms - self.silence_timeout_ms
        changes = []
        for device_id, entry in self._entries.items():
            if entry.status == ONLINE and entry.last_seen_ms < cutoff:
                entry.status = OFFLINE
                entry.since_ms = now_ms
                entry.reason = StatusReason.SILENCE
                changes.append(StatusChange(device_id, OFFLINE, now_ms, StatusReason.SILENCE))
        return changes
