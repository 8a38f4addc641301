"""Telemetry load for the dashboard's performance test: N devices each publishing R records a
second through paho (QoS 0, one connection), in its own process so that the publisher does not
share the test's event loop or GIL with the hub.

    python -m tests.e2e.flood --port P --devices 200 --rate-hz 5 --duration 30

Each record looks like a battery node's (power_kw, soc, freq, temp, with values that move so
every row of the page changes). Prints one JSON line at the end: {"sent", "elapsed_s", "rate"}.
Stops early on SIGTERM (prints the line all the same).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def run(
    port: int, devices: int, rate_hz: float, duration_s: float, prefix: str
) -> dict[str, float]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{time.time_ns()}")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    topics = [f"edge/{prefix}-{i:03d}/telemetry" for i in range(devices)]
    seqs = [0] * devices
    total_rate = devices * rate_hz
    sent = 0
    index = 0
    start = time.perf_counter()
    while not stop and time.perf_counter() - start < duration_s:
        due = int((time.perf_counter() - start) * total_rate) + 1
        now_ms = int(time.time() * 1000)
        while sent < due:
            i = index
            index = (index + 1) % devices
            seqs[i] += 1
            phase = seqs[i] / (rate_hz * 20) + i
            record = {
                "seq": seqs[i],
                "ts": now_ms,
                "power_kw": round(10 * math.sin(phase), 3),
                "soc": round(50 + 30 * math.sin(phase / 7), 2),
                "freq": round(50 + 0.05 * math.sin(phase * 3), 3),
                "temp": round(25 + 5 * math.sin(phase / 3), 2),
            }
            client.publish(topics[i], json.dumps(record), qos=0)
            sent += 1
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return {"sent": sent, "elapsed_s": round(elapsed, 3), "rate": round(sent / elapsed, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--rate-hz", type=float, default=5.0, help="records per second per device")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--prefix", default="load")
    a = p.parse_args()
    print(json.dumps(run(a.port, a.devices, a.rate_hz, a.duration, a.prefix)), flush=True)


if __name__ == "__main__":
    main()
