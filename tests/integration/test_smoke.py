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
    async with connect(hub.ws_url) as ws:
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
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        response = await http.get("/api/devices/n1/telemetry")
    assert response.status_code == 200
    points = response.json()["points"]
    assert [(p["seq"], p["temp"]) for p in points] == [(7, 21.5)]
