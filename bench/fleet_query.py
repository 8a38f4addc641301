"""The 24-hour fleet chart query: 1,000 devices x 1 day of 5-second data (17.28 M rows) in a
private PostgreSQL with default durability settings.

    python bench/fleet_query.py [--devices 1000] [--runs 20]

Loads the raw rows with 001's schema, then applies the later migrations the way an upgrade
would (002 backfills the fleet rollup from raw rows and adds the BRIN index), then times
``PostgresStore.query_fleet`` (24 h, 1-minute buckets) and, once, the same aggregate computed
from raw rows. Progress on stderr, one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fieldlink.backends.postgres import PostgresStore, migrate, migrations  # noqa: E402
from tests.support.servers import Postgres  # noqa: E402

DAY_MS = 86_400_000
STEP_MS = 5_000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run(devices: int, runs: int) -> dict[str, object]:
    server = Postgres(durable=True)
    server.start()
    try:
        url = server.url
        conn = await asyncpg.connect(url)
        version, name, sql = migrations()[0]
        await conn.execute(
            "CREATE TABLE schema_migrations "
            "(version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz DEFAULT now())"
        )
        await conn.execute(sql)
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                           version, name)
        end = (int(time.time() * 1000) // 60_000) * 60_000
        start = end - DAY_MS
        per_device = DAY_MS // STEP_MS
        t = time.monotonic()
        # Time-major order, as a live fleet writes it.
        await conn.execute(
            "INSERT INTO telemetry (device_id, ts, seq, data) "
            "SELECT 'sim-' || lpad(d::text, 4, '0'), $1::bigint + s * $2::bigint, s, "
            "jsonb_build_object('power_kw', round((random() * 20 - 10)::numeric, 2), "
            "'soc', round((random() * 100)::numeric, 1)) "
            "FROM generate_series(0, $3 - 1) AS s, generate_series(0, $4 - 1) AS d",
            start, STEP_MS, per_device, devices,
        )
        await conn.execute("ANALYZE telemetry")
        rows = await conn.fetchval("SELECT count(*) FROM telemetry")
        load_s = time.monotonic() - t
        say(f"loaded {rows:,} rows in {load_s:.0f} s")
        t = time.monotonic()
        applied = await migrate(url)
        backfill_s = time.monotonic() - t
        say(f"applied {applied} (rollup backfill + BRIN) in {backfill_s:.0f} s")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('telemetry'))")
        rollup_rows = await conn.fetchval("SELECT count(*) FROM telemetry_fleet_1m")

        store = PostgresStore(url)
        await store.start()
        try:
            timings = []
            for _ in range(runs):
                t = time.perf_counter()
                points = await store.query_fleet(start, end, 60_000, "avg", ("power_kw",),
                                                 "default")
                timings.append((time.perf_counter() - t) * 1000)
            all_metrics = []
            for _ in range(runs):  # every tenant together (the system administrator's view)
                t = time.perf_counter()
                await store.query_fleet(start, end, 60_000, "sum")
                all_metrics.append((time.perf_counter() - t) * 1000)
        finally:
            await store.close()
        say(f"fleet chart from the rollup: {len(points)} points, p50 "
            f"{statistics.median(timings):.1f} ms, max {max(timings):.1f} ms")
        t = time.perf_counter()
        raw = await conn.fetch(
            "SELECT (t.ts / 60000) * 60000 AS b, avg((t.data ->> 'power_kw')::float8) "
            "FROM telemetry AS t WHERE t.ts >= $1 AND t.ts < $2 GROUP BY b ORDER BY b",
            start, end)
        raw_ms = (time.perf_counter() - t) * 1000
        say(f"the same from raw rows (BRIN on ts): {len(raw)} points in {raw_ms:.0f} ms")
        await conn.close()
        return {
            "devices": devices, "rows": rows, "table_size": size, "rollup_rows": rollup_rows,
            "load_s": round(load_s, 1), "migrate_backfill_s": round(backfill_s, 1),
            "points": len(points),
            "rollup_one_metric_ms": {"p50": round(statistics.median(timings), 2),
                                     "max": round(max(timings), 2)},
            "rollup_all_metrics_ms": {"p50": round(statistics.median(all_metrics), 2),
                                      "max": round(max(all_metrics), 2)},
            "raw_one_metric_ms": round(raw_ms, 1),
        }
    finally:
        server.remove()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.devices, a.runs))))


if __name__ == "__main__":
    main()
