"""The 24-hour fleet chart and VPP fleet power queries: 1,000 devices x 1 day of 5-second data
(17.28 M rows) in a private PostgreSQL with default durability settings.

    python bench/fleet_query.py [--devices 1000] [--runs 20] [--no-http]

Loads the raw rows with 001's schema (every device a VPP node: ``capacity_kw`` in its meta),
then applies the later migrations one by one the way an upgrade would (002 backfills the fleet
rollup and adds the BRIN index, 007 backfills the VPP power rollups), then times
``PostgresStore.query_fleet`` and ``PostgresStore.fleet_power`` (24 h, 1-minute buckets) and,
once each, the same answers computed from raw rows (the fleet power one is also compared with
the rollup's). Last, it starts ``fieldlink serve`` (and a mosquitto for it) on the loaded
database and times ``GET /api/vpp/history`` with the admin token. Progress on stderr, one
JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fieldlink.backends.postgres import PostgresStore, migrate, migrations  # noqa: E402
from fieldlink.mqtt.broker import free_port  # noqa: E402
from tests.support.servers import Mosquitto, Postgres, wait_for_port  # noqa: E402

DAY_MS = 86_400_000
STEP_MS = 5_000


# The VPP fleet power from raw rows, by its definition (ports.FleetPower): each node's average
# per minute, summed per minute (1-minute buckets: no averaging over minutes left).
RAW_FLEET_POWER = """
SELECT minute, sum(power) AS power_kw, count(*) AS nodes, sum(capacity) AS capacity_kw
FROM (
    SELECT (t.ts / 60000) * 60000 AS minute, avg((t.data ->> 'power_kw')::float8) AS power,
           max((d.meta ->> 'capacity_kw')::float8) AS capacity
    FROM telemetry AS t JOIN devices AS d ON d.id = t.device_id
    WHERE t.ts >= $1 AND t.ts < $2 AND t.tenant_id = 'default'
    GROUP BY minute, t.device_id
) AS node_minutes
GROUP BY minute ORDER BY minute
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ms_summary(timings: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(timings), 2), "max": round(max(timings), 2)}


def time_http_history(url: str, start: int, end: int, runs: int) -> dict[str, object]:
    """Start ``fieldlink serve`` (and a mosquitto for it) on the loaded database and time
    ``GET /api/vpp/history`` (24 h, 1-minute buckets) with the admin token."""
    with tempfile.TemporaryDirectory(prefix="fieldlink-fleetq-") as tmp:
        d = Path(tmp)
        broker = Mosquitto(d / "mosquitto", persistence=False)
        broker.start()
        port = free_port()
        with open(d / "hub.log", "wb") as hub_log:
            hub = subprocess.Popen(
                [sys.executable, "-m", "fieldlink.cli", "serve", "--mqtt-url", broker.url,
                 "--http-port", str(port), "--data-dir", str(d / "data"),
                 "--database-url", url],
                stdout=hub_log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        try:
            wait_for_port(port, 120, hub)
            token = (d / "data" / "admin.token").read_text().strip()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/vpp/history?start={start}&end={end}&bucket=1m",
                headers={"Authorization": f"Bearer {token}"})
            timings = []
            body: dict[str, object] = {}
            for _ in range(runs + 1):  # the first warms the hub's pool and code paths
                t = time.perf_counter()
                with urllib.request.urlopen(request, timeout=30) as response:
                    body = json.loads(response.read())
                timings.append((time.perf_counter() - t) * 1000)
            points = body.get("points")
            assert isinstance(points, list)
            say(f"GET /api/vpp/history: {len(points)} points, p50 "
                f"{statistics.median(timings[1:]):.1f} ms, max {max(timings[1:]):.1f} ms "
                f"(first {timings[0]:.1f} ms)")
            return {"points": len(points), "first_ms": round(timings[0], 2),
                    **ms_summary(timings[1:])}
        except Exception:
            say((d / "hub.log").read_text()[-4000:])
            raise
        finally:
            hub.terminate()
            try:
                hub.wait(30)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait(10)
            broker.stop()


