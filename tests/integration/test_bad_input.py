"""The bad-input matrix (reliability-anchors B1-B4) through real clients: every bad input gets
its clear error or counted rejection, the hub stays up, valid traffic around it is stored and
delivered, and ``stored + rejected + dropped == received``."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fieldlink.core.closecodes import CloseCode
from tests.support.clients import paho_client, publish, wait_until, ws_client

NOW_S = 1_764_000_000

MQTT_CASES: list[tuple[str, bytes, str]] = [
    ("edge/m1/telemetry", b"{not json", "invalid_json"),
    ("edge/m1/telemetry", b'{"v": NaN}', "invalid_json"),
    ("edge/m1/telemetry", b'{"v": Infinity}', "invalid_json"),
    ("edge/m1/telemetry", b'{"v": 1e999999}', "invalid_json"),
    ("edge/m1/telemetry", b"\xef\xbb\xbf{\"v\": 1}", "invalid_json"),
    ("edge/m1/telemetry", b'{"v": "\xff"}', "invalid_json"),
    ("edge/m1/telemetry", b'{"v": 1} trailing', "invalid_json"),
    ("edge/m1/telemetry", b"[1, 2]", "not_an_object"),
    ("edge/m1/telemetry", b"[" * 60_000, "invalid_json"),
    ("edge/m1/telemetry", json.dumps({"a": {"b": {"c": {"d": {"e": 1}}}}}).encode(), "too_deep"),
    ("edge/m1/telemetry", json.dumps({f"k{i}": i for i in range(300)}).encode(), "too_many_keys"),
    ("edge/m1/telemetry", b'{"bad key": 1}', "invalid_key"),
    ("edge/m1/telemetry", json.dumps({"s": "x" * 2000}).encode(), "invalid_value"),
    ("edge/m1/telemetry", json.dumps({"v": 1, "ts": NOW_S + 86_400 * 365 * 30}).encode(), "invalid_timestamp"),
    ("edge/m1/telemetry", json.dumps({"v": 1, "ts": "1999-01-01T00:00:00Z"}).encode(), "invalid_timestamp"),
    ("edge/m1/telemetry", json.dumps({"v": 1, "seq": -4}).encode(), "invalid_seq"),
    ("edge/m1/telemetry", json.dumps({"v": 1, "device_id": "m2"}).encode(), "device_id_mismatch"),
    ("edge/m1/telemetry", b"{}", "no_metrics"),
    ("edge/m1/telemetry", json.dumps({"blob": ["x" * 1000] * 70}).encode(), "payload_too_large"),
    ("edge/has space/telemetry", b'{"v": 1}', "invalid_device_id"),
    ("edge/" + "x" * 129 + "/telemetry", b'{"v": 1}', "invalid_device_id"),
]


async def test_mqtt_bad_input_is_counted_and_valid_traffic_survives(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.subscribe("device:m1")
        async with paho_client(hub.mqtt_port) as client:
            seq = 0
            for topic, payload, _ in MQTT_CASES:
                seq += 1
                await publish(client, "edge/m1/telemetry", {"v": seq, "seq": seq})
                await publish(client, topic, payload)
            await publish(client, "edge/m1/telemetry", {"v": seq + 1, "seq": seq + 1})
            await publish(client, "edge/m1/telemetry", {"v": 999, "seq": 1})  # duplicate
            valid = seq + 1
            expected_received = valid + len(MQTT_CASES) + 1
            counters = hub.runtime.ingestor.counters
            await wait_until(lambda: counters.received == expected_received)
            got = []
            while len(got) < valid:
                event = await ws.recv_until(lambda m: m["type"] == "telemetry")
                got.append(event["data"]["v"])
        assert got == list(range(1, valid + 1))  # every valid record delivered, in order, once
    await hub.runtime.ingestor.settled()
    expected: dict[str, int] = {"duplicate": 1}
    for _, _, reason in MQTT_CASES:
        expected[reason] = expected.get(reason, 0) + 1
    assert counters.rejected == expected
    assert counters.stored == valid and counters.dropped == {}
    assert counters.stored + counters.rejected_total + counters.dropped_total == counters.received
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        history = (await http.get("/api/devices/m1/telemetry", params={"limit": 1000})).json()
        assert [p["v"] for p in history["points"]] == list(range(1, valid + 1))
        metrics = (await http.get("/metrics")).text
        assert 'fieldlink_ingest_rejected_total{reason="too_deep"} 1.0' in metrics
        assert f"fieldlink_ingest_received_total {float(expected_received)}" in metrics
        assert (await http.get("/health")).status_code == 200


HTTP_CASES: list[tuple[bytes, int, str, str]] = [
    (b"{not json", 422, "invalid_json", "$"),
    (b"", 422, "invalid_json", "$"),
    (b'{"device_id": "h1", "v": NaN}', 422, "invalid_json", "$"),
    (b"[]", 422, "no_records", "$"),
    (b'"text"', 422, "not_an_object", "$"),
    (b'{"v": 1}', 422, "invalid_device_id", "$.device_id"),
    (b'{"device_id": "bad id", "v": 1}', 422, "invalid_device_id", "$.device_id"),
    (b'{"device_id": "h1", "v": 1, "seq": "x"}', 422, "invalid_seq", "$.seq"),
    (b'{"device_id": "h1", "nested": {"v": 1e999}}', 422, "invalid_json", "$"),
    (b'{"device_id": "h1", "ts": "soon", "v": 1}', 422, "invalid_timestamp", "$.ts"),
    (json.dumps([{"device_id": "h1", "v": i} for i in range(1001)]).encode(), 422, "too_many_records", "$"),
]


@pytest.mark.parametrize(("body", "status", "code", "path"), HTTP_CASES)
async def test_http_bad_input(hub, body: bytes, status: int, code: str, path: str) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        response = await http.post("/api/telemetry", content=body,
                                   headers={"content-type": "application/json"})
        assert response.status_code == status
        error = response.json()["error"]
        assert (error["code"], error["path"]) == (code, path)
        assert "Traceback" not in response.text
        ok = await http.post("/api/telemetry", json={"device_id": "h1", "v": 1})
        assert ok.status_code == 200 and ok.json()["stored"] == 1
    counters = hub.runtime.ingestor.counters
    assert counters.stored + counters.rejected_total + counters.dropped_total == counters.received


async def test_http_mixed_batch_duplicates_and_size_limits(hub) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        mixed = await http.post("/api/telemetry", json=[
            {"device_id": "h2", "seq": 1, "v": 1}, {"device_id": "h2", "v": "x" * 2000},
            {"device_id": "h2", "seq": 2, "v": 2}])
        assert mixed.status_code == 207
        body = mixed.json()
        assert (body["accepted"], body["stored"], body["duplicates"]) == (2, 2, 0)
        assert [(e["code"], e["path"]) for e in body["errors"]] == [("invalid_value", "$[1].v")]
        again = await http.post("/api/telemetry", json={"device_id": "h2", "seq": 2, "v": 2})
        assert again.status_code == 200 and again.json()["duplicates"] == 1
        big = b'{"device_id": "h2", "v": "' + b"x" * 70_000 + b'"}'
        declared = await http.post("/api/telemetry", content=big)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b"x" * 1024

        streamed = await http.post("/api/telemetry", content=chunks())
        assert streamed.status_code == 413
        history = (await http.get("/api/devices/h2/telemetry")).json()["points"]
        assert [p["seq"] for p in history] == [1, 2]


async def test_rest_errors_are_json(hub) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        await http.post("/api/telemetry", json={"device_id": "r1", "v": 1})
        cases = [
            ("/api/devices/nobody", 404, "not_found"),
            ("/api/devices/nobody/telemetry", 404, "not_found"),
            ("/api/devices/nobody/telemetry/latest", 404, "not_found"),
            ("/api/devices/r1/telemetry?bucket=7w", 422, "invalid_bucket"),
            ("/api/devices/r1/telemetry?bucket=1m&agg=median", 422, "invalid_agg"),
            ("/api/devices/r1/telemetry?start=yesterday", 422, "invalid_time"),
            ("/api/devices/r1/telemetry?start=2000&end=1000", 422, "invalid_range"),
            ("/api/devices/r1/telemetry?limit=0", 422, "invalid_parameter"),
            ("/no/such/route", 404, "not_found"),
        ]
        for path, status, code in cases:
            response = await http.get(path)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), path


async def test_websocket_mistakes_get_error_frames_and_the_connection_keeps_working(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        for raw, code in [("nope", "invalid_json"), ("[1]", "bad_message"),
                          ('{"type": "dance"}', "unknown_type"),
                          ('{"type": "subscribe", "channel": "device:bad id"}', "bad_channel"),
                          ('{"type": "subscribe"}', "bad_channel")]:
            await ws.ws.send(raw)
            error = await ws.recv()
            assert (error["type"], error["code"]) == ("error", code)
        await ws.ws.send(b"\x00binary")
        assert (await ws.recv())["code"] == "unsupported_data"
        assert (await ws.subscribe("device:ok1"))["type"] == "subscribed"
        async with paho_client(hub.mqtt_port) as client:
            await publish(client, "edge/ok1/telemetry", {"v": 1})
        assert (await ws.recv_until(lambda m: m["type"] == "telemetry"))["data"]["v"] == 1
    assert hub.runtime.hub.stats.client_errors == 6


async def test_oversized_websocket_message_closes_with_1009(hub) -> None:  # type: ignore[no-untyped-def]
    async with connect(hub.ws_url, max_size=None, additional_headers=hub.auth) as ws:
        await ws.recv()
        await ws.send("x" * (65 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as other:  # the hub is fine
        assert (await other.subscribe("all"))["type"] == "subscribed"
