"""SQLite history and device registry (the embedded default).

One dedicated writer thread owns the write connection and commits whatever has queued up since
its last commit in one transaction (natural batching: the busier the hub, the bigger the
batch), so the event loop never waits on disk. WAL mode lets a small read pool query while the
writer writes. Must not be used from several processes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from fieldlink.backends.rows import (
    alert_filters,
    alert_row,
    alerts_from,
    bucket_rows,
    command_row,
    commands_from,
    device_from,
    device_row,
)
from fieldlink.core.alerts import Alert
from fieldlink.core.commands import Command, Status
from fieldlink.core.errors import DependencyDown
from fieldlink.core.model import Device, Record
from fieldlink.ports import WriteResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER
);
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    seq INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_device_ts ON telemetry (device_id, ts);
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_device_seq ON telemetry (device_id, seq)
    WHERE seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_device ON commands (device_id, created_ms);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    state TEXT NOT NULL,
    level TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (rule_id, device_id)
    WHERE state <> 'cleared';
CREATE INDEX IF NOT EXISTS alerts_tenant ON alerts (tenant_id, updated_ms);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_open ON commands (deadline_ms)
    WHERE status IN ('pending', 'sent');
"""

_INSERT = (
    "INSERT OR IGNORE INTO telemetry (device_id, ts, seq, data, tenant_id) VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_DEVICE = """
INSERT INTO devices (id, kind, meta, created_ms, last_seen_ms, tenant_id)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, meta = excluded.meta,
    tenant_id = excluded.tenant_id,
    last_seen_ms = max(coalesce(devices.last_seen_ms, 0), coalesce(excluded.last_seen_ms, 0))
"""
_AGG_SQL = {
    "avg": "avg(j.value)",
    "min": "min(j.value)",
    "max": "max(j.value)",
    "count": "count(j.value)",
    "last": "j.value",
}
_FLEET_AGG_SQL = {
    "avg": "avg(j.value)",
    "sum": "sum(j.value)",
    "min": "min(j.value)",
    "max": "max(j.value)",
    "count": "count(j.value)",
}
# The VPP's fleet power (ports.FleetPower): each node's average power_kw per minute, summed
# per minute, then averaged per bucket over the minutes with data. A node is counted per
# (tenant, device), as the rows carry the tenant. CROSS JOIN makes SQLite loop over the
# nodes and seek each one's rows, instead of scanning all telemetry.
_FLEET_POWER_SQL = """
WITH nodes AS (
    SELECT id, json_extract(meta, '$.capacity_kw') AS capacity FROM devices
    WHERE json_type(meta, '$.capacity_kw') IN ('integer', 'real')
      AND json_extract(meta, '$.capacity_kw') > 0
      AND json_extract(meta, '$.capacity_kw') < 1e300
), node_minutes AS (
    SELECT (t.ts / 60000) * 60000 AS minute, avg(json_extract(t.data, '$.power_kw')) AS power,
           max(d.capacity) AS capacity
    FROM nodes AS d CROSS JOIN telemetry AS t
    WHERE t.device_id = d.id AND t.ts >= ? AND t.ts < ?{tenant}
      AND json_type(t.data, '$.power_kw') IN ('integer', 'real')
      AND abs(json_extract(t.data, '$.power_kw')) < 1e300
    GROUP BY minute, t.tenant_id, t.device_id
), minutes AS (
    SELECT minute, sum(power) AS power, count(*) AS nodes, sum(capacity) AS capacity
    FROM node_minutes GROUP BY minute
)
SELECT (minute / ?) * ? AS bucket, avg(power), avg(nodes), avg(capacity)
FROM minutes GROUP BY bucket ORDER BY bucket
"""
_MAX_BATCH_ITEMS = 2000

_STOP = object()


class _Call:
    """A function run by the writer thread inside its transaction (command log writes)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL: a commit survives a process crash; a power loss may lose the last
        # commits (docs/storage.md). FULL would cost an fsync per batch.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache for the indexes
    return conn


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._failed: BaseException | None = None
        self.batches = 0

    async def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        conn.executescript(SCHEMA)
        for table in ("devices", "telemetry"):  # a database from before tenants
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if "tenant_id" not in columns:
                conn.execute(
                    f"ALTER TABLE {table} ADD COLUMN tenant_id TEXT NOT NULL DEFAULT 'default'"
                )
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        """Commit everything queued, then stop the writer and the readers."""
        if self._thread is not None:
            done = asyncio.get_running_loop().create_future()
            self._queue.put((_STOP, done))
            await done
            self._thread = None
        self._readers.shutdown(wait=True)

    # ---- writes -------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> asyncio.Future[WriteResult]:
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[WriteResult] = loop.create_future()
        if self._failed is not None or self._thread is None:
            future.set_exception(DependencyDown("the SQLite writer is not running"))
            return future
        self._queue.put((records, future))
        return future

    def save_device(self, device: Device) -> None:
        row = device_row(device)
        self._queue.put((row, None))

    def _resolve(self, future: asyncio.Future[WriteResult], result: Any) -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def _writer(self, conn: sqlite3.Connection) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            items = [self._queue.get()]
            while len(items) < _MAX_BATCH_ITEMS:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None
            results: list[tuple[asyncio.Future[WriteResult], Any]] = []
            try:
                conn.execute("BEGIN")
                for payload, future in items:
                    if payload is _STOP:
                        stop = future
                        continue
                    if future is None:
                        conn.execute(_UPSERT_DEVICE, payload)
                        continue
                    if isinstance(payload, _Call):
                        results.append((future, payload.fn(conn)))
                        continue
                    before = conn.total_changes
                    conn.executemany(
                        _INSERT,
                        [
                            (
                                r.device_id,
                                r.ts_ms,
                                r.seq,
                                orjson.dumps(r.metrics).decode(),
                                r.tenant_id,
                            )
                            for r in payload
                        ],
                    )
                    stored = conn.total_changes - before
                    results.append((future, WriteResult(stored, len(payload) - stored)))
                conn.execute("COMMIT")
                self.batches += 1
            except Exception as exc:  # noqa: BLE001 - the writer thread must never die
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                error = DependencyDown(f"SQLite write failed: {type(exc).__name__}: {exc}")
                results = [(f, error) for _, f in items if f is not None and _ is not _STOP]
            for future, result in results:
                loop.call_soon_threadsafe(self._resolve, future, result)
            if stop is not None:
                conn.close()
                loop.call_soon_threadsafe(stop.set_result, None)
                return

    # ---- reads --------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
        return conn

    async def _read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self._reader().execute(sql, params).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def delete_device(self, device_id: str, purge: bool) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            if not purge:
                return 0
            return conn.execute("DELETE FROM telemetry WHERE device_id = ?", (device_id,)).rowcount

        return int(await self._write_call(delete))

    async def get_device(self, device_id: str) -> Device | None:
        rows = await self._read(
            "SELECT id, kind, meta, created_ms, last_seen_ms, tenant_id FROM devices WHERE id = ?",
            (device_id,),
        )
        return device_from(rows[0]) if rows else None

    async def list_devices(self) -> list[Device]:
        rows = await self._read(
            "SELECT id, kind, meta, created_ms, last_seen_ms, tenant_id FROM devices ORDER BY id",
            (),
        )
        return [device_from(r) for r in rows]

    async def query_range(
        self, device_id: str, start_ms: int, end_ms: int, limit: int, newest_first: bool = False
    ) -> list[Record]:
        order = "DESC" if newest_first else "ASC"
        rows = await self._read(
            "SELECT device_id, ts, seq, data FROM telemetry WHERE device_id = ? AND ts >= ? "
            f"AND ts < ? ORDER BY ts {order}, rowid {order} LIMIT ?",
            (device_id, start_ms, end_ms, limit),
        )
        return [Record(r[0], r[1], orjson.loads(r[3]), r[2]) for r in rows]

    async def query_buckets(
        self, device_id: str, start_ms: int, end_ms: int, bucket_ms: int, agg: str
    ) -> list[dict[str, Any]]:
        # For "last", SQLite's bare-column rule takes j.value from the row holding max(t.ts).
        extra = ", max(t.ts)" if agg == "last" else ""
        rows = await self._read(
            f"SELECT (t.ts / ?) * ? AS bucket, j.key, {_AGG_SQL[agg]}{extra} "
            "FROM telemetry AS t, json_each(t.data) AS j "
            "WHERE t.device_id = ? AND t.ts >= ? AND t.ts < ? AND j.type IN ('integer', 'real') "
            "GROUP BY bucket, j.key ORDER BY bucket",
            (bucket_ms, bucket_ms, device_id, start_ms, end_ms),
        )
        return bucket_rows(rows, agg)

    async def latest(self, device_id: str) -> Record | None:
        rows = await self.query_range(device_id, 0, 2**62, 1, newest_first=True)
        return rows[0] if rows else None

    async def latest_since(self, since_ms: int) -> list[Record]:
        # SQLite's bare-column rule: the other columns come from the row holding max(ts).
        rows = await self._read(
            "SELECT device_id, max(ts), seq, data FROM telemetry WHERE ts >= ? GROUP BY device_id",
            (since_ms,),
        )
        return [Record(r[0], r[1], orjson.loads(r[3]), r[2]) for r in rows]

    # ---- identity documents (Docs) ------------------------------------------------------

    async def put_doc(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        text = orjson.dumps(doc).decode()

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO docs (kind, key, doc) VALUES (?, ?, ?) "
                "ON CONFLICT(kind, key) DO UPDATE SET doc = excluded.doc",
                (kind, key, text),
            )

        await self._write_call(put)

    async def get_doc(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = await self._read("SELECT doc FROM docs WHERE kind = ? AND key = ?", (kind, key))
        return dict(orjson.loads(rows[0][0])) if rows else None

    async def list_docs(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        rows = await self._read("SELECT key, doc FROM docs WHERE kind = ? ORDER BY key", (kind,))
        return [(r[0], dict(orjson.loads(r[1]))) for r in rows]

    async def swap_doc(
        self, kind: str, key: str, doc: dict[str, Any], expected_version: int | None
    ) -> bool:
        """Checked and written in one statement by the writer thread, which serializes every
        write: no other write can come between the check and the change."""
        text = orjson.dumps(doc).decode()

        def swap(conn: sqlite3.Connection) -> bool:
            if expected_version is None:
                cursor = conn.execute(
                    "INSERT INTO docs (kind, key, doc) VALUES (?, ?, ?) "
                    "ON CONFLICT(kind, key) DO NOTHING",
                    (kind, key, text),
                )
            else:
                # json_type first: json_extract turns true into 1, which must not match.
                cursor = conn.execute(
                    "UPDATE docs SET doc = ? WHERE kind = ? AND key = ? "
                    "AND json_type(doc, '$.version') IN ('integer', 'real') "
                    "AND json_extract(doc, '$.version') = ?",
                    (text, kind, key, expected_version),
                )
            return cursor.rowcount == 1

        return bool(await self._write_call(swap))

    # ---- command log (CommandLog) -------------------------------------------------------

    async def _write_call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._failed is not None or self._thread is None:
            raise DependencyDown("the SQLite writer is not running")
        self._queue.put((_Call(fn), future))
        return await future

    async def insert_command(self, command: Command) -> bool:
        row = command_row(command)

        def insert(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO commands (id, device_id, status, created_ms, "
                "deadline_ms, doc) VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            return cursor.rowcount == 1

        return bool(await self._write_call(insert))

    async def replace_command(self, command: Command, expected: Status) -> bool:
        row = command_row(command)

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE commands SET status = ?, deadline_ms = ?, doc = ? "
                "WHERE id = ? AND status = ?",
                (row[2], row[4], row[5], command.id, str(expected)),
            )
            return cursor.rowcount == 1

        return bool(await self._write_call(update))

    async def get_command(self, command_id: str) -> Command | None:
        rows = await self._read("SELECT doc FROM commands WHERE id = ?", (command_id,))
        return commands_from(rows)[0] if rows else None

    async def list_commands(self, device_id: str, limit: int) -> list[Command]:
        rows = await self._read(
            "SELECT doc FROM commands WHERE device_id = ? ORDER BY created_ms DESC LIMIT ?",
            (device_id, limit),
        )
        return commands_from(rows)

    async def due_commands(self, now_ms: int, limit: int) -> list[Command]:
        rows = await self._read(
            "SELECT doc FROM commands WHERE status IN ('pending', 'sent') AND deadline_ms <= ? "
            "ORDER BY deadline_ms LIMIT ?",
            (now_ms, limit),
        )
        return commands_from(rows)

    async def pending_commands(self, device_id: str | None) -> list[Command]:
        rows = await self._read(
            "SELECT doc FROM commands WHERE (? IS NULL OR device_id = ?) AND status = 'pending' "
            "ORDER BY created_ms",
            (device_id, device_id),
        )
        return commands_from(rows)

    # ---- alerts (AlertLog) and leases ---------------------------------------------------

    async def insert_alert(self, alert: Alert) -> bool:
        row = alert_row(alert)

        def insert(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO alerts (id, tenant_id, device_id, rule_id, state, level, "
                "updated_ms, version, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return cursor.rowcount == 1

        return bool(await self._write_call(insert))

    async def replace_alert(self, alert: Alert, expected_version: int) -> bool:
        row = alert_row(alert)

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE alerts SET state = ?, level = ?, updated_ms = ?, version = ?, doc = ? "
                "WHERE id = ? AND version = ?",
                (row[4], row[5], row[6], row[7], row[8], alert.id, expected_version),
            )
            return cursor.rowcount == 1

        return bool(await self._write_call(update))

    async def get_alert(self, alert_id: str) -> Alert | None:
        rows = await self._read("SELECT doc FROM alerts WHERE id = ?", (alert_id,))
        return alerts_from(rows)[0] if rows else None

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
        where, args = alert_filters(tenant_id, device_id, states, level, since_ms, lambda n: "?")
        rows = await self._read(
            f"SELECT doc FROM alerts{where} ORDER BY updated_ms DESC, id DESC LIMIT ?",
            (*args, limit),
        )
        return alerts_from(rows)

    async def open_alerts(self) -> list[Alert]:
        return alerts_from(await self._read("SELECT doc FROM alerts WHERE state <> 'cleared'", ()))

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int, now_ms: int) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
                "expires_ms = excluded.expires_ms "
                "WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?",
                (name, holder, now_ms + ttl_ms, now_ms),
            )
            return cursor.rowcount == 1

        return bool(await self._write_call(take))

    async def query_fleet(
        self,
        start_ms: int,
        end_ms: int,
        bucket_ms: int,
        agg: str,
        metrics: Sequence[str] = (),
        tenant_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Straight from raw rows: SQLite serves one instance and modest fleets."""
        only = f" AND j.key IN ({', '.join('?' * len(metrics))})" if metrics else ""
        tenant = " AND t.tenant_id = ?" if tenant_id is not None else ""
        rows = await self._read(
            f"SELECT (t.ts / ?) * ? AS bucket, j.key, {_FLEET_AGG_SQL[agg]} "
            "FROM telemetry AS t, json_each(t.data) AS j "
            "WHERE t.ts >= ? AND t.ts < ? AND j.type IN ('integer', 'real') "
            f"AND abs(j.value) < 1e300{tenant}{only} GROUP BY bucket, j.key ORDER BY bucket",
            (
                bucket_ms,
                bucket_ms,
                start_ms,
                end_ms,
                *((tenant_id,) if tenant_id is not None else ()),
                *metrics,
            ),
        )
        return bucket_rows(rows, agg)

    async def fleet_power(
        self, start_ms: int, end_ms: int, bucket_ms: int, tenant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """From raw rows, like ``query_fleet``; a node's capacity (and whether it is one) is
        its current meta. Starts from the nodes and reads their rows through the (device, ts)
        index, so other devices' history is never scanned."""
        tenant = " AND t.tenant_id = ?" if tenant_id is not None else ""
        rows = await self._read(
            _FLEET_POWER_SQL.format(tenant=tenant),
            (
                start_ms,
                end_ms,
                *((tenant_id,) if tenant_id is not None else ()),
                bucket_ms,
                bucket_ms,
            ),
        )
        return [
            {"ts": r[0], "power_kw": float(r[1]), "nodes": float(r[2]), "capacity_kw": float(r[3])}
            for r in rows
        ]
