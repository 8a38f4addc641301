"""`fieldlink up --demo tenants` as a newcomer plays it: the banner gives users, passwords and
devices; a Socket.IO client logged in as a tenant's operator sees only its tenant's devices,
commands one that acks and one that fails, and is refused the other tenant's."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import socketio

from fieldlink.mqtt.broker import free_port
from tests.integration.test_cli import start_up, stop


def read_until(process: subprocess.Popen[str], marker: str, limit: int = 200) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    for _ in range(limit):
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    process.kill()
    raise AssertionError("not in the output:\n" + "".join(lines))


async def test_the_tenants_demo_plays_the_seed_flow(tmp_path: Path) -> None:
    http_port = free_port()
    process = start_up(tmp_path, "--demo", "tenants", "--http-port", str(http_port),
                       "--mqtt-port", str(free_port()))
    try:
        text = await asyncio.to_thread(read_until, process, "refused: other tenant")
        passwords = dict(re.findall(r"user (\w+) .* password (\S+)", text))
        assert set(passwords) == {"alice", "ann", "bob"}, text
        base = f"http://127.0.0.1:{http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            login = await http.post("/api/auth/token",
                                    json={"username": "alice", "password": passwords["alice"]})
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
        seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sio = socketio.AsyncClient()
        sio.on("device:telemetry", seen.put_nowait)
        await sio.connect(base, auth={"token": token}, transports=["websocket"])
        try:
            devices = set()
            while len(devices) < 3:  # acme's three devices report every 2 s
                devices.add((await asyncio.wait_for(seen.get(), 10))["deviceId"])
            assert devices == {"acme-001", "acme-002", "acme-003"}
            acked = await sio.call("send:command", {"deviceId": "acme-001", "action": "idle",
                                                    "params": {}}, timeout=15)
            assert acked["success"] is True and acked["status"] == "acked", acked
            failed = await sio.call("send:command", {"deviceId": "acme-002", "action": "idle",
                                                     "params": {}}, timeout=15)
            assert failed["status"] == "failed" and failed["error"], failed
            other = await sio.call("send:command", {"deviceId": "bolt-001", "action": "idle",
                                                    "params": {}}, timeout=15)
            assert other["code"] == "unknown_device", other
            refused = await sio.call("subscribe", {"deviceId": "bolt-001"}, timeout=5)
            assert refused["code"] == "forbidden", refused
            while not seen.empty():  # nothing of bolt's ever arrived
                assert seen.get_nowait()["deviceId"].startswith("acme-")
        finally:
            await sio.disconnect()
    finally:
        assert stop(process) == 0
