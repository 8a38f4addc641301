"""The issue's headline path: MQTT publish (paho) -> WebSocket subscriber -> history."""

from __future__ import annotations

import asyncio
import json

import httpx
import paho.mqtt.client as mqtt
from websockets.asyncio.client import connect

from tests.conftest import RunningHub


async def recv_json(ws, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def test_paho_publish_reaches_ws_subscriber_and_history(hub: RunningHub) -> None:
    async with connect(hub.ws_url, additional_headers=hub.auth) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "connected"
        await ws.send(json.dumps({"type": "subscribe", "channel": "device:n1"}))
        subscribed = await recv_json(ws)
        assert subscribed["type"] == "subscribed" and subscribed["channel"] == "device:n1"

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", hub.mqtt_port)
        client.loop_start()
        try:
            info = client.publish("edge/n1/telemetry", json.dumps({"temp": 21.5, "seq": 7}), qos=1)
            await asyncio.to_thread(info.wait_for_publish, 5)
        finally:
            client.loop_stop()
            client.disconnect()

        telemetry = None
        while telemetry is None:
            message = await recv_json(ws)
            events = message if isinstance(message, list) else [message]
            telemetry = next((e for e in events if e["type"] == "telemetry"), None)
        assert telemetry["channel"] == "device:n1"
        assert telemetry["data"]["temp"] == 21.5 and telemetry["data"]["seq"] == 7

    await hub.runtime.ingestor.settled()
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        response = await http.get("/api/devices/n1/telemetry")
    assert response.status_code == 200
    points = response.json()["points"]
    assert [(p["seq"], p["temp"]) for p in points] == [(7, 21.5)]


async def test_openapi_docs_health_and_metrics(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        docs = await http.get("/docs")
        spec = (await http.get("/openapi.json")).json()
        health = (await http.get("/health")).json()
        metrics = (await http.get("/metrics")).text
        page = await http.get("/")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    for path in ("/api/telemetry", "/api/devices", "/api/devices/{device_id}",
                 "/api/devices/{device_id}/telemetry", "/api/devices/{device_id}/telemetry/latest",
                 "/health", "/metrics"):
        assert path in spec["paths"], path
    assert health == {"status": "ok", "checks": {"store": "ok", "broker": "ok", "bus": "ok"}}
    for name in ("fieldlink_ingest_received_total", "fieldlink_ingest_stored_total",
                 "fieldlink_ws_clients", "fieldlink_ingest_pending"):
        assert name in metrics
    assert page.status_code == 200 and 'data-testid="devices"' in page.text


async def test_health_is_degraded_while_the_broker_is_away(mosquitto, make_hub) -> None:  # type: ignore[no-untyped-def]
    from tests.support.clients import wait_until

    async with make_hub(mqtt_url=mosquitto.url) as hub:
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            mosquitto.stop()
            await wait_until(lambda: not hub.runtime.listener.connected.is_set())
            response = await http.get("/health")
            assert response.status_code == 503
            assert response.json()["checks"]["broker"] == "down"
            mosquitto.start()
            await wait_until(lambda: hub.runtime.listener.connected.is_set(), timeout=10)
            assert (await http.get("/health")).status_code == 200
