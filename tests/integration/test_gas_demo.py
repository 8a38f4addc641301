"""The gas sensor seed (scenario 003) end to end with alerts (issue 11): the seed's own
socket.io-client (Node, tests/node/seed_gas_client.mjs) gets ``device:alerts`` within 100 ms of
the vendor's MQTT publish through raise, escalation, acknowledgement and clear; three instances
store one alert per crossing and fan its events out everywhere; ``fieldlink up --demo gas``
sets the seed up by itself."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import socketio

from fieldlink.app.demo import GAS_SENSORS, demo_settings
from fieldlink.app.settings import Settings
from fieldlink.mqtt.broker import free_port
from tests.integration.test_cli import start_up, stop
from tests.integration.test_demo_tenants import read_until
from tests.integration.test_socketio_node import LATENCY_BUDGET_MS, seed_client
from tests.support.clients import paho_client, publish, wait_until, ws_client

GAS = demo_settings(Settings(demo="gas"))  # the demo's routes and rules files
VENDOR_TOPIC = "SubTronics/data"


def gas_files() -> dict[str, Any]:
    assert GAS.routes_file is not None and GAS.routes_file.name == "gas_routes.toml"
    assert GAS.alert_rules_file is not None and GAS.alert_rules_file.name == "gas_rules.toml"
    return {"routes_file": GAS.routes_file, "alert_rules_file": GAS.alert_rules_file}


def vendor(serial: str, ppm: float, **extra: Any) -> dict[str, Any]:
    """A SubTronics payload as the sensors send it; ``time`` is now in epoch seconds."""
    return {"serial_number": serial, "gas_type": "CH4", "gas_val": ppm, "temp_raw": 215,
            "hum_raw": 473, "time": int(time.time()), "crc": "a1f3", "fw": "2.1.0", **extra}


async def test_seed_client_gets_alerts_within_100_ms_through_the_lifecycle(  # type: ignore[no-untyped-def]
    make_hub, tmp_path: Path
) -> None:
    serial = "ST-9101"
    latencies: dict[str, float] = {}
    async with make_hub(**gas_files()) as hub, paho_client(hub.mqtt_port) as mqtt, \
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        await publish(mqtt, VENDOR_TOPIC, vendor(serial, 120, sent_ms=0))  # registers it
        await wait_until(lambda: serial in hub.runtime.registry.devices, what="registered")
        async with seed_client(hub.http_url, serial, hub.token, tmp_path) as client:
            await client.next("connect")
            snapshot = await client.next("device:data")
            data = snapshot["data"]
            assert (snapshot["deviceId"], data["gas_ppm"], data["gas_type"]) == (
                serial, 120, "CH4")
            assert (data["temperature_c"], data["humidity_pct"]) == (21.5, 47.3)
            assert "crc" not in data and "serial_number" not in data

            async def reading(ppm: float) -> float:
                """Publish a vendor reading; the time it was sent (ms, in the payload too)."""
                sent_ms = time.time() * 1000
                await publish(mqtt, VENDOR_TOPIC, vendor(serial, ppm, sent_ms=sent_ms))
                return sent_ms

            async def alert_after(step: str, sent_ms: float, **fields: Any) -> dict[str, Any]:
                event = await client.next("device:alerts")
                assert event["deviceId"] == serial and len(event["alerts"]) == 1, event
                alert: dict[str, Any] = event["alerts"][0]
                assert {k: alert.get(k) for k in fields} == fields, (step, alert)
                latencies[step] = event["t"] - sent_ms
                return alert

            level1_sent = await reading(450)
            raised = await alert_after("level 1", level1_sent, level="alarm_level_1",
                                       state="active", version=1)
            alert_id = raised["id"]
            assert (raised["device_id"], raised["rule_id"], raised["metric"]) == (
                serial, "gas-ch4", "gas_ppm")
            assert (raised["value"], raised["threshold"]) == (450.0, 400.0)
            # raised at the record's time: the vendor's "time", whole epoch seconds
            assert raised["raised"] % 1000 == 0
            assert level1_sent - 1000 < raised["raised"] <= level1_sent, raised

            escalated = await alert_after("level 2", await reading(900), id=alert_id,
                                          level="alarm_level_2", state="active", version=2)
            assert (escalated["value"], escalated["threshold"]) == (900.0, 800.0)

            listed = (await admin.get("/api/alerts", params={"state": "active"})).json()
            assert listed["alerts"] == [escalated]

            ack_sent = time.time() * 1000
            acked = await admin.post(f"/api/devices/{serial}/alerts/{alert_id}/acknowledge",
                                     json={"note": "crew dispatched"})
            assert acked.status_code == 200, acked.text
            heard = await alert_after("acknowledge", ack_sent, id=alert_id,
                                      state="acknowledged", version=3, note="crew dispatched",
                                      acknowledged_by="service:admin")
            assert heard == acked.json()

            await reading(390)  # below level 1 but above clear (380): nothing
            cleared = await alert_after("clear", await reading(300), id=alert_id,
                                        state="cleared", version=4, value=300.0)
            assert cleared["level"] == "alarm_level_2" and cleared["cleared"] >= raised["raised"]
            stored = (await admin.get(f"/api/devices/{serial}/alerts")).json()["alerts"]
            assert stored == [cleared]

            # Every reading arrived as device:data, once; the readings after the snapshot in
            # publish order.
            await client.next("device:data", lambda e: e["data"]["gas_ppm"] == 300)
            assert await client.close() == 0

    alerts = client.named("device:alerts")
    assert [(e["alerts"][0]["id"], e["alerts"][0]["version"]) for e in alerts] == [
        (alert_id, 1), (alert_id, 2), (alert_id, 3), (alert_id, 4)]
    ppm = [e["data"]["gas_ppm"] for e in client.named("device:data")]
    assert ppm == [120, 450, 900, 390, 300], ppm
    sends = Counter(e["data"]["sent_ms"] for e in client.named("device:data"))
    assert set(sends.values()) == {1}, sends
    assert not client.named("fieldlink:error") and not client.named("connect_error")
    print("MQTT publish / REST acknowledge -> socket.io-client device:alerts latency: "
          + ", ".join(f"{step} {ms:.1f} ms" for step, ms in latencies.items()))
    for step in ("level 1", "level 2", "clear"):  # the MQTT publishes
        assert -1.0 < latencies[step] < LATENCY_BUDGET_MS, latencies
    assert -1.0 < latencies["acknowledge"] < 1000, latencies


async def test_three_instances_store_one_alert_per_crossing_and_fan_it_out(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    serial = "ST-9201"
    common = dict(mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                  mqtt_shared_group="hubs", **gas_files())
    async with AsyncExitStack() as stack:
        hubs = [await stack.enter_async_context(make_hub(**common, data_dir=tmp_path / f"hub{i}"))
                for i in (1, 2, 3)]
        await wait_until(lambda: sum(h.runtime.alerts.leader for h in hubs) == 1,
                         timeout=15, what="one alert leader")
        follower = next(h for h in reversed(hubs) if not h.runtime.alerts.leader)

        sio = socketio.AsyncClient()
        alerts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        readings: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        got_alerts: list[dict[str, Any]] = []
        got_readings: list[dict[str, Any]] = []

        def on_alerts(payload: dict[str, Any]) -> None:
            got_alerts.append(payload)
            alerts.put_nowait(payload)

        def on_data(payload: dict[str, Any]) -> None:
            got_readings.append(payload)
            readings.put_nowait(payload)

        sio.on("device:alerts", on_alerts)
        sio.on("device:data", on_data)
        await sio.connect(follower.http_url, auth={"token": follower.token},
                          transports=["websocket"])
        stack.push_async_callback(sio.disconnect)
        # The admin may subscribe to a sensor that has not reported yet.
        assert await sio.call("subscribe:device", serial, timeout=5) == {"ok": True}

        mqtt = await stack.enter_async_context(paho_client(mosquitto.port))
        sent = 0

        async def burst(*ppm: float) -> None:
            """Publish readings at once (the shared subscription spreads them over the
            instances); return when the follower's client has each (so the alert leader,
            on the same bus, has them too, before the next burst)."""
            nonlocal sent
            marks = []
            for value in ppm:
                sent += 1
                marks.append(sent)
                await publish(mqtt, VENDOR_TOPIC, vendor(serial, value, mark=sent))
            seen: set[int] = set()
            while seen != set(marks):
                data = (await asyncio.wait_for(readings.get(), 10))["data"]
                assert data["mark"] in marks and data["mark"] not in seen, data
                seen.add(data["mark"])

        async def alert_event() -> dict[str, Any]:
            payload = await asyncio.wait_for(alerts.get(), 10)
            assert payload["deviceId"] == serial and len(payload["alerts"]) == 1, payload
            alert: dict[str, Any] = payload["alerts"][0]
            return alert

        await burst(100, 120)  # below level 1
        await burst(450, 460, 470, 480, 490, 410)  # level 1, six times over
        raised = await alert_event()
        # Acknowledged on an instance that does not evaluate: the leader escalates the
        # acknowledged version next.
        async with httpx.AsyncClient(base_url=follower.http_url, headers=follower.auth) as http:
            answer = await http.post(f"/api/devices/{serial}/alerts/{raised['id']}/acknowledge",
                                     json={"note": "checking"})
        assert answer.status_code == 200, answer.text
        acked = await alert_event()
        assert acked == answer.json()
        await burst(900, 950, 910, 820)  # level 2, four times over
        escalated = await alert_event()
        await burst(300, 200, 100)  # below clear, three times
        cleared = await alert_event()
        assert (raised["level"], raised["state"], raised["version"]) == (
            "alarm_level_1", "active", 1)
        assert (acked["id"], acked["state"], acked["version"], acked["note"]) == (
            raised["id"], "acknowledged", 2, "checking")
        assert (escalated["id"], escalated["level"], escalated["state"], escalated["version"]) == (
            raised["id"], "alarm_level_2", "active", 3)
        assert (cleared["id"], cleared["state"], cleared["version"]) == (
            raised["id"], "cleared", 4)
        assert cleared["value"] == 300.0  # the first reading past clear

        # PostgreSQL holds exactly one alert for the crossing, and every reading once.
        # (Events go out before the batched store write: wait for the writes to land.)
        conn = await asyncpg.connect(pg_url)
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while True:
                stored = await conn.fetchval(
                    "SELECT count(*) FROM telemetry WHERE device_id = $1", serial)
                if stored >= sent or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            await asyncio.gather(*(h.runtime.ingestor.settled() for h in hubs))
            rows = await conn.fetch("SELECT id, state, rule_id FROM alerts WHERE device_id = $1",
                                    serial)
        finally:
            await conn.close()
        assert [(r["id"], r["state"], r["rule_id"]) for r in rows] == [
            (raised["id"], "cleared", "gas-ch4")]
        assert stored == sent == 15

        # Every instance's REST shows the same alert.
        for hub in hubs:
            async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
                listed = (await http.get("/api/alerts", params={"device": serial})).json()
            assert listed["alerts"] == [cleared], hub.http_url
        raised_by = [h.runtime.alerts.counters.raised for h in hubs]
        assert sorted(raised_by) == [0, 0, 1], raised_by
        assert follower.runtime.alerts.counters.raised == 0
        # The readings really were spread: more than one instance ingested this sensor.
        took = [h.runtime.ingestor.counters.stored for h in hubs]
        assert sum(took) == 15 and sum(1 for n in took if n > 0) >= 2, took

    # The follower's client got each change once, and each reading once.
    assert [(a["alerts"][0]["id"], a["alerts"][0]["version"]) for a in got_alerts] == [
        (raised["id"], 1), (raised["id"], 2), (raised["id"], 3), (raised["id"], 4)]
    assert sorted(r["data"]["mark"] for r in got_readings) == list(range(1, 16))


async def test_up_with_the_gas_demo_sets_up_sensors_and_the_rule(tmp_path: Path) -> None:
    http_port = free_port()
    process = start_up(tmp_path, "--demo", "gas", "--http-port", str(http_port),
                       "--mqtt-port", str(free_port()))
    try:
        text = await asyncio.to_thread(read_until, process, "/acknowledge")
        assert "demo: gas (gas sensor gateway)" in text, text
        assert "sensors ST-4411, ST-4412, ST-4413 publish to SubTronics/data every 2 s" in text
        assert "rule gas-ch4: gas_ppm > 400 alarm_level_1, > 800 alarm_level_2" in text
        assert f"http://127.0.0.1:{http_port}/api/alerts?state=active" in text
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{http_port}"
        # The sensors appear: those known at subscribe time in the snapshot, the others as
        # their first events.
        async with ws_client(f"ws://127.0.0.1:{http_port}/ws", additional_headers=auth) as ws:
            answer = await ws.subscribe("all")
            assert answer["type"] == "subscribed", answer
            seen = {d["device_id"] for d in answer["snapshot"]["devices"]}
            async with asyncio.timeout(20):  # they publish every 2 s
                while not set(GAS_SENSORS) <= seen:
                    event = await ws.recv(timeout=20)
                    if event.get("type") in ("telemetry", "device", "status"):
                        seen.add(event["data"]["device_id"])
        async with httpx.AsyncClient(base_url=base, headers=auth) as http:
            devices = (await http.get("/api/devices")).json()["devices"]
            sensors = {d["device_id"]: d for d in devices if d["device_id"] in GAS_SENSORS}
            assert set(sensors) == set(GAS_SENSORS), devices
            assert {d["kind"] for d in sensors.values()} == {"gas_sensor"}
            by_kind = (await http.get("/api/devices", params={"kind": "gas_sensor"})).json()
            assert {d["device_id"] for d in by_kind["devices"]} == set(GAS_SENSORS)
            rules = (await http.get("/api/alert-rules")).json()["rules"]
            gas = next((r for r in rules if r["id"] == "gas-ch4"), None)
            assert gas is not None, rules
            assert (gas["metric"], gas["op"], gas["clear"], gas["scope"]) == (
                "gas_ppm", ">", 380.0, {"type": "kind", "value": "gas_sensor"})
            assert gas["levels"] == [{"name": "alarm_level_1", "threshold": 400.0},
                                     {"name": "alarm_level_2", "threshold": 800.0}]
            for serial in GAS_SENSORS:  # vendor payloads mapped by the route
                latest = (await http.get(f"/api/devices/{serial}/telemetry/latest")).json()
                reading = latest["latest"]
                assert reading["device_id"] == serial and reading["gas_type"] == "CH4", latest
                assert isinstance(reading["gas_ppm"], int | float), latest
                assert "serial_number" not in reading and "crc" not in reading, latest
                assert abs(reading["ts"] - time.time() * 1000) < 60_000, latest
    finally:
        assert stop(process) == 0
