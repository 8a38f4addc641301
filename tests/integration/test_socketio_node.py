"""The gas-sensor seed's browser client (scenario 003), as the user wrote it, on Node.js with the
real socket.io-client (tests/node/seed_gas_client.mjs), against hubs the tests start: the
snapshot on subscribe, live data within 100 ms of the MQTT publish, reconnection by itself
across a hub restart on the same port, and the refusals (no token, a bad token, another
tenant's device)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldlink.mqtt.broker import free_port
from tests.integration.test_security import two_tenants
from tests.support.clients import paho_client, publish, wait_until

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "node" / "seed_gas_client.mjs"
ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LATENCY_BUDGET_MS = 100.0  # scenario 003, "Performance Metrics": < 100 ms from MQTT to frontend


class SeedClient:
    """The Node process: its JSON event lines as they arrive, and commands on its stdin."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.ended = False
        self._taken: set[int] = set()
        self._changed = asyncio.Condition()
        self._pump = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "stdout", "line": line.decode(errors="replace")}
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def next(self, name: str, where: Callable[[dict[str, Any]], bool] | None = None,
                   within: float = 10.0) -> dict[str, Any]:
        """The earliest ``name`` event (matching ``where``) that ``next`` has not returned yet,
        waiting for it. Events of one name come in the order they arrived; events of other
        names around it do not matter."""
        found: list[dict[str, Any]] = []

        def match() -> bool:
            for i, event in enumerate(self.events):
                if i not in self._taken and event["event"] == name and (
                        where is None or where(event)):
                    self._taken.add(i)
                    found.append(event)
                    return True
            return self.ended

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(match), within)
            except TimeoutError:
                raise TimeoutError(f"no {name!r} event within {within} s; got "
                                   f"{[e['event'] for e in self.events]}") from None
        if not found:
            raise AssertionError(f"the client exited ({self.process.returncode}) before a "
                                 f"{name!r} event; got {[e['event'] for e in self.events]}")
        return found[0]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    async def command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def emit(self, name: str, *args: Any, ack: bool = False) -> None:
        await self.command(cmd="emit", name=name, args=list(args), ack=ack)

    async def close(self) -> int:
        """The seed's onUnmounted (unsubscribe:device, disconnect); the process's exit code."""
        await self.command(cmd="close")
        code = await asyncio.wait_for(self.process.wait(), 10)
        await asyncio.wait_for(self._pump, 5)
        return code


def node_and_log(log_dir: Path, device_id: str) -> tuple[str, Path]:
    """Debian's node, and a fresh file for the client's stderr."""
    node = shutil.which("node")
    assert node is not None, "Node.js is missing: run scripts/setup.sh test"
    assert (ROOT / "tests" / "node" / "node_modules" / "socket.io-client").is_dir(), \
        "tests/node/node_modules is missing: run scripts/setup.sh test"
    log_dir.mkdir(parents=True, exist_ok=True)
    return node, log_dir / f"node-{device_id}-{time.monotonic_ns()}.stderr"


@asynccontextmanager
async def seed_client(url: str, device_id: str, token: str | None,
                      log_dir: Path) -> AsyncIterator[SeedClient]:
    """The seed's client for ``device_id`` (token: FIELDLINK_TOKEN, or none)."""
    node, stderr_path = node_and_log(log_dir, device_id)
    env = {k: v for k, v in os.environ.items() if k != "FIELDLINK_TOKEN"}
    if token is not None:
        env["FIELDLINK_TOKEN"] = token
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            node, str(CLIENT), url, device_id, cwd=ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr)
    client = SeedClient(process)
    try:
        yield client
    finally:
        if process.returncode is None:
            process.kill()  # this test's own child, by its PID
            await process.wait()
        await asyncio.wait_for(client._pump, 5)
        errors = stderr_path.read_text(errors="replace")
        print(f"--- node client {device_id}: {len(client.events)} events"
              + (f"; stderr:\n{errors}" if errors.strip() else ""))
        for event in client.events:
            print(f"  {json.dumps(event)[:300]}")


def telemetry_topic(device_id: str) -> str:
    return f"edge/{device_id}/telemetry"


def by_connection(events: list[dict[str, Any]], name: str) -> list[list[dict[str, Any]]]:
    """``name`` events grouped by the connection ('connect' event) they arrived on."""
    groups: list[list[dict[str, Any]]] = []
    for event in events:
        if event["event"] == "connect":
            groups.append([])
        elif event["event"] == name:
            assert groups, f"{name} before any connect"
            groups[-1].append(event)
    return groups


