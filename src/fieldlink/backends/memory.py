"""In-process implementations of Store, Cache and Bus: the embedded default for the cache and
bus, and the test double for all three. Single node only; the store keeps nothing on disk."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator, Sequence
from typing import Any

from fieldlink.backends.aggregate import (
    aggregate_records,
    fleet_power,
    fleet_records,
    node_capacity_kw,
)
from fieldlink.core.alerts import Alert
from fieldlink.core.commands import OPEN, Command, Status
from fieldlink.core.events import DomainEvent
from fieldlink.core.measures import Measure
from fieldlink.core.model import Device, Record
from fieldlink.ports import EventHandler, ResumeHandler, WriteResult


class MemoryStore:
    """Store in dictionaries. Writes commit immediately (the future is already resolved)."""

    def __init__(self) -> None:
        self._records: dict[str, list[Record]] = {}
        self._commands: dict[str, Command] = {}
        self._docs: dict[tuple[str, str], dict[str, Any]] = {}
        self._keys: dict[str, list[int]] = {}
        self._seqs: dict[str, set[int]] = {}
        self._devices: dict[str, Device] = {}
        self._alerts: dict[str, Alert] = {}
        self._leases: dict[str, tuple[str, int]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def write(self, records: Sequence[Record]) -> asyncio.Future[WriteResult]:
        stored = duplicates = 0
        for record in records:
            seqs = self._seqs.setdefault(record.device_id, set())
            if record.seq is not None:
                if record.seq in seqs:
                    duplicates += 1
                    continue
                seqs.add(record.seq)
            keys = self._keys.setdefault(record.device_id, [])
            index = bisect.bisect_right(keys, record.ts_ms)
            keys.insert(index, record.ts_ms)
            self._records.setdefault(record.device_id, []).insert(index, record)
            stored += 1
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        future.set_result(WriteResult(stored, duplicates))
        return future

    def save_device(self, device: Device) -> None:
        existing = self._devices.get(device.id)
        if existing is not None:
            device.created_ms = existing.created_ms
        self._devices[device.id] = Device(
            device.id,
            device.kind,
            dict(device.meta),
            device.created_ms,
            device.last_seen_ms,
            device.tenant_id,
        )

    async def get_device(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    async def list_devices(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: d.id)

    async def delete_device(self, device_id: str, purge: bool) -> int:
        self._devices.pop(device_id, None)
        if not purge:
            return 0
        self._keys.pop(device_id, None)
        self._seqs.pop(device_id, None)
        return len(self._records.pop(device_id, []))

    # ---- alerts (AlertLog) and leases ---------------------------------------------------

    async def insert_alert(self, alert: Alert) -> bool:
        if alert.id in self._alerts or any(
            a.open and a.rule_id == alert.rule_id and a.device_id == alert.device_id
            for a in self._alerts.values()
        ):
            return False
        self._alerts[alert.id] = alert
        return True

    async def replace_alert(self, alert: Alert, expected_version: int) -> bool:
        current = self._alerts.get(alert.id)
        if current is None or current.version != expected_version:
            return False
        self._alerts[alert.id] = alert
        return True

    async def get_alert(self, alert_id: str) -> Alert | None:
        return self._alerts.get(alert_id)

    async def list_alerts(
        self,
        *,
        tenant_id: str | None = None,
        device_id: str | None = None,
        states: Sequence[str] = (),
        level: str | None = None,
        since_ms: int | None = None,
        limit: int = 500,
    ) -> list[Alert]:
        chosen = [
            a
            for a in self._alerts.values()
            if tenant_id in (None, a.tenant_id)
            and device_id in (None, a.device_id)
            and (not states or a.state in states)
            and level in (None, a.level)
            and (since_ms is None or a.updated_ms >= since_ms)
        ]
        return sorted(chosen, key=lambda a: (a.updated_ms, a.id), reverse=True)[:limit]

    async def open_alerts(self) -> list[Alert]:
        return [a for a in self._alerts.values() if a.open]

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int, now_ms: int) -> bool:
        current = self._leases.get(name)
        if current is not None and current[0] != holder and current[1] > now_ms:
            return False
        self._leases[name] = (holder, now_ms + ttl_ms)
        return True

    def _slice(self, device_id: str, start_ms: int, end_ms: int) -> list[Record]:
        keys = self._keys.get(device_id, [])
        lo = bisect.bisect_left(keys, start_ms)
        hi = bisect.bisect_left(keys, end_ms)
        return self._records.get(device_id, [])[lo:hi]

    async def query_range(
        self, device_id: str, start_ms: int, end_ms: int, limit: int, newest_first: bool = False
    ) -> list[Record]:
        rows = self._slice(device_id, start_ms, end_ms)
        if newest_first:
            return list(reversed(rows[-limit:])) if limit else []
        return rows[:limit]

    async def query_buckets(
        self, device_id: str, start_ms: int, end_ms: int, bucket_ms: int, agg: str
    ) -> list[dict[str, Any]]:
        return aggregate_records(self._slice(device_id, start_ms, end_ms), bucket_ms, agg)

    async def latest(self, device_id: str) -> Record | None:
        rows = self._records.get(device_id)
        return rows[-1] if rows else None

    async def latest_since(self, since_ms: int) -> list[Record]:
        return [rows[-1] for rows in self._records.values() if rows and rows[-1].ts_ms >= since_ms]

    # ---- identity documents (Docs) ------------------------------------------------------

    async def put_doc(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        self._docs[(kind, key)] = dict(doc)

    async def get_doc(self, kind: str, key: str) -> dict[str, Any] | None:
        doc = self._docs.get((kind, key))
        return dict(doc) if doc is not None else None

    async def list_docs(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return sorted((k, dict(d)) for (t, k), d in self._docs.items() if t == kind)

    async def swap_doc(
        self, kind: str, key: str, doc: dict[str, Any], expected_version: int | None
    ) -> bool:
        current = self._docs.get((kind, key))
        if expected_version is None:
            if current is not None:
                return False
        elif current is None or not _has_version(current, expected_version):
            return False
        # No await between the check and the write: nothing else runs in between.
        self._docs[(kind, key)] = dict(doc)
        return True

    # ---- command log (CommandLog) -------------------------------------------------------

    async def insert_command(self, command: Command) -> bool:
        if command.id in self._commands:
            return False
        self._commands[command.id] = command
        return True

    async def replace_command(self, command: Command, expected: Status) -> bool:
        current = self._commands.get(command.id)
        if current is None or current.status is not expected:
            return False
        self._commands[command.id] = command
        return True

    async def get_command(self, command_id: str) -> Command | None:
        return self._commands.get(command_id)

    async def list_commands(self, device_id: str, limit: int) -> list[Command]:
        mine = [c for c in self._commands.values() if c.device_id == device_id]
        return sorted(mine, key=lambda c: c.created_ms, reverse=True)[:limit]

    async def due_commands(self, now_ms: int, limit: int) -> list[Command]:
        due = [c for c in self._commands.values() if c.status in OPEN and c.deadline_ms <= now_ms]
        return sorted(due, key=lambda c: c.deadline_ms)[:limit]

    async def pending_commands(self, device_id: str | None) -> list[Command]:
        mine = [
            c
            for c in self._commands.values()
            if device_id in (None, c.device_id) and c.status is Status.PENDING
        ]
        return sorted(mine, key=lambda c: c.created_ms)

    async def query_fleet(
        self,
        start_ms: int,
        end_ms: int,
        bucket_ms: int,
        agg: str,
        metrics: Sequence[str] = (),
        tenant_id: str | None = None,
    ) -> list[dict[str, Any]]:
        in_range = [
            r
            for d in self._records
            for r in self._slice(d, start_ms, end_ms)
            if tenant_id in (None, r.tenant_id)
        ]
        return aggregate_records(fleet_records(in_range, metrics), bucket_ms, agg)

    async def fleet_power(
        self, start_ms: int, end_ms: int, bucket_ms: int, tenant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """From raw records; a node's capacity (and whether it is one) is its current meta."""
        capacities = {
            device_id: capacity
            for device_id, device in self._devices.items()
            if (capacity := node_capacity_kw(device.meta)) is not None
        }
        in_range = [
            r
            for d in capacities
            for r in self._slice(d, start_ms, end_ms)
            if tenant_id in (None, r.tenant_id)
        ]
        return fleet_power(in_range, capacities, bucket_ms)


