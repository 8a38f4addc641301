"""The ingest hot path in one process, without sockets: what one record costs from the MQTT
listener's route to the hub's flush (validation, dedupe, registry, cache, presence, bus, alert
rules, rendering for 10 native clients), with N alert rules watching every device.

    python bench/ingest_micro.py                 # 0 and 10 rules
    python bench/ingest_micro.py --rules 0 10 50 --runs 7

Each run routes 90,000 records of 1,000 devices (memory store, in-process bus); the result is
the fastest of ``--runs`` runs in microseconds per record (the minimum is the least disturbed
by other work on the machine). Rules never fire (thresholds the readings do not reach), so this
is the steady cost of evaluating them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fieldlink.app.settings import Settings  # noqa: E402
from fieldlink.app.wiring import build  # noqa: E402
from fieldlink.core.access import DEFAULT_TENANT  # noqa: E402

DEVICES, RECORDS, CLIENTS = 1000, 18_000, 10


class CountingMember:
    """A hub member that only counts the bytes written to it."""

    def __init__(self, renderer: Any) -> None:
        self.client_id = "bench"
        self.renderer = renderer
        self.principal = None
        self.subscriptions: dict[str, Any] = {}
        self.out: list[bytes] = []
        self.closing = False
        self.paused_since = None
        self.backlog: dict[Any, bytes] = {}
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def buffered_bytes(self) -> int:
        return 0

    def kick(self, code: int, reason: str) -> None:
        pass

    def send(self, payload: bytes) -> None:
        pass


def rule(i: int) -> dict[str, Any]:
    """The same rules as ``bench/run.py --rules``: never reached by the readings."""
    if i % 2:
        return {"metric": "soc", "op": "<", "clear": 20,
                "levels": [{"name": "warning", "threshold": 10 - i * 0.1}]}
    return {"metric": "power_kw", "op": ">", "clear": 900,
            "levels": [{"name": "warning", "threshold": 1000 + i}]}


async def measure(rules: int, runs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fieldlink-micro-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url="memory://",
                            mqtt_url="mqtt://127.0.0.1:1", mqtt_device_rate_per_s=0)
        runtime = build(settings)
        await runtime.store.start()
        await runtime.alerts.load()
        runtime.alerts.start()
        while not runtime.alerts.leader:  # the lease is free: it is ours at the first try
            await asyncio.sleep(0.01)
        for i in range(rules):
            await runtime.alerts.put_rule(rule(i), DEFAULT_TENANT)
        members = [CountingMember(runtime.native.renderer) for _ in range(CLIENTS)]
        for member in members:
            runtime.hub.add(member)  # type: ignore[arg-type]
            runtime.hub.join(member, "all")  # type: ignore[arg-type]
        route = runtime.listener._route
        topics = [f"edge/d{i % DEVICES:04d}/telemetry" for i in range(RECORDS)]
        seq = 0

        def payloads() -> list[bytes]:
            nonlocal seq
            out = []
            for _ in range(RECORDS):
                seq += 1
                out.append(orjson.dumps({"seq": seq, "power_kw": 3.25, "soc": 55.5, "t": seq}))
            return out

        for i, payload in enumerate(payloads()[:2000]):  # warm up: every device registered
            route(topics[i], payload)
        runtime.hub.flush()
        best = float("inf")
        for _ in range(runs):
            batch = payloads()
            started = time.perf_counter()
            for i, payload in enumerate(batch):
                route(topics[i], payload)
                if i % 200 == 0:
                    runtime.hub.flush()
            runtime.hub.flush()
            best = min(best, (time.perf_counter() - started) / RECORDS * 1e6)
            await asyncio.sleep(0)  # let the store writer take the batch
        evaluated = runtime.alerts.counters.evaluated
        await runtime.alerts.close()
        if rules and not evaluated:
            raise RuntimeError("the rules were never evaluated")
        return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results = {}
    for n in args.rules:
        results[n] = round(await measure(n, args.runs), 2)
        print(f"{n:>3} rules: {results[n]:.2f} us/record (best of {args.runs})", flush=True)
    print(json.dumps({"us_per_record": results}))


if __name__ == "__main__":
    asyncio.run(main())
