"""Online/offline bookkeeping as a pure state table.

Inputs: a device's own status report (status topic, last will), activity (any telemetry), and
sweeps with ``now_ms`` (silence longer than the timeout means offline). Output: a
``StatusChange`` only when the status actually changes, so every change is one event.
"""

from __future__ import annotations

from dataclasses import dataclass

from fieldlink.core.model import Status


@dataclass(frozen=True, slots=True)
class StatusChange:
    device_id: str
    status: Status
    ts_ms: int
    reason: str  # "reported" | "telemetry" | "silence"

    def to_event_data(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "status": self.status,
            "ts": self.ts_ms,
            "reason": self.reason,
        }


@dataclass(slots=True)
class _Entry:
    status: Status
    last_seen_ms: int
    since_ms: int


class StatusBook:
    """Tracks each device's status. ``silence_timeout_ms`` <= 0 disables silence detection."""

    def __init__(self, silence_timeout_ms: int) -> None:
        self.silence_timeout_ms = silence_timeout_ms
        self._entries: dict[str, _Entry] = {}

    def status(self, device_id: str) -> Status:
        entry = self._entries.get(device_id)
        return entry.status if entry else "unknown"

    def last_seen_ms(self, device_id: str) -> int | None:
        entry = self._entries.get(device_id)
        return entry.last_seen_ms if entry else None

    def since_ms(self, device_id: str) -> int | None:
        entry = self._entries.get(device_id)
        return entry.since_ms if entry else None

    def counts(self) -> dict[str, int]:
        out = {"online": 0, "offline": 0}
        for entry in self._entries.values():
            out[entry.status] = out.get(entry.status, 0) + 1
        return out

    def _set(self, device_id: str, status: Status, now_ms: int, reason: str) -> StatusChange | None:
        entry = self._entries.get(device_id)
        if entry is None:
            self._entries[device_id] = _Entry(status, now_ms, now_ms)
            return StatusChange(device_id, status, now_ms, reason)
        if status == "online":
            entry.last_seen_ms = max(entry.last_seen_ms, now_ms)
        if entry.status == status:
            return None
        entry.status = status
        entry.since_ms = now_ms
        return StatusChange(device_id, status, now_ms, reason)

    def report(self, device_id: str, status: Status, now_ms: int) -> StatusChange | None:
        """The device (or its broker-delivered last will) said ``online``/``offline``."""
        return self._set(device_id, status, now_ms, "reported")

    def activity(self, device_id: str, now_ms: int) -> StatusChange | None:
        """The device sent telemetry: it is online, whatever it said before."""
        entry = self._entries.get(device_id)
        if entry is not None and entry.status == "online":
            entry.last_seen_ms = max(entry.last_seen_ms, now_ms)
            return None
        return self._set(device_id, "online", now_ms, "telemetry")

    def apply(self, change: StatusChange) -> None:
        """Adopt a change another instance decided (no new change results)."""
        entry = self._entries.get(change.device_id)
        if entry is None:
            self._entries[change.device_id] = _Entry(change.status, change.ts_ms, change.ts_ms)
            return
        entry.status = change.status
        entry.since_ms = change.ts_ms
        if change.status == "online":
            entry.last_seen_ms = max(entry.last_seen_ms, change.ts_ms)

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
            if entry.status == "online" and entry.last_seen_ms < cutoff:
                entry.status = "offline"
                entry.since_ms = now_ms
                changes.append(StatusChange(device_id, "offline", now_ms, "silence"))
        return changes
