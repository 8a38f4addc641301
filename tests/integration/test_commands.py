"""Commands with real MQTT devices (the simulator's paho clients) and real WebSocket and HTTP
clients: every outcome of the lifecycle, across instances, across a hub restart, and under a
device drop plus a broker restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from fieldlink.core.commands import TERMINAL
from fieldlink.simulator.model import NodeModel, device_id
from fieldlink.simulator.runner import SimulatedDevice
from tests.support.clients import WsClient, wait_until, ws_client


@asynccontextmanager
async def fleet(n: int, hub: Any, mqtt_url: str | None = None, first: int = 1,
                **kw: Any) -> AsyncIterator[list[SimulatedDevice]]:
    """``n`` simulated devices (``sim-<first>``, ...) connected and registered with ``hub``."""
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth, timeout=5.0) as http:
        devices = [SimulatedDevice(NodeModel.create(device_id(first + i), seed=1),
                                   mqtt_url=mqtt_url or hub.mqtt_url, http=http, **kw)
                   for i in range(n)]
        for d in devices:
            d.start()
        try:
            known = hub.runtime.registry.devices
            await wait_until(lambda: all(d.mqtt_connected and d.id in known for d in devices),
                             timeout=15, what="devices connected and registered")
            yield devices
        finally:
            for d in devices:
                await d.stop()


async def command_events(ws: WsClient, command_id: str, timeout: float = 15) -> list[dict[str, Any]]:
    """Every event of one command on the requester's channel, up to its terminal state."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["status"] not in TERMINAL:
        event = await ws.recv_until(lambda m: m.get("type") == "command"
                                    and m.get("id") == command_id
                                    and m.get("channel", "command:").startswith("command:"),
                                    timeout=timeout)
        events.append(event)
    return events


async def test_ack_carries_the_result_and_every_stage(hub) -> None:  # type: ignore[no-untyped-def]
    async with fleet(1, hub) as (device,), ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.send({"type": "command", "id": "c1", "device": device.id, "action": "charge",
                       "params": {"setpoint_kw": 2.5}})
        events = await command_events(ws, "c1")
        assert [e["status"] for e in events] == ["pending", "sent", "acked"]
        assert events[-1]["result"] == {"mode": "charge", "setpoint_kw": 2.5}
        assert device.model.battery.mode == "charge"
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            logged = (await http.get("/api/commands/c1")).json()
            history = (await http.get(f"/api/devices/{device.id}/commands")).json()
    assert logged["status"] == "acked" and set(logged["stages"]) == {"pending", "sent", "acked"}
    assert logged["stages"]["pending"] <= logged["stages"]["sent"] <= logged["stages"]["acked"]
    assert [c["id"] for c in history["commands"]] == ["c1"]
    assert device.commands_received[0]["params"] == {"setpoint_kw": 2.5}


async def test_device_failure_reason_reaches_the_client(hub) -> None:  # type: ignore[no-untyped-def]
    async with fleet(1, hub, command_behavior="fail") as (device,), \
            ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.send({"type": "command", "id": "n1", "device": device.id, "action": "idle"})
        events = await command_events(ws, "n1")
    assert events[-1]["status"] == "failed"
    assert events[-1]["reason"] == "device_error" and events[-1]["error"] == "simulated failure"


async def test_action_the_device_cannot_do_fails_with_its_words(hub) -> None:  # type: ignore[no-untyped-def]
    async with fleet(1, hub) as (device,), httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        answer = await http.post(f"/api/devices/{device.id}/commands", params={"wait": "true"},
                                 json={"action": "fly", "params": {}})
    assert answer.status_code == 200
    assert answer.json()["status"] == "failed"
    assert answer.json()["error"] == "unknown action 'fly'"