async def run(devices: int, runs: int, http: bool) -> dict[str, object]:
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
        # Every device is a VPP node (1 to 20 kW), so 007 backfills the power rollups.
        await conn.execute(
            "INSERT INTO devices (id, kind, meta, created_ms) "
            "SELECT 'sim-' || lpad(d::text, 4, '0'), 'battery', "
            "jsonb_build_object('capacity_kw', 1 + d % 20), $1::bigint "
            "FROM generate_series(0, $2 - 1) AS d",
            start, devices,
        )
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
        # One migration at a time (as migrate() would apply them), to time each backfill.
        per_migration: dict[str, float] = {}
        for version, name, sql in migrations()[1:]:
            t = time.monotonic()
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            per_migration[name] = round(time.monotonic() - t, 1)
            say(f"applied {name} in {per_migration[name]:.1f} s")
        assert await migrate(url) == []
        backfill_s = sum(per_migration.values())
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('telemetry'))")
        rollup_rows = await conn.fetchval("SELECT count(*) FROM telemetry_fleet_1m")
        vpp_sizes = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM vpp_node_1m) AS node_rows, "
            "pg_size_pretty(pg_total_relation_size('vpp_node_1m')) AS node_size, "
            "(SELECT count(*) FROM vpp_fleet_1m) AS fleet_rows"
        )

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
            power_tenant = []
            for _ in range(runs):
                t = time.perf_counter()
                power = await store.fleet_power(start, end, 60_000, "default")
                power_tenant.append((time.perf_counter() - t) * 1000)
            power_all = []
            for _ in range(runs):  # every tenant together
                t = time.perf_counter()
                await store.fleet_power(start, end, 60_000)
                power_all.append((time.perf_counter() - t) * 1000)
        finally:
            await store.close()
        say(f"fleet chart from the rollup: {len(points)} points, p50 "
            f"{statistics.median(timings):.1f} ms, max {max(timings):.1f} ms")
        say(f"fleet power from the rollup: {len(power)} points, p50 "
            f"{statistics.median(power_tenant):.1f} ms, max {max(power_tenant):.1f} ms")
        t = time.perf_counter()
        raw_power = await conn.fetch(RAW_FLEET_POWER, start, end)
        raw_power_ms = (time.perf_counter() - t) * 1000
        # The rollup must agree with the definition (up to float summation order).
        assert [p["ts"] for p in power] == [r["minute"] for r in raw_power]
        worst = max(
            (abs(p[k] - r[k]) / max(1.0, abs(r[k])) for p, r in zip(power, raw_power, strict=True)
             for k in ("power_kw", "nodes", "capacity_kw")),
            default=0.0,
        )
        assert worst < 1e-9, worst
        say(f"fleet power from raw rows: {len(raw_power)} points in {raw_power_ms:.0f} ms "
            f"(matches the rollup: worst relative difference {worst:.1e})")
        t = time.perf_counter()
        raw = await conn.fetch(
            "SELECT (t.ts / 60000) * 60000 AS b, avg((t.data ->> 'power_kw')::float8) "
            "FROM telemetry AS t WHERE t.ts >= $1 AND t.ts < $2 GROUP BY b ORDER BY b",
            start, end)
        raw_ms = (time.perf_counter() - t) * 1000
        say(f"the same from raw rows (BRIN on ts): {len(raw)} points in {raw_ms:.0f} ms")
        await conn.close()
        http_ms = time_http_history(url, start, end, runs) if http else None
        return {
            "devices": devices, "rows": rows, "table_size": size, "rollup_rows": rollup_rows,
            "load_s": round(load_s, 1), "migrate_backfill_s": round(backfill_s, 1),
            "migrations_s": per_migration,
            "points": len(points),
            "rollup_one_metric_ms": ms_summary(timings),
            "rollup_all_metrics_ms": ms_summary(all_metrics),
            "raw_one_metric_ms": round(raw_ms, 1),
            "vpp_node_rows": vpp_sizes["node_rows"], "vpp_node_size": vpp_sizes["node_size"],
            "vpp_fleet_rows": vpp_sizes["fleet_rows"],
            "fleet_power_points": len(power),
            "fleet_power_tenant_ms": ms_summary(power_tenant),
            "fleet_power_all_tenants_ms": ms_summary(power_all),
            "fleet_power_raw_ms": round(raw_power_ms, 1),
            "http_vpp_history_ms": http_ms,
        }
    finally:
        server.remove()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--no-http", action="store_true", help="skip GET /api/vpp/history")
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.devices, a.runs, not a.no_http))))


if __name__ == "__main__":
    main()