async def test_seed_client_gets_snapshot_live_data_in_100_ms_and_reconnects_after_a_hub_restart(  # type: ignore[no-untyped-def]
    make_hub, tmp_path: Path
) -> None:
    device = "OTSM-0114"
    http_port, data_dir = free_port(), tmp_path / "hub"
    latencies: list[float] = []
    async with AsyncExitStack() as stack:
        async with make_hub(http_port=http_port, data_dir=data_dir) as hub, \
                paho_client(hub.mqtt_port) as mqtt:
            await publish(mqtt, telemetry_topic(device), {"seq": 1, "gas_ppm": 12.5})
            await wait_until(lambda: device in hub.runtime.registry.devices,
                             timeout=5, what="device registered")
            client = await stack.enter_async_context(
                seed_client(hub.http_url, device, hub.token, tmp_path))
            first = await client.next("connect")
            assert first["transport"] == "websocket", first
            hello = await client.next("connected")
            assert hello["args"] == [{"clientId": first["id"]}]
            snapshot = await client.next("device:data")
            assert snapshot["deviceId"] == device
            assert snapshot["data"]["device_id"] == device
            assert snapshot["data"]["seq"] == 1 and snapshot["data"]["gas_ppm"] == 12.5
            assert ISO_MS_Z.fullmatch(snapshot["timestamp"]), snapshot["timestamp"]

            for seq in range(2, 22):
                sent_ms = time.time() * 1000
                await publish(mqtt, telemetry_topic(device),
                              {"seq": seq, "gas_ppm": seq / 2, "sent_ms": sent_ms})
                got = await client.next("device:data",
                                        lambda e, s=seq: e["data"].get("seq") == s)
                assert got["data"]["gas_ppm"] == seq / 2 and got["data"]["sent_ms"] == sent_ms
                latencies.append(got["t"] - got["data"]["sent_ms"])

        # The hub is gone: the client notices, and keeps trying by itself.
        gone = await client.next("disconnect")
        assert gone["active"] is True, gone  # reconnection is under way (not a server kick)
        assert gone["reason"] in ("transport close", "transport error", "ping timeout"), gone

        async with make_hub(http_port=http_port, data_dir=data_dir) as hub:
            assert hub.http_port == http_port
            back = await client.next("connect", within=30)
            assert back["id"] != first["id"]
            assert (await client.next("connected"))["args"] == [{"clientId": back["id"]}]
            # The seed re-subscribed in its 'connect' handler; the ack of a no-op emitted after
            # it shows the server has handled that subscribe (events are handled in order).
            await client.emit("unsubscribe:device", "not-subscribed", ack=True)
            assert (await client.next("ack"))["args"] == [{"ok": True}]
            async with paho_client(hub.mqtt_port) as mqtt:
                await publish(mqtt, telemetry_topic(device), {"seq": 22, "gas_ppm": 99.0})
                live = await client.next("device:data", lambda e: e["data"].get("seq") == 22)
            assert live["data"]["gas_ppm"] == 99.0
            code = await client.close()
        assert code == 0
        assert client.named("closed"), "the client ran its unmount"

    print(f"MQTT publish -> socket.io-client device:data latency over {len(latencies)} "
          f"publishes: min {min(latencies):.1f} ms, median {statistics.median(latencies):.1f} ms,"
          f" max {max(latencies):.1f} ms; reconnect attempts "
          f"{len(client.named('manager:reconnect_attempt'))}")
    # Both clocks are the machine's wall clock; Date.now() has whole milliseconds.
    assert all(-1.0 < ms < LATENCY_BUDGET_MS for ms in latencies), latencies
    # Nothing twice: per connection, each reading arrived once.
    for group in by_connection(client.events, "device:data"):
        seqs = Counter(e["data"]["seq"] for e in group)
        assert all(n == 1 for n in seqs.values()), seqs
    per_connection = [[e["data"]["seq"] for e in g]
                      for g in by_connection(client.events, "device:data")]
    assert per_connection[0] == list(range(1, 22)), per_connection
    # After the restart: the re-subscribe's snapshot is the last stored reading (seq 21: the
    # restarted hub warms its latest state from the store), then the live one.
    assert per_connection[1] == [21, 22], per_connection
    assert len(client.named("connect")) == 2
    assert not client.named("connect_error") or all(
        e["message"] in ("websocket error", "xhr poll error", "timeout")
        for e in client.named("connect_error")), client.named("connect_error")
    assert not client.named("fieldlink:error")


