"""The hub on PostgreSQL: `fieldlink migrate`, ingest over MQTT and HTTP, history queries."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.support.clients import paho_client, publish, wait_until


def test_migrate_command_is_idempotent(pg_url: str) -> None:
    first = subprocess.run([sys.executable, "-m", "fieldlink.cli", "migrate", "--database-url", pg_url],
                           capture_output=True, text=True, timeout=60)
    again = subprocess.run([sys.executable, "-m", "fieldlink.cli", "migrate", "--database-url", pg_url],
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and "001_initial.sql" in first.stdout
    assert again.returncode == 0 and "up to date" in again.stdout


async def test_hub_on_postgres_stores_and_serves_history(make_hub, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(database_url=pg_url) as hub:
        async with paho_client(hub.mqtt_port) as client:
            for seq in range(1, 6):
                await publish(client, "edge/pg1/telemetry", {"seq": seq, "v": seq * 1.5})
            await publish(client, "edge/pg1/telemetry", {"seq": 3, "v": 99})  # duplicate
        counters = hub.runtime.ingestor.counters
        await wait_until(lambda: counters.received == 6)
        await hub.runtime.ingestor.settled()
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            posted = await http.post("/api/telemetry", json=[{"device_id": "pg1", "seq": 6, "v": 9.0},
                                                             {"device_id": "pg1", "seq": 6, "v": 9.0}])
            assert posted.status_code == 200 and posted.json()["stored"] == 1
            points = (await http.get("/api/devices/pg1/telemetry")).json()["points"]
            buckets = (await http.get("/api/devices/pg1/telemetry",
                                      params={"bucket": "1h", "agg": "max"})).json()["points"]
            device = (await http.get("/api/devices/pg1")).json()
    assert [p["seq"] for p in points] == [1, 2, 3, 4, 5, 6]
    assert len(buckets) in (1, 2) and max(b["v"] for b in buckets) == 9.0
    assert device["status"] == "online"
    assert counters.stored == 6 and counters.rejected == {"duplicate": 2}


async def test_fleet_chart_endpoint_on_postgres(make_hub, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(database_url=pg_url) as hub:
        now = hub.runtime.ingestor.clock_ms()
        body = [{"device_id": f"fl{i % 3}", "seq": i, "ts": now - 120_000 + i * 1000,
                 "power_kw": float(i), "soc": 50} for i in range(60)]
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            assert (await http.post("/api/telemetry", json=body)).status_code == 200
            chart = await http.get("/api/fleet/telemetry",
                                   params={"agg": "count", "metric": "power_kw"})
            bad_bucket = await http.get("/api/fleet/telemetry", params={"bucket": "30s"})
            bad_agg = await http.get("/api/fleet/telemetry", params={"agg": "last"})
            summed = await http.get("/api/fleet/telemetry", params={"agg": "sum"})
    assert chart.status_code == 200
    points = chart.json()["points"]
    assert sum(p["power_kw"] for p in points) == 60  # every record, once, from the rollup
    # a sum of raw samples is no fleet total: refused, with the way to fleet power
    assert summed.status_code == 422 and summed.json()["error"]["code"] == "invalid_agg"
    assert "/api/vpp/history" in summed.json()["error"]["message"]
    assert all(set(p) == {"ts", "power_kw"} and p["ts"] % 60_000 == 0 for p in points)
    assert chart.json()["end"] - chart.json()["start"] >= 86_400_000
    assert bad_bucket.status_code == 422 and bad_bucket.json()["error"]["code"] == "invalid_bucket"
    assert bad_agg.status_code == 422 and bad_agg.json()["error"]["code"] == "invalid_agg"
