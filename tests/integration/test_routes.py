"""Custom ingest routes: the shipped gas-sensor example, end to end over real MQTT."""

from __future__ import annotations

from pathlib import Path

from fieldlink.app.wiring import load_routes
from fieldlink.core.topics import TopicKind, TopicScheme
from tests.support.clients import paho_client, publish, ws_client

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routes.toml"
VENDOR = {"serial_number": "ST-4411", "gas_type": "CH4", "gas_val": 412, "temp_raw": 215,
          "hum_raw": 473, "time": 1764000000, "crc": "a1f3", "fw": "2.1.0"}


def test_example_routes_file_loads() -> None:
    routes = load_routes(EXAMPLE)
    assert [r.topic for r in routes] == ["SubTronics/data"]
    match = TopicScheme("edge", routes).match("SubTronics/data")
    assert match is not None and match.kind is TopicKind.ROUTE


async def test_gas_sensor_route_normalizes_vendor_payload(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(routes_file=EXAMPLE) as hub:
        async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
            assert (await ws.subscribe("device:ST-4411"))["type"] == "subscribed"
            async with paho_client(hub.mqtt_port) as mqtt:
                await publish(mqtt, "SubTronics/data", VENDOR)
                await publish(mqtt, "SubTronics/data", {"gas_val": 1, "time": 1764000005})
            event = await ws.recv_until(lambda m: m["type"] == "telemetry")
        data = event["data"]
        assert data == {"device_id": "ST-4411", "ts": 1764000000000, "gas_type": "CH4",
                        "gas_ppm": 412, "temperature_c": 21.5, "humidity_pct": 47.3}
        await hub.runtime.ingestor.settled()
        counters = hub.runtime.ingestor.counters
        assert counters.stored == 1
        assert counters.rejected == {"invalid_device_id": 1}
        assert hub.runtime.registry.devices["ST-4411"].kind == "gas_sensor"
