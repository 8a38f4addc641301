"""Online/offline status: the status topic (plain and JSON, retained), the last will, and
silence longer than the timeout; each change is one event and visible over REST."""

from __future__ import annotations

import httpx
import paho.mqtt.client as mqtt

from tests.support.clients import paho_client, publish, wait_until, ws_client


async def test_status_topic_plain_and_json_and_rest(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.subscribe("device:st1")
        async with paho_client(hub.mqtt_port) as client:
            await publish(client, "edge/st1/status", "online", retain=True)
            online = await ws.recv_until(lambda m: m["type"] == "status")
            await publish(client, "edge/st1/status", {"status": "offline"}, retain=True)
            offline = await ws.recv_until(lambda m: m["type"] == "status")
            await publish(client, "edge/st1/status", "sideways")
            await wait_until(lambda: hub.runtime.presence.counters.status_rejected == 1)
            await publish(client, "edge/st1/status", "", retain=True)  # clear the retained message
    assert (online["data"]["status"], online["data"]["reason"]) == ("online", "reported")
    assert offline["data"]["status"] == "offline"
    assert offline["seq"] == online["seq"] + 1
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        device = (await http.get("/api/devices/st1")).json()
    assert device["status"] == "offline"


async def test_last_will_marks_device_offline(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.subscribe("device:lw1")
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lw1")
        device.will_set("edge/lw1/status", "offline", qos=1, retain=True)
        device.connect("127.0.0.1", hub.mqtt_port, keepalive=1)
        device.loop_start()
        try:
            await publish(device, "edge/lw1/telemetry", {"v": 1})
            first = await ws.recv_until(lambda m: m["type"] == "status")
            assert first["data"]["status"] == "online"
            # Drop the TCP connection without DISCONNECT: the broker publishes the will.
            device.loop_stop()
            sock = device.socket()
            assert sock is not None
            sock.close()
            will = await ws.recv_until(lambda m: m["type"] == "status", timeout=10)
        finally:
            device.loop_stop()
    assert (will["data"]["status"], will["data"]["reason"]) == ("offline", "last_will")


async def test_silence_longer_than_timeout_means_offline(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(silence_timeout_s=0.5, status_sweep_s=0.05) as hub:
        async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
            await ws.subscribe("device:quiet")
            async with paho_client(hub.mqtt_port) as client:
                await publish(client, "edge/quiet/telemetry", {"v": 1})
                online = await ws.recv_until(lambda m: m["type"] == "status")
                offline = await ws.recv_until(lambda m: m["type"] == "status", timeout=5)
                await publish(client, "edge/quiet/telemetry", {"v": 2})
                back = await ws.recv_until(lambda m: m["type"] == "status")
    assert online["data"]["status"] == "online"
    assert (offline["data"]["status"], offline["data"]["reason"]) == ("offline", "silence")
    assert offline["data"]["ts"] - online["data"]["ts"] >= 500
    assert (back["data"]["status"], back["data"]["reason"]) == ("online", "telemetry")


async def test_external_broker_retained_status_and_reconnect(mosquitto, make_hub) -> None:  # type: ignore[no-untyped-def]
    """`fieldlink serve` shape: an external mosquitto. Retained statuses are learned at start;
    after the broker restarts the hub reconnects and resumes ingest."""
    async with paho_client(mosquitto.port) as client:
        await publish(client, "edge/ret1/status", {"status": "online"}, retain=True)
    async with make_hub(mqtt_url=mosquitto.url) as hub:
        assert hub.runtime.broker is None
        await wait_until(lambda: hub.runtime.presence.status("ret1") == "online")
        listener = hub.runtime.listener
        assert listener is not None
        connects = listener.connects
        mosquitto.stop()
        await wait_until(lambda: not listener.connected.is_set())
        mosquitto.start()
        await wait_until(lambda: listener.connects == connects + 1, timeout=10,
                         what="hub reconnected to the restarted broker")
        async with paho_client(mosquitto.port) as client:
            await publish(client, "edge/after/telemetry", {"v": 1})
        await wait_until(lambda: hub.runtime.ingestor.counters.received == 1)
        await hub.runtime.ingestor.settled()
        assert hub.runtime.ingestor.counters.stored == 1