async def test_no_answer_times_out_at_the_default_10_s(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub() as hub, fleet(1, hub, command_behavior="ignore") as (device,), \
            ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.send({"type": "command", "id": "t10", "device": device.id, "action": "idle"})
        events = await command_events(ws, "t10", timeout=15)
    assert [e["status"] for e in events] == ["pending", "sent", "timeout"]
    waited_s = (events[-1]["ts"] - events[0]["ts"]) / 1000
    print(f"default timeout fired after {waited_s:.3f} s")
    assert 9.5 <= waited_s <= 10.5
    assert events[-1]["error"] == "Device is not responding" and events[-1]["reason"] == "timeout"


async def test_shorter_configured_timeout_and_a_late_ack_that_changes_nothing(hub) -> None:  # type: ignore[no-untyped-def]
    async with fleet(1, hub, command_behavior="late", late_ack_s=2.0) as (device,), \
            ws_client(hub.ws_url, additional_headers=hub.auth) as ws:
        await ws.send({"type": "command", "id": "late1", "device": device.id, "action": "idle",
                       "timeout_ms": 1000})
        events = await command_events(ws, "late1")
        assert events[-1]["status"] == "timeout"
        waited_s = (events[-1]["ts"] - events[0]["ts"]) / 1000
        assert 0.5 <= waited_s <= 1.5
        await wait_until(lambda: device.acks_sent == 1, timeout=5, what="the late ack")
        service = hub.runtime.commands
        await wait_until(lambda: service.counters.late_acks == 1, timeout=5)
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            logged = (await http.get("/api/commands/late1")).json()
            metrics = (await http.get("/metrics")).text
    assert logged["status"] == "timeout"
    assert logged["late_ack"]["ok"] is True and "acked" not in logged["stages"]
    assert "fieldlink_command_acks_late_total 1.0" in metrics


async def test_invalid_and_unknown_commands_are_rejected(hub) -> None:  # type: ignore[no-untyped-def]
    async with ws_client(hub.ws_url, additional_headers=hub.auth) as ws, httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        await ws.send({"type": "command", "id": "bad1", "device": "x", "action": "1nope"})
        refused = await ws.recv_until(lambda m: m.get("type") == "command")
        assert refused == {"type": "command", "status": "rejected", "reason": "invalid_action",
                           "id": "bad1", "error": refused["error"]}
        await ws.send({"type": "command", "id": "ghost1", "device": "ghost", "action": "idle"})
        events = await command_events(ws, "ghost1")
        assert events[-1]["status"] == "rejected" and events[-1]["reason"] == "unknown_device"
        await ws.send({"type": "command", "id": "ghost1", "device": "ghost", "action": "idle"})
        dup = await ws.recv_until(lambda m: m.get("type") == "command" and "channel" not in m)
        assert dup["reason"] == "duplicate_id"
        assert (await http.post("/api/telemetry", json={"device_id": "real1", "v": 1})).is_success
        too_long = await http.post("/api/devices/real1/commands",
                                   json={"action": "idle", "timeout_ms": 10_000_000})
        unknown = await http.post("/api/devices/ghost/commands", json={"action": "idle"})
        missing = await http.get("/api/commands/nope")
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "invalid_timeout"
    assert unknown.status_code == 404
    assert missing.status_code == 404


async def test_offline_device_fails_at_once_unless_queued(hub) -> None:  # type: ignore[no-untyped-def]
    async with fleet(1, hub) as (device,):
        pass  # connected, registered, then stopped: it published "offline"
    runtime = hub.runtime
    await wait_until(lambda: runtime.presence.status(device.id) == "offline", timeout=5)
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        started = time.monotonic()
        at_once = await http.post(f"/api/devices/{device.id}/commands", json={"action": "idle"})
        assert time.monotonic() - started < 1.0
        assert at_once.json()["status"] == "failed" and at_once.json()["reason"] == "offline"
        queued = await http.post(f"/api/devices/{device.id}/commands",
                                 json={"action": "charge", "queue": True, "queue_ms": 20_000})
        assert queued.status_code == 202 and queued.json()["status"] == "pending"
        async with fleet(1, hub) as (back,):
            await wait_until(lambda: back.acks_sent == 1, timeout=10, what="queued command")
            command_id = queued.json()["id"]
            await wait_until(lambda: runtime.commands.counters.terminal >= 2, timeout=5)
            done = (await http.get(f"/api/commands/{command_id}")).json()
    assert done["status"] == "acked" and back.model.battery.mode == "charge"


async def test_ack_handled_by_another_instance_reaches_the_requester(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    common = dict(mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                  mqtt_shared_group="hubs")
    async with make_hub(**common, data_dir=tmp_path / "a") as a, \
            make_hub(**common, data_dir=tmp_path / "b") as b, \
            fleet(4, a, mqtt_url=mosquitto.url) as devices, ws_client(a.ws_url, additional_headers=a.auth) as ws:
        ids = [f"x{i}" for i in range(12)]
        for i, command_id in enumerate(ids):
            await ws.send({"type": "command", "id": command_id,
                           "device": devices[i % 4].id, "action": "idle"})
        outcomes: dict[str, str] = {}
        while len(outcomes) < len(ids):  # events of all twelve interleave on one socket
            event = await ws.recv_until(lambda m: m.get("type") == "command"
                                        and m.get("status") in TERMINAL, timeout=15)
            assert event["id"] not in outcomes, "one terminal event per command"
            outcomes[event["id"]] = event["status"]
    assert set(outcomes.values()) == {"acked"}
    handled = (a.runtime.commands.counters.acks, b.runtime.commands.counters.acks)
    print(f"acks handled by instance a/b: {handled}")
    assert handled[1] > 0, "the shared subscription gave instance b some acks"


async def test_hub_restart_while_commands_are_pending(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, tmp_path: Path
) -> None:
    """Two commands are out when the hub stops. One device answers while the hub is down (the
    broker keeps the ack for the hub's session); the other never answers (the restarted hub's
    sweeper times it out). Each ends in exactly one terminal state."""
    settings = dict(mqtt_url=mosquitto.url, data_dir=tmp_path / "hub")
    async with AsyncExitStack() as devices_stack:
        async with make_hub(**settings) as hub:
            (answering,) = await devices_stack.enter_async_context(
                fleet(1, hub, ack_delay_s=1.0))
            (silent,) = await devices_stack.enter_async_context(
                fleet(1, hub, first=2, command_behavior="ignore"))
            async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
                r1 = await http.post(f"/api/devices/{answering.id}/commands",
                                     json={"id": "r1", "action": "idle", "timeout_ms": 8000})
                r2 = await http.post(f"/api/devices/{silent.id}/commands",
                                     json={"id": "r2", "action": "idle", "timeout_ms": 1500})
            assert r1.json()["status"] == "sent" and r2.json()["status"] == "sent"
        # The hub is down now; the device answers into the broker.
        await wait_until(lambda: answering.acks_sent == 1, timeout=5, what="ack while down")
        await asyncio.sleep(1.0)  # r2's deadline passes while no hub runs
        async with make_hub(**settings) as hub, \
                httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            async def terminal(command_id: str) -> dict[str, Any]:
                deadline = time.monotonic() + 10
                while True:
                    body = dict((await http.get(f"/api/commands/{command_id}")).json())
                    if body["status"] in TERMINAL or time.monotonic() > deadline:
                        return body
                    await asyncio.sleep(0.05)

            first, second = await terminal("r1"), await terminal("r2")
    assert first["status"] == "acked", first
    assert second["status"] == "timeout", second
    for body in (first, second):
        assert len(set(body["stages"]) & TERMINAL) == 1


async def test_100_concurrent_commands_with_a_device_drop_and_a_broker_restart(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, tmp_path: Path
) -> None:
    """100 commands in flight to 100 devices that answer after 1 s; meanwhile one device drops
    off and the broker restarts. Every command ends in exactly one terminal state, and a
    subscriber of `all` sees exactly one terminal event per command."""
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(make_hub(mqtt_url=mosquitto.url,
                                                       data_dir=tmp_path / "hub"))
        devices = await stack.enter_async_context(fleet(100, hub, ack_delay_s=1.0))
        watcher = await stack.enter_async_context(ws_client(hub.ws_url, additional_headers=hub.auth))
        await watcher.subscribe("all")
        requester = await stack.enter_async_context(ws_client(hub.ws_url, additional_headers=hub.auth))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        for i in range(100):
            await requester.send({"type": "command", "id": f"k{i:03d}", "device": devices[i].id,
                                  "action": "setpoint", "params": {"kw": i - 50},
                                  "timeout_ms": 5000})
        service = hub.runtime.commands
        await wait_until(lambda: service.counters.sent == 100, timeout=10, what="all sent")
        devices[7].client.disconnect()  # a device drops off before answering
        devices[7].client.loop_stop()
        await asyncio.to_thread(mosquitto.stop)  # answers are due while the broker is away
        await asyncio.to_thread(mosquitto.start)

        async def terminal_events(ws: WsClient, channel_prefix: str) -> dict[str, list[str]]:
            seen: dict[str, list[str]] = {}
            while len(seen) < 100:
                event = await ws.recv_until(lambda m: m.get("type") == "command"
                                            and m["channel"].startswith(channel_prefix)
                                            and m["status"] in TERMINAL, timeout=15)
                seen.setdefault(event["id"], []).append(event["status"])
            return seen

        to_requester = await terminal_events(requester, "command:")
        to_all = await terminal_events(watcher, "all")
        logged = [(await http.get(f"/api/commands/k{i:03d}")).json() for i in range(100)]
    outcomes: dict[str, int] = {}
    for body in logged:
        assert body["status"] in TERMINAL, body
        assert len(set(body["stages"]) & TERMINAL) == 1, body
        key = f"{body['status']}/{body.get('reason')}"
        outcomes[key] = outcomes.get(key, 0) + 1
    print(f"100 commands: {outcomes}; acks sent by devices "
          f"{sum(d.acks_sent for d in devices)}, received by the hub "
          f"{hub.runtime.commands.counters.acks}, control messages received by devices "
          f"{sum(len(d.commands_received) for d in devices)}")
    assert all(len(v) == 1 for v in to_requester.values()) and len(to_requester) == 100
    assert all(len(v) == 1 for v in to_all.values()) and len(to_all) == 100
    assert {k: v[0] for k, v in to_requester.items()} == {b["id"]: b["status"] for b in logged}
    assert logged[7]["status"] == "timeout"
    assert outcomes.get("acked/None", 0) >= 90, outcomes
