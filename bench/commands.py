"""Command round trip: a WebSocket client sends commands to simulated devices (paho, ack at
once) through a running hub and times send -> ``acked`` event.

    python bench/commands.py --http-port P --mqtt-port M [--devices 50] [--commands 2000]
        [--concurrency 20]

Prints one JSON object: p50/p99/max in ms, commands/s, and the outcome counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fieldlink.simulator.model import NodeModel, device_id  # noqa: E402
from fieldlink.simulator.runner import SimulatedDevice  # noqa: E402


async def run(http_port: int, mqtt_port: int, n_devices: int, n_commands: int,
              concurrency: int, token: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}",
                                 headers=headers) as http:
        devices = [SimulatedDevice(NodeModel.create(device_id(i + 1, "cmd"), seed=1),
                                   mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}", http=http)
                   for i in range(n_devices)]
        for d in devices:
            d.start()
        deadline = time.monotonic() + 30
        while True:
            known = {x["device_id"] for x in (await http.get("/api/devices")).json()["devices"]}
            if all(d.id in known for d in devices) and all(d.mqtt_connected for d in devices):
                break
            assert time.monotonic() < deadline, "devices did not register"
            await asyncio.sleep(0.1)
        run_id = f"{time.time_ns() % 10**9:x}"
        started: dict[str, float] = {}
        took: list[float] = []
        outcomes: dict[str, int] = {}
        done = asyncio.Event()
        slots = asyncio.Semaphore(concurrency)
        async with connect(f"ws://127.0.0.1:{http_port}/ws", max_size=None,
                           additional_headers=headers) as ws:
            await ws.recv()  # connected

            async def reader() -> None:
                async for frame in ws:
                    messages = orjson.loads(frame)
                    for m in messages if isinstance(messages, list) else [messages]:
                        if m.get("type") != "command" or m.get("status") not in (
                                "acked", "failed", "timeout", "rejected", "expired"):
                            continue
                        key = m["status"] + (f"/{m['reason']}" if m.get("reason") else "")
                        outcomes[key] = outcomes.get(key, 0) + 1
                        took.append((time.perf_counter() - started.pop(m["id"])) * 1000)
                        slots.release()
                        if len(took) == n_commands:
                            done.set()
                            return

            reading = asyncio.create_task(reader())
            t0 = time.perf_counter()
            for i in range(n_commands):
                await slots.acquire()
                command_id = f"b{run_id}-{i}"
                started[command_id] = time.perf_counter()
                await ws.send(orjson.dumps({
                    "type": "command", "id": command_id, "device": devices[i % n_devices].id,
                    "action": "setpoint", "params": {"kw": (i % 21) - 10}}).decode())
            await asyncio.wait_for(done.wait(), 60)
            elapsed = time.perf_counter() - t0
            reading.cancel()
        for d in devices:
            await d.stop()
    took.sort()
    return {"commands": n_commands, "devices": n_devices, "concurrency": concurrency,
            "per_s": round(n_commands / elapsed), "outcomes": outcomes,
            "p50_ms": round(statistics.median(took), 2),
            "p99_ms": round(took[int(len(took) * 0.99) - 1], 2), "max_ms": round(took[-1], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--commands", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--token", required=True, help="an operator or admin token")
    a = p.parse_args()
    print(json.dumps(asyncio.run(run(a.http_port, a.mqtt_port, a.devices, a.commands,
                                     a.concurrency, a.token))))


if __name__ == "__main__":
    main()
