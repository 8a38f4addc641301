"""PostgreSQL history and device registry (``postgresql://``), for production and scale-out.

Writes: one writer task owns a connection and commits whatever has queued since its last
commit in one transaction: the rows are COPYed into a temporary staging table, then moved with
one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` so duplicates of ``(device_id, seq)`` are
skipped and counted per caller. Reads use a small pool. Migrations are numbered SQL files in
``migrations/postgres``; ``migrate`` applies the missing ones under an advisory lock, so
several instances may start at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

import asyncpg
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

log = logging.getLogger("fieldlink.postgres")

MIGRATION_LOCK = 7_241_001  # pg_advisory_lock key: one migrator at a time
_MAX_BATCH_ITEMS = 2000
CONNECT_TIMEOUT_S = 5.0

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (
    ord int, grp int, device_id text, ts bigint, seq bigint, data jsonb, tenant_id text
) ON COMMIT DELETE ROWS
"""
# Move staged rows into telemetry (skipping duplicates) and fold the inserted ones into the
# per-tenant fleet rollup and the VPP's power rollups (007_vpp.sql), in one statement. Rollup
# rows are upserted in key order so two instances committing at once lock them in the same
# order and cannot deadlock.
#
# VPP: node_batch is this batch's count and total of power_kw per node-minute; rows of other
# devices drop out at the join with devices (which the same transaction upserted first, so a
# device registered by this batch's first record is already a node). The node upsert returns
# the node-minute's new (n, total) and this fold's part of them (batch_n, batch_total: the
# row keeps what its last fold added, because RETURNING cannot show excluded or old values,
# and joining the returned rows back to node_batch made the planner loop over both); the old
# values are new - this fold's part. Deriving them from what the upsert returns (not from a
# read before it) stays right when another instance folded the same node-minute
# concurrently: the upsert waits for the row lock, then adds to the committed values. The
# fleet row of the (tenant, minute) moves by each node's change of average, and gains the
# node and its capacity when the node-minute is new.
_MOVE = """
WITH moved AS (
    INSERT INTO telemetry (device_id, ts, seq, data, tenant_id)
    SELECT device_id, ts, seq, data, tenant_id FROM telemetry_stage ORDER BY ord
    ON CONFLICT (device_id, seq) WHERE seq IS NOT NULL DO NOTHING
    RETURNING device_id, seq, ts, data, tenant_id
), rolled AS (
    INSERT INTO telemetry_fleet_1m AS f (tenant_id, bucket, metric, n, total, lo, hi)
    SELECT m.tenant_id, (m.ts / 60000) * 60000, kv.key, count(*),
           sum((kv.value #>> '{}')::float8),
           min((kv.value #>> '{}')::float8), max((kv.value #>> '{}')::float8)
    FROM moved AS m, jsonb_each(m.data) AS kv
    WHERE jsonb_typeof(kv.value) = 'number' AND abs((kv.value #>> '{}')::float8) < 1e300
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (tenant_id, bucket, metric) DO UPDATE SET n = f.n + excluded.n,
        total = f.total + excluded.total, lo = least(f.lo, excluded.lo),
        hi = greatest(f.hi, excluded.hi)
), node_batch AS (
    SELECT m.tenant_id, m.device_id, (m.ts / 60000) * 60000 AS bucket, count(*) AS n,
           sum(p.power) AS total, max(d.capacity) AS capacity
    FROM moved AS m
    CROSS JOIN LATERAL (
        SELECT CASE WHEN jsonb_typeof(m.data -> 'power_kw') = 'number'
                    THEN (m.data ->> 'power_kw')::float8 END AS power
    ) AS p
    JOIN (
        SELECT id, CASE WHEN jsonb_typeof(meta -> 'capacity_kw') = 'number'
                        THEN (meta ->> 'capacity_kw')::float8 END AS capacity
        FROM devices
    ) AS d ON d.id = m.device_id
    WHERE abs(p.power) < 1e300 AND d.capacity > 0 AND d.capacity < 1e300
    GROUP BY 1, 2, 3
), node AS (
    INSERT INTO vpp_node_1m AS v
        (tenant_id, device_id, bucket, n, total, capacity_kw, batch_n, batch_total)
    SELECT tenant_id, device_id, bucket, n, total, capacity, n, total FROM node_batch
    ORDER BY device_id, bucket, tenant_id
    ON CONFLICT (device_id, bucket, tenant_id) DO UPDATE SET n = v.n + excluded.n,
        total = v.total + excluded.total, batch_n = excluded.n, batch_total = excluded.total
    RETURNING tenant_id, bucket, n, total, capacity_kw, batch_n, batch_total
), fleet AS (
    INSERT INTO vpp_fleet_1m AS f (tenant_id, bucket, power_kw, nodes, capacity_kw)
    SELECT tenant_id, bucket,
           sum(total / n - CASE WHEN n > batch_n THEN (total - batch_total) / (n - batch_n)
                                ELSE 0 END),
           count(*) FILTER (WHERE n = batch_n),
           coalesce(sum(capacity_kw) FILTER (WHERE n = batch_n), 0)
    FROM node GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (tenant_id, bucket) DO UPDATE SET power_kw = f.power_kw + excluded.power_kw,
        nodes = f.nodes + excluded.nodes, capacity_kw = f.capacity_kw + excluded.capacity_kw
)
SELECT device_id, seq FROM moved
"""
_FLEET_AGG_SQL = {
    "avg": "sum(total) / sum(n)",
    "sum": "sum(total)",
    "min": "min(lo)",
    "max": "max(hi)",
    "count": "sum(n)",
}
_UPSERT_DEVICE = """
INSERT INTO devices (id, kind, meta, created_ms, last_seen_ms, tenant_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, meta = excluded.meta,
    tenant_id = excluded.tenant_id,
    last_seen_ms = greatest(devices.last_seen_ms, excluded.last_seen_ms)
"""
_AGG_SQL = {
    "avg": "avg((kv.value #>> '{}')::float8)",
    "min": "min((kv.value #>> '{}')::float8)",
    "max": "max((kv.value #>> '{}')::float8)",
    "count": "count(*)",
    "last": "(array_agg((kv.value #>> '{}')::float8 ORDER BY t.ts DESC))[1]",
}


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` for every migration file, in order."""
    folder = resources.files("fieldlink.backends.migrations").joinpath("postgres")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(url: str) -> list[str]:
    """Apply missing migrations; returns the names applied."""
    conn = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
            log.info("applied migration %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        await conn.close()
    return applied


class PostgresStore:
    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[WriteResult] | None]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._closing = False
        self._devices_unsaved: list[Any] = []
        self.batches = 0

    async def start(self) -> None:
        await migrate(self.url)
        # min_size=0: no background task that re-dials (and logs a traceback) while the
        # database is away; read connections are opened on demand.
        self._pool = await asyncpg.create_pool(
            self.url, min_size=0, max_size=self.pool_size, timeout=CONNECT_TIMEOUT_S
        )
        self._writer = asyncio.create_task(self._write_loop())

    async def close(self) -> None:
        """Commit everything queued, then close."""
        self._closing = True
        if self._writer is not None:
            done: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
            self._queue.put_nowait((None, done))  # sentinel: the writer stops after it
            await asyncio.wait({self._writer}, timeout=30)
            self._writer = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # ---- writes -------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> asyncio.Future[WriteResult]:
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        if self._writer is None or self._closing:
            future.set_exception(DependencyDown("the PostgreSQL store is closed"))
            return future
        self._queue.put_nowait((list(records), future))
        return future

    def save_device(self, device: Device) -> None:
        row = device_row(device)
        self._queue.put_nowait((row, None))

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT_S)
            await self._conn.execute(_STAGE)
        return self._conn

    async def _write_loop(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < _MAX_BATCH_ITEMS and not self._queue.empty():
                items.append(self._queue.get_nowait())
            stop = any(payload is None for payload, _ in items)
            groups: list[tuple[list[Record], asyncio.Future[WriteResult]]] = [
                (p, f) for p, f in items if p is not None and f is not None
            ]
            # Device rows of a failed commit go again with the next one (last write wins).
            devices = self._devices_unsaved + [p for p, f in items if p is not None and f is None]
            self._devices_unsaved = []
            try:
                results = await self._commit(groups, devices)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any failure
                # Connection errors are expected while the database is away; asyncpg can also
                # raise InternalClientError for a connection the server cut mid-COPY. Either
                # way this batch failed, the connection is dropped, and the loop goes on.
                if not isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
                    log.warning("PostgreSQL write failed unexpectedly: %r", exc)
                error = DependencyDown(f"PostgreSQL write failed: {type(exc).__name__}: {exc}")
                self._devices_unsaved = devices
                for _, future in groups:
                    if not future.done():
                        future.set_exception(error)
                if self._conn is not None and not self._conn.is_closed():
                    self._conn.terminate()
                self._conn = None
            else:
                for (_, future), result in zip(groups, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            if stop:
                for payload, waiter in items:
                    if payload is None and waiter is not None and not waiter.done():
                        waiter.set_result(WriteResult(0, 0))
                return

    async def _commit(
        self, groups: list[tuple[list[Record], asyncio.Future[WriteResult]]], devices: list[Any]
    ) -> list[WriteResult]:
        conn = await self._connection()
        rows = []
        ord_ = 0
        for grp, (records, _) in enumerate(groups):
            for r in records:
                rows.append(
                    (
                        ord_,
                        grp,
                        r.device_id,
                        r.ts_ms,
                        r.seq,
                        orjson.dumps(r.metrics).decode(),
                        r.tenant_id,
                    )
                )
                ord_ += 1
        stored = [0] * len(groups)
        async with conn.transaction():
            if devices:
                await conn.executemany(_UPSERT_DEVICE, devices)
            if rows:
                await conn.copy_records_to_table("telemetry_stage", records=rows)
                inserted = await conn.fetch(_MOVE)
                # Map inserted rows back to their callers: a row without seq is always inserted;
                # for (device, seq) the first staged occurrence wins (ORDER BY ord).
                remaining = {(r[2], r[4]): r[1] for r in reversed(rows) if r[4] is not None}
                for row in inserted:
                    if row["seq"] is not None:
                        stored[remaining[(row["device_id"], row["seq"])]] += 1
                for _, grp, _, _, seq, _, _ in rows:
                    if seq is None:
                        stored[grp] += 1
        self.batches += 1
        return [WriteResult(stored[i], len(g[0]) - stored[i]) for i, g in enumerate(groups)]

    # ---- reads --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _pool_or_unavailable(self) -> Iterator[asyncpg.Pool]:
        """The read pool; an unreachable database becomes ``DependencyDown`` (HTTP 503)."""
        if self._pool is None:
            raise DependencyDown("the PostgreSQL store is not started")
        try:
            yield self._pool
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
            raise DependencyDown(f"PostgreSQL is unavailable: {type(exc).__name__}") from exc
        except asyncpg.CannotConnectNowError as exc:
            raise DependencyDown("PostgreSQL is starting or stopping") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        with self._pool_or_unavailable() as pool:
            rows: list[Any] = await pool.fetch(sql, *args)
        return rows

    async def get_device(self, device_id: str) -> Device | None:
        rows = await self._fetch(
            "SELECT id, kind, meta::text, created_ms, last_seen_ms, tenant_id FROM devices "
            "WHERE id = $1",
            device_id,
        )
        return device_from(rows[0]) if rows else None

    async def list_devices(self) -> list[Device]:
        rows = await self._fetch(
            "SELECT id, kind, meta::text, created_ms, last_seen_ms, tenant_id FROM devices "
            "ORDER BY id"
        )
        return [device_from(r) for r in rows]

    async def query_range(
        self, device_id: str, start_ms: int, end_ms: int, limit: int, newest_first: bool = False
    ) -> list[Record]:
        order = "DESC" if newest_first else "ASC"
        rows = await self._fetch(
            "SELECT device_id, ts, seq, data::text FROM telemetry WHERE device_id = $1 "
            f"AND ts >= $2 AND ts < $3 ORDER BY ts {order} LIMIT $4",
            device_id,
            start_ms,
            end_ms,
            limit,
        )
        return [Record(r[0], r[1], orjson.loads(r[3]), r[2]) for r in rows]

    async def query_buckets(
        self, device_id: str, start_ms: int, end_ms: int, bucket_ms: int, agg: str
    ) -> list[dict[str, Any]]:
        rows = await self._fetch(
            f"SELECT (t.ts / $1) * $1 AS bucket, kv.key, {_AGG_SQL[agg]} AS value "
            "FROM telemetry AS t, jsonb_each(t.data) AS kv "
            "WHERE t.device_id = $2 AND t.ts >= $3 AND t.ts < $4 "
            "AND jsonb_typeof(kv.value) = 'number' GROUP BY bucket, kv.key ORDER BY bucket",
            bucket_ms,
            device_id,
            start_ms,
            end_ms,
        )
        return bucket_rows(rows, agg)

    async def latest(self, device_id: str) -> Record | None:
        rows = await self.query_range(device_id, 0, 2**62, 1, newest_first=True)
        return rows[0] if rows else None

    async def latest_since(self, since_ms: int) -> list[Record]:
        rows = await self._fetch(
            "SELECT DISTINCT ON (device_id) device_id, ts, seq, data::text FROM telemetry "
            "WHERE ts >= $1 ORDER BY device_id, ts DESC",
            since_ms,
        )
        return [Record(r[0], r[1], orjson.loads(r[3]), r[2]) for r in rows]

    # ---- identity documents (Docs) ------------------------------------------------------

    async def put_doc(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        await self._execute(
            "INSERT INTO docs (kind, key, doc) VALUES ($1, $2, $3::jsonb) "
            "ON CONFLICT (kind, key) DO UPDATE SET doc = excluded.doc",
            kind,
            key,
            orjson.dumps(doc).decode(),
        )

    async def get_doc(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = await self._fetch(
            "SELECT doc::text FROM docs WHERE kind = $1 AND key = $2", kind, key
        )
        return dict(orjson.loads(rows[0][0])) if rows else None

    async def list_docs(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        rows = await self._fetch(
            "SELECT key, doc::text FROM docs WHERE kind = $1 ORDER BY key", kind
        )
        return [(r[0], dict(orjson.loads(r[1]))) for r in rows]

    async def swap_doc(
        self, kind: str, key: str, doc: dict[str, Any], expected_version: int | None
    ) -> bool:
        """One statement each way. Racing UPDATEs queue on the row lock, and each re-checks
        the version on the row the previous one committed, so one wins. The version is
        compared as JSON (no cast that a non-numeric version would make fail)."""
        text = orjson.dumps(doc).decode()
        if expected_version is None:
            status = await self._execute(
                "INSERT INTO docs (kind, key, doc) VALUES ($1, $2, $3::jsonb) "
                "ON CONFLICT (kind, key) DO NOTHING",
                kind,
                key,
                text,
            )
        else:
            status = await self._execute(
                "UPDATE docs SET doc = $3::jsonb WHERE kind = $1 AND key = $2 "
                "AND doc -> 'version' = to_jsonb($4::bigint)",
                kind,
                key,
                text,
                expected_version,
            )
        return status.endswith(" 1")

    # ---- command log (CommandLog) -------------------------------------------------------

    async def _execute(self, sql: str, *args: Any) -> str:
        with self._pool_or_unavailable() as pool:
            status: str = await pool.execute(sql, *args)
        return status

    async def insert_command(self, command: Command) -> bool:
        status = await self._execute(
            "INSERT INTO commands (id, device_id, status, created_ms, deadline_ms, doc) "
            "VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (id) DO NOTHING",
            *command_row(command),
        )
        return status.endswith(" 1")

    async def replace_command(self, command: Command, expected: Status) -> bool:
        row = command_row(command)
        status = await self._execute(
            "UPDATE commands SET status = $1, deadline_ms = $2, doc = $3::jsonb "
            "WHERE id = $4 AND status = $5",
            row[2],
            row[4],
            row[5],
            command.id,
            str(expected),
        )
        return status.endswith(" 1")

    async def get_command(self, command_id: str) -> Command | None:
        rows = await self._fetch("SELECT doc::text FROM commands WHERE id = $1", command_id)
        return commands_from(rows)[0] if rows else None

    async def list_commands(self, device_id: str, limit: int) -> list[Command]:
        rows = await self._fetch(
            "SELECT doc::text FROM commands WHERE device_id = $1 ORDER BY created_ms DESC LIMIT $2",
            device_id,
            limit,
        )
        return commands_from(rows)

    async def due_commands(self, now_ms: int, limit: int) -> list[Command]:
        rows = await self._fetch(
            "SELECT doc::text FROM commands WHERE status IN ('pending', 'sent') "
            "AND deadline_ms <= $1 ORDER BY deadline_ms LIMIT $2",
            now_ms,
            limit,
        )
        return commands_from(rows)

    async def pending_commands(self, device_id: str | None) -> list[Command]:
        rows = await self._fetch(
            "SELECT doc::text FROM commands WHERE ($1::text IS NULL OR device_id = $1) "
            "AND status = 'pending' ORDER BY created_ms",
            device_id,
        )
        return commands_from(rows)

    # ---- alerts (AlertLog) and leases ---------------------------------------------------

    async def insert_alert(self, alert: Alert) -> bool:
        status = await self._execute(
            "INSERT INTO alerts (id, tenant_id, device_id, rule_id, state, level, updated_ms, "
            "version, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) "
            "ON CONFLICT DO NOTHING",
            *alert_row(alert),
        )
        return status.endswith(" 1")

    async def replace_alert(self, alert: Alert, expected_version: int) -> bool:
        row = alert_row(alert)
        status = await self._execute(
            "UPDATE alerts SET state = $1, level = $2, updated_ms = $3, version = $4, "
            "doc = $5::jsonb WHERE id = $6 AND version = $7",
            row[4],
            row[5],
            row[6],
            row[7],
            row[8],
            alert.id,
            expected_version,
        )
        return status.endswith(" 1")

    async def get_alert(self, alert_id: str) -> Alert | None:
        rows = await self._fetch("SELECT doc::text FROM alerts WHERE id = $1", alert_id)
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
        where, args = alert_filters(
            tenant_id, device_id, states, level, since_ms, lambda n: f"${n}"
        )
        rows = await self._fetch(
            f"SELECT doc::text FROM alerts{where} ORDER BY updated_ms DESC, id DESC "
            f"LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        return alerts_from(rows)

    async def open_alerts(self) -> list[Alert]:
        return alerts_from(
            await self._fetch("SELECT doc::text FROM alerts WHERE state <> 'cleared'")
        )

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int, now_ms: int) -> bool:
        status = await self._execute(
            "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_ms = excluded.expires_ms "
            "WHERE leases.holder = excluded.holder OR leases.expires_ms <= $4",
            name,
            holder,
            now_ms + ttl_ms,
            now_ms,
        )
        return status.endswith(" 1")

    async def delete_device(self, device_id: str, purge: bool) -> int:
        # Device rows are upserted by the writer task: let it commit what was queued before
        # this call (an empty write is a barrier), and forget rows held for a retry, so no
        # earlier upsert can bring the device back after the DELETE.
        await self.write([])
        self._devices_unsaved = [row for row in self._devices_unsaved if row[0] != device_id]
        await self._execute("DELETE FROM devices WHERE id = $1", device_id)
        if not purge:
            return 0
        status = await self._execute("DELETE FROM telemetry WHERE device_id = $1", device_id)
        return int(status.rsplit(" ", 1)[-1])

    async def query_fleet(
        self,
        start_ms: int,
        end_ms: int,
        bucket_ms: int,
        agg: str,
        metrics: Sequence[str] = (),
        tenant_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """From the per-minute rollup: the range and ``bucket_ms`` are whole minutes."""
        args: list[Any] = [bucket_ms, start_ms, end_ms]
        where = "bucket >= $2 AND bucket < $3"
        if tenant_id is not None:
            args.append(tenant_id)
            where += f" AND tenant_id = ${len(args)}"
        if metrics:
            args.append(list(metrics))
            where += f" AND metric = ANY(${len(args)})"
        rows = await self._fetch(
            f"SELECT (bucket / $1) * $1 AS b, metric, {_FLEET_AGG_SQL[agg]} "
            f"FROM telemetry_fleet_1m WHERE {where} GROUP BY b, metric ORDER BY b",
            *args,
        )
        return bucket_rows(rows, agg)

    async def fleet_power(
        self, start_ms: int, end_ms: int, bucket_ms: int, tenant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """From the per-minute rollup ``vpp_fleet_1m`` (the range and ``bucket_ms`` are whole
        minutes). Whether a device is a node counts as it was when its rows were written, its
        capacity as it was when each of its minutes was first written: later meta changes and
        deleting the device never rewrite history (memory and SQLite use today's meta)."""
        if tenant_id is not None:
            minutes = (
                "SELECT bucket, power_kw, nodes, capacity_kw FROM vpp_fleet_1m "
                "WHERE tenant_id = $4 AND bucket >= $2 AND bucket < $3"
            )
            args: tuple[Any, ...] = (bucket_ms, start_ms, end_ms, tenant_id)
        else:
            # Every tenant: sum the tenants' rows of a minute first, then average the minutes.
            minutes = (
                "SELECT bucket, sum(power_kw) AS power_kw, sum(nodes) AS nodes, "
                "sum(capacity_kw) AS capacity_kw FROM vpp_fleet_1m "
                "WHERE bucket >= $2 AND bucket < $3 GROUP BY bucket"
            )
            args = (bucket_ms, start_ms, end_ms)
        rows = await self._fetch(
            "SELECT (bucket / $1) * $1 AS b, avg(power_kw), avg(nodes)::float8, "
            f"avg(capacity_kw) FROM ({minutes}) AS m GROUP BY b ORDER BY b",
            *args,
        )
        return [{"ts": r[0], "power_kw": r[1], "nodes": r[2], "capacity_kw": r[3]} for r in rows]
