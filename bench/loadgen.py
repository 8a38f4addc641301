"""MQTT load generator: raw MQTT 3.1.1 QoS 0 PUBLISH packets over a few TCP connections,
paced in 5 ms slices. Each payload carries the device's ``seq`` and the send time ``t`` (ns).

    python bench/loadgen.py --port P --devices 100 --rate 1000 --duration 10 [--connections 4]

Prints one JSON line: {"sent": N, "elapsed_s": ..., "rate": ..., "per_device": {...}}.
Several devices share a connection (the topic carries the device id); the hub does not care.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload
    return b"\x30" + varint(len(body)) + body


async def open_connection(port: int, client_id: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet(client_id))
    connack = await reader.readexactly(4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"CONNACK refused: {connack!r}")
    return writer


async def run(port: int, devices: list[str], rate: float, duration: float, connections: int,
              prefix: str, pad: int, seq_start: int) -> dict[str, object]:
    writers = [await open_connection(port, f"bench-pub-{i}-{time.time_ns()}")
               for i in range(connections)]
    topics = [f"{prefix}/{d}/telemetry".encode() for d in devices]
    # Sequences continue across runs (--seq-start): the hub stores a (device, seq) once.
    seqs = [seq_start - 1] * len(devices)
    filler = b"x" * pad
    slice_s = 0.005
    total = int(rate * duration)
    sent = 0
    device_index = 0
    start = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        n = due - sent
        if n > 0:
            chunks: list[list[bytes]] = [[] for _ in writers]
            now = time.time_ns()
            for k in range(n):
                i = device_index
                device_index = (device_index + 1) % len(devices)
                seqs[i] += 1
                payload = b'{"seq":%d,"t":%d,"power_kw":3.25,"soc":55.5,"pad":"%s"}' % (
                    seqs[i], now, filler)
                chunks[k % len(writers)].append(publish_packet(topics[i], payload))
            for writer, chunk in zip(writers, chunks, strict=True):
                if chunk:
                    writer.write(b"".join(chunk))
            sent = due
            await asyncio.gather(*(w.drain() for w in writers))
        await asyncio.sleep(slice_s)
    elapsed = time.perf_counter() - start
    for writer in writers:
        writer.write(b"\xe0\x00")  # DISCONNECT
        await writer.drain()
        writer.close()
    return {"sent": sent, "elapsed_s": round(elapsed, 3), "rate": round(sent / elapsed),
            "per_device": {d: s - seq_start + 1 for d, s in zip(devices, seqs, strict=True)}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--device-prefix", default="dev")
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--prefix", default="edge")
    p.add_argument("--pad", type=int, default=60, help="payload padding (bytes)")
    p.add_argument("--seq-start", type=int, default=1, help="first seq of every device")
    a = p.parse_args()
    devices = [f"{a.device_prefix}-{i:04d}" for i in range(a.devices)]
    import uvloop

    result = uvloop.run(run(a.port, devices, a.rate, a.duration, a.connections, a.prefix, a.pad, a.seq_start))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