@pytest.mark.parametrize(("token", "code"),
                         [(None, "missing_token"), ("not-a-jwt", "invalid_token")])
async def test_seed_client_without_a_valid_token_gets_connect_error(  # type: ignore[no-untyped-def]
    hub, tmp_path: Path, token: str | None, code: str
) -> None:
    async with paho_client(hub.mqtt_port) as mqtt:
        await publish(mqtt, telemetry_topic("gas-1"), {"seq": 1, "gas_ppm": 3.0})
    await wait_until(lambda: "gas-1" in hub.runtime.registry.devices, timeout=5)
    async with seed_client(hub.http_url, "gas-1", token, tmp_path) as client:
        refused = await client.next("connect_error")
        exit_code = await client.close()
    print(f"refused: {refused}")
    assert refused["data"] == {"code": code}
    assert refused["active"] is False  # a refused CONNECT is final: no retry loop
    if code == "missing_token":
        assert refused["message"] == "authentication required: connect with auth: {token}"
    else:
        assert refused["message"] and "authentication required" not in refused["message"]
    assert exit_code == 0
    names = [e["event"] for e in client.events]
    assert names.count("connect_error") == 1, names
    assert "connect" not in names and "device:data" not in names and "connected" not in names
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        metrics = (await http.get("/metrics")).text
    assert f'fieldlink_socketio_connects_refused_total{{reason="{code}"}} 1.0' in metrics


async def test_seed_client_cannot_subscribe_to_another_tenants_device(  # type: ignore[no-untyped-def]
    hub, tmp_path: Path
) -> None:
    """alice (tenant acme) runs the seed for bolt's b-dev: refused, and none of b-dev's data
    reaches her, while bob (bolt) gets it with the same client."""
    t = await two_tenants(hub)  # a-dev (acme) and b-dev (bolt), one reading each (seq 1)
    async with seed_client(hub.http_url, "b-dev", t["alice"], tmp_path / "alice") as alice, \
            seed_client(hub.http_url, "b-dev", t["bob"], tmp_path / "bob") as bob:
        await alice.next("connect")
        refused = await alice.next("fieldlink:error")
        assert refused["args"] == [{"error": "not allowed to subscribe to this channel",
                                    "code": "forbidden", "event": "subscribe:device"}]
        await alice.emit("subscribe:device", "b-dev", ack=True)
        acked = await alice.next("ack")
        assert acked["args"] == [{"error": "not allowed to subscribe to this channel",
                                  "code": "forbidden", "event": "subscribe:device"}]
        # An unknown device is refused the same way: the refusal says nothing about existence.
        await alice.emit("subscribe:device", "no-such-device", ack=True)
        assert (await alice.next("ack"))["args"] == acked["args"]
        # Her own device works on the same connection.
        await alice.emit("subscribe:device", "a-dev", ack=True)
        assert (await alice.next("ack"))["args"] == [{"ok": True}]
        own = await alice.next("device:data")
        assert own["deviceId"] == "a-dev" and own["data"]["seq"] == 1

        await bob.next("connect")
        bobs = await bob.next("device:data")
        assert bobs["deviceId"] == "b-dev" and bobs["data"]["seq"] == 1

        async with paho_client(hub.mqtt_port) as mqtt:
            await publish(mqtt, telemetry_topic("b-dev"), {"seq": 2, "v": 2.0})
            await publish(mqtt, telemetry_topic("a-dev"), {"seq": 2, "v": 2.0})
        # Both publishes have been fanned out once bob has b-dev's and alice has a-dev's.
        theirs = await bob.next("device:data")
        assert theirs["deviceId"] == "b-dev" and theirs["data"]["seq"] == 2
        mine = await alice.next("device:data", lambda e: e["deviceId"] == "a-dev")
        assert mine["data"]["seq"] == 2
        assert await alice.close() == 0
        assert await bob.close() == 0
    leaked = [e for e in alice.events if "b-dev" in json.dumps(e)]
    assert leaked == [], leaked
    assert len(alice.named("fieldlink:error")) == 1, alice.named("fieldlink:error")
    assert not bob.named("fieldlink:error") and not bob.named("connect_error")
