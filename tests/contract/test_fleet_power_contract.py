"""``FleetPower.fleet_power`` against a brute-force computation of its definition, for every
Store implementation (memory, SQLite, PostgreSQL with its ingest-time rollup), plus the
PostgreSQL-only paths: two instances folding the same node-minutes at once, and the 007
migration's backfill of an existing history."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from fieldlink.backends.memory import MemoryStore
from fieldlink.backends.postgres import PostgresStore, migrate, migrations
from fieldlink.backends.sqlite import SqliteStore
from fieldlink.core.model import Device, Record
from fieldlink.ports import Store
from tests.conftest import fresh_database

MINUTE = 60_000
START = (1_764_000_000_000 // (5 * MINUTE)) * 5 * MINUTE  # a 5-minute boundary
SPAN_MINUTES = 13


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "h.db")
    else:
        s = PostgresStore(await fresh_database(request.getfixturevalue("postgres")))
    await s.start()
    yield s
    await s.close()


# ---- the definition, computed the slow and obvious way -------------------------------------


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def reference(
    records: Iterable[Record],
    devices: Iterable[Device],
    start_ms: int,
    end_ms: int,
    bucket_ms: int,
    tenant_id: str | None,
) -> list[dict[str, Any]]:
    """ports.FleetPower.fleet_power from its docstring: only the first copy of a (device, seq)
    is stored; values with magnitude >= 1e300 are left out, as in every rollup."""
    capacity = {
        d.id: d.meta["capacity_kw"]
        for d in devices
        if is_number(d.meta.get("capacity_kw")) and 0 < d.meta["capacity_kw"] < 1e300
    }
    seen: set[tuple[str, int]] = set()
    readings: dict[int, dict[str, list[float]]] = {}  # minute -> node -> its power_kw values
    for r in records:
        if r.seq is not None:
            if (r.device_id, r.seq) in seen:
                continue
            seen.add((r.device_id, r.seq))
        power = r.metrics.get("power_kw")
        if (
            start_ms <= r.ts_ms < end_ms
            and tenant_id in (None, r.tenant_id)
            and r.device_id in capacity
            and is_number(power)
            and abs(power) < 1e300  # type: ignore[arg-type]
        ):
            minute = r.ts_ms // MINUTE * MINUTE
            readings.setdefault(minute, {}).setdefault(r.device_id, []).append(float(power))  # type: ignore[arg-type]
    per_bucket: dict[int, list[tuple[float, int, float]]] = {}
    for minute, nodes in readings.items():
        p = sum(sum(values) / len(values) for values in nodes.values())
        c = sum(capacity[node] for node in nodes)
        per_bucket.setdefault(minute // bucket_ms * bucket_ms, []).append((p, len(nodes), c))
    return [
        {
            "ts": b,
            "power_kw": sum(m[0] for m in per_bucket[b]) / len(per_bucket[b]),
            "nodes": sum(m[1] for m in per_bucket[b]) / len(per_bucket[b]),
            "capacity_kw": sum(m[2] for m in per_bucket[b]) / len(per_bucket[b]),
        }
        for b in sorted(per_bucket)
    ]


def assert_points(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [p["ts"] for p in got] == [p["ts"] for p in want]
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == ["capacity_kw", "nodes", "power_kw", "ts"]
        for key in ("power_kw", "nodes", "capacity_kw"):
            assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-9), (g["ts"], key)


# ---- a randomized fleet --------------------------------------------------------------------


def fleet(seed: int) -> tuple[list[Device], list[Record]]:
    """Nodes of two tenants with different capacities and reporting rates, minutes some
    nodes skip, devices that are not nodes, and readings that do not count."""
    rng = random.Random(seed)
    devices = [
        Device("n1", "battery", {"capacity_kw": 5.0}, START, None, "acme"),
        Device("n2", "battery", {"capacity_kw": 13.5, "site": "x"}, START, None, "acme"),
        Device("n3", "pv", {"capacity_kw": 2}, START, None, "acme"),  # an integer capacity
        Device("n4", "battery", {"capacity_kw": 7.25}, START, None, "bolt"),
        Device("n5", "ev", {"capacity_kw": 100.0}, START, None, "bolt"),
        # Not nodes: no capacity, zero, negative, a string, a boolean.
        Device("meter", "meter", {}, START, None, "acme"),
        Device("zero", "battery", {"capacity_kw": 0}, START, None, "acme"),
        Device("neg", "battery", {"capacity_kw": -3.0}, START, None, "bolt"),
        Device("text", "battery", {"capacity_kw": "5"}, START, None, "bolt"),
        Device("flag", "battery", {"capacity_kw": True}, START, None, "acme"),
    ]
    tenant = {d.id: d.tenant_id for d in devices}
    step_s = {"n1": 5, "n2": 17, "n3": 60, "n4": 0, "n5": 9, "meter": 5, "zero": 10,
              "neg": 10, "text": 10, "flag": 10}
    skipped = {"n1": {4}, "n2": {7, 8}, "n3": {1, 2, 3}, "n5": {3, 4, 5, 11}}
    records: list[Record] = []
    for device_id, step in step_s.items():
        ts, seq = START + rng.randrange(0, 5_000), 0
        while ts < START + SPAN_MINUTES * MINUTE:
            if (ts - START) // MINUTE not in skipped.get(device_id, ()):
                metrics: dict[str, Any] = {"power_kw": round(rng.uniform(-10, 10), 3),
                                           "soc": rng.uniform(0, 100)}
                roll = rng.random()
                if roll < 0.05:
                    del metrics["power_kw"]  # a record without power
                elif roll < 0.08:
                    metrics["power_kw"] = rng.choice([True, "7", None])  # not a number
                elif roll < 0.10:
                    metrics["power_kw"] = rng.randrange(-5, 6)  # an integer reading
                records.append(Record(device_id, ts, metrics, seq, tenant_id=tenant[device_id]))
                seq += 1
            ts += (step or rng.randrange(1, 40)) * 1000
    # A huge reading, left out (it must not overflow a rollup sum either).
    records.append(
        Record("n4", START + 2 * MINUTE + 1, {"power_kw": 1e305}, 10_000, tenant_id="bolt")
    )
    return devices, records


def batches(records: list[Record], seed: int) -> list[list[Record]]:
    """The records shuffled over several writes, so node-minutes are split over batches,
    plus a write of duplicates (which must not count)."""
    rng = random.Random(seed)
    shuffled = records[:]
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), 5))
    chunks = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    duplicates = [
        Record(r.device_id, r.ts_ms, {"power_kw": 999.0}, r.seq, tenant_id=r.tenant_id)
        for r in rng.sample(records, 30)
    ]
    return [*chunks, duplicates]


WINDOWS = [
    (START, START + SPAN_MINUTES * MINUTE),
    (START + 2 * MINUTE, START + 9 * MINUTE),  # starts and ends inside 5-minute buckets
    (START - 60 * MINUTE, START - 30 * MINUTE),  # nothing there
]


async def check_all_windows(
    store: Store, devices: Sequence[Device], records: Sequence[Record]
) -> None:
    for start_ms, end_ms in WINDOWS:
        for bucket_ms in (MINUTE, 5 * MINUTE):
            for tenant_id in (None, "acme", "bolt", "nobody"):
                want = reference(records, devices, start_ms, end_ms, bucket_ms, tenant_id)
                got = await store.fleet_power(start_ms, end_ms, bucket_ms, tenant_id)
                assert_points(got, want)


# ---- every store ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_fleet_power_matches_the_definition(store: Store, seed: int) -> None:
    devices, records = fleet(seed)
    chunks = batches(records, seed)
    # Some node-minute is folded in two writes (the rollup must merge, not replace, it).
    written_in: dict[tuple[str, int], set[int]] = {}
    for i, chunk in enumerate(chunks[:-1]):
        for r in chunk:
            written_in.setdefault((r.device_id, r.ts_ms // MINUTE), set()).add(i)
    assert any(len(batches_) > 1 for (d, _), batches_ in written_in.items() if d.startswith("n"))
    # n5 is registered just before its first records are written, in the same batch (as
    # ingest registers a new device); the others beforehand.
    late = next(i for i, chunk in enumerate(chunks) if any(r.device_id == "n5" for r in chunk))
    for device in devices:
        if device.id != "n5":
            store.save_device(device)
    for i, chunk in enumerate(chunks):
        if i == late:
            store.save_device(devices[4])
        await store.write(chunk)
    await check_all_windows(store, devices, records)
    full = await store.fleet_power(START, START + SPAN_MINUTES * MINUTE, MINUTE)
    assert len(full) == SPAN_MINUTES and max(p["nodes"] for p in full) == 5


async def test_fleet_power_of_an_empty_store(store: Store) -> None:
    assert await store.fleet_power(START, START + 60 * MINUTE, MINUTE) == []
    store.save_device(Device("n1", "battery", {"capacity_kw": 5.0}, START))
    await store.write([Record("n1", START, {"soc": 50.0}, 1)])  # a node, but no power
    assert await store.fleet_power(START, START + 60 * MINUTE, MINUTE) == []


# ---- PostgreSQL: several instances, and the upgrade -----------------------------------------


async def test_two_postgres_instances_fold_the_same_node_minutes(pg_url: str) -> None:
    """Two stores (two instances) write interleaved shares of the same node-minutes at the
    same time; the rollup equals the definition (no lost update, no deadlock)."""
    devices, records = fleet(3)
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    for s in stores:
        await s.start()
    try:
        for device in devices:
            stores[0].save_device(device)
        await stores[0].write([])
        rng = random.Random(3)
        shuffled = records[:]
        rng.shuffle(shuffled)
        small = [shuffled[i : i + 7] for i in range(0, len(shuffled), 7)]

        async def writer(s: PostgresStore, chunks: list[list[Record]]) -> None:
            await asyncio.gather(*(s.write(chunk) for chunk in chunks))

        await asyncio.gather(writer(stores[0], small[0::2]), writer(stores[1], small[1::2]))
        await check_all_windows(stores[1], devices, records)
    finally:
        for s in stores:
            await s.close()


async def test_migration_007_backfills_the_history(pg_url: str) -> None:
    """A database with history from before 007 (applied up to 006, rows written directly):
    the upgrade's backfill gives the same fleet power as ingest would have."""
    devices, records = fleet(4)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations "
            "(version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz DEFAULT now())"
        )
        for version, name, sql in migrations():
            if version < 7:
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
        await conn.executemany(
            "INSERT INTO devices (id, kind, meta, created_ms, tenant_id) "
            "VALUES ($1, $2, $3::jsonb, $4, $5)",
            [(d.id, d.kind, orjson.dumps(d.meta).decode(), d.created_ms, d.tenant_id)
             for d in devices],
        )
        await conn.executemany(
            "INSERT INTO telemetry (device_id, ts, seq, data, tenant_id) "
            "VALUES ($1, $2, $3, $4::jsonb, $5)",
            [(r.device_id, r.ts_ms, r.seq, orjson.dumps(r.metrics).decode(), r.tenant_id)
             for r in records],
        )
    finally:
        await conn.close()
    assert await migrate(pg_url) == ["007_vpp.sql"]
    store = PostgresStore(pg_url)
    await store.start()
    try:
        await check_all_windows(store, devices, records)
        # Ingest after the upgrade folds into the backfilled minutes.
        more = [Record("n1", START + 3 * MINUTE + 59_000, {"power_kw": 4.5}, 50_000,
                       tenant_id="acme")]
        await store.write(more)
        await check_all_windows(store, devices, [*records, *more])
    finally:
        await store.close()