def _has_version(doc: dict[str, Any], version: int) -> bool:
    """The document's ``"version"`` is the number ``version`` (as JSON compares it: 2.0 is 2,
    true and "2" are not)."""
    value = doc.get("version")
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == version


class MemoryCache:
    """Latest record per device, expiring ``ttl_s`` after it was set."""

    def __init__(self, ttl_s: float = 300.0) -> None:
        self.ttl_ms = int(ttl_s * 1000)
        self._latest: dict[str, tuple[Record, int]] = {}

    def set_latest(self, record: Record, now_ms: int) -> None:
        current = self._latest.get(record.device_id)
        if current is not None and current[0].ts_ms > record.ts_ms and current[1] > now_ms:
            return  # an older record arriving late must not replace a newer latest state
        self._latest[record.device_id] = (record, now_ms + self.ttl_ms)

    def remember(self, record: Record, now_ms: int) -> None:
        """Same as set_latest (an event from another instance)."""
        self.set_latest(record, now_ms)

    def entries(self, now_ms: int) -> list[Record]:
        return [record for record, expires in self._latest.values() if expires > now_ms]

    def get_latest(self, device_id: str, now_ms: int) -> Record | None:
        entry = self._latest.get(device_id)
        if entry is None:
            return None
        if entry[1] <= now_ms:
            del self._latest[device_id]
            return None
        return entry[0]

    async def rebuild(self, now_ms: int) -> int:
        return 0  # nothing shared to write back

    async def close(self) -> None:
        return None


class MemoryBus:
    """Calls every handler synchronously, in publish order. Single node only: there are no
    other instances, so ``remote_only`` handlers are never called and it never resumes."""

    connected = True

    def __init__(self) -> None:
        self._handlers: list[EventHandler] = []

    def subscribe(self, handler: EventHandler, *, remote_only: bool = False) -> None:
        if not remote_only:
            self._handlers.append(handler)

    def on_resume(self, handler: ResumeHandler) -> None:
        return None

    def ok(self) -> bool:
        return True

    def measures(self) -> Iterator[Measure]:
        return iter(())

    def publish(self, event: DomainEvent) -> None:
        for handler in self._handlers:
            handler(event)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._handlers.clear()
