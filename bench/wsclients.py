"""WebSocket client fleet for the benchmark: N raw connections in one uvloop process.

Each client performs the handshake by hand and subscribes. Latency clients (``--latency-clients``,
default 50, spread evenly over the fleet) parse every frame (a single event or a JSON array of events),
count telemetry events and record end-to-end latency (receive time minus the publisher's ``t``)
in a fixed histogram (100 µs bins up to 10 s). The other clients count telemetry events exactly,
without parsing JSON, by counting ``"type":"telemetry"`` in the byte stream (the bench payloads
are ASCII, so the pattern cannot occur elsewhere), which keeps the fleet cheap enough not to
steal the hub's CPU on a 2-core machine.

    python bench/wsclients.py --port P --clients 1000 --subscribe all
    python bench/wsclients.py --port P --clients 1000 --subscribe per-device:100 --device-prefix dev
    python bench/wsclients.py --port P --clients 1000 --subscribe all --protocol socketio

With ``--protocol socketio`` each client is a Socket.IO v5 client over WebSocket (Engine.IO
v4, ``/socket.io/?EIO=4&transport=websocket``, the token in the handshake's Authorization
header): ``all`` stays in the platform vocabulary (its tenant's room, ``device:telemetry``
events), ``per-device`` emits ``subscribe:device`` with an ack (``device:data`` events). It
answers the server's Engine.IO pings.

Prints READY once every client got its ``subscribed`` reply, then answers commands on stdin:
``stats`` prints one JSON line with counts and latency since the last ``stats`` and resets;
``count`` prints the events received since then without resetting; ``quit`` exits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time

import orjson

BIN_US = 100
BINS = 100_001  # up to 10 s


class Stats:
    def __init__(self) -> None:
        self.hist = [0] * BINS
        self.max_us = 0
        self.events = 0
        self.frames = 0
        self.other = 0

    def summary(self, counts: list[int]) -> dict[str, object]:
        total = sum(self.hist)

        def pct(q: float) -> float | None:
            if not total:
                return None
            rank, acc = q * total, 0
            for i, n in enumerate(self.hist):
                acc += n
                if acc >= rank:
                    return (i + 1) * BIN_US / 1000
            return None

        return {"events": self.events, "frames": self.frames, "other": self.other,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": self.max_us / 1000,
                "counts": counts}


STATS = Stats()
READY = 0
AUTH_HEADER = ""  # "Authorization: Bearer ...\r\n" when --token is given
PATTERN = b'"type":"telemetry"'
PING = b"\x89\x00"
SOCKETIO = False
EIO_PING = b"\x81\x012"  # an unmasked text frame holding the Engine.IO ping packet "2"


def text(payload: bytes) -> bytes:
    return mask(payload)


def mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    header = bytes((0x81, 0x80 | n)) if n < 126 else b"\x81\xfe" + n.to_bytes(2, "big")
    return header + key + masked


class Client(asyncio.Protocol):
    def __init__(self, path: str, channel: str, all_ready: asyncio.Event, n: int,
                 measure: bool) -> None:
        self.measure = measure
        self.tail = b""
        self.path = path
        self.channel = channel
        self.buf = bytearray()
        self.stage = 0  # 0 handshake, 1 waiting for subscribed, 2 streaming
        self.count = 0
        self.all_ready = all_ready
        self.n = n
        self.closed_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{AUTH_HEADER}\r\n"
            .encode())

    def data_received(self, data: bytes) -> None:
        global READY
        if self.stage == 2 and not self.measure:
            chunk = self.tail + data
            self.count += chunk.count(PATTERN)
            STATS.events += chunk.count(PATTERN)
            self.tail = chunk[-(len(PATTERN) - 1):]
            if PING in data:
                self.transport.write(b"\x8a\x80" + os.urandom(4))
            if SOCKETIO and EIO_PING in data:
                self.transport.write(text(b"3"))
            if b"\x88" in data and data.find(b"\x88") == 0:
                self.closed_code = -1
            return
        buf = self.buf
        buf += data
        if self.stage == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[: end + 4]
            self.stage = 1
            if SOCKETIO:
                self.transport.write(text(b"40"))
            else:
                self.transport.write(
                    mask(orjson.dumps({"type": "subscribe", "channel": self.channel}))
                )
        now_ns = time.time_ns()
        stats = STATS
        hist = stats.hist
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b1 = buf[pos + 1] & 0x7F
            header = 2
            if b1 == 126:
                if size - pos < 4:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif b1 == 127:
                if size - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + b1
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1 and SOCKETIO:
                stats.frames += 1
                if self._socketio(bytes(buf[pos + header : end]), now_ns):
                    del buf[:end]
                    return
            elif opcode == 0x1:
                stats.frames += 1
                message = orjson.loads(memoryview(buf)[pos + header : end])
                events = message if isinstance(message, list) else (message,)
                for event in events:
                    if event.get("type") == "telemetry":
                        self.count += 1
                        stats.events += 1
                        lat_us = (now_ns - event["data"]["t"]) // 1000
                        if lat_us > stats.max_us:
                            stats.max_us = lat_us
                        hist[min(max(lat_us, 0) // BIN_US, BINS - 1)] += 1
                    elif event.get("type") == "subscribed" and self.stage == 1:
                        self.stage = 2
                        READY += 1
                        if READY == self.n:
                            self.all_ready.set()
                        if not self.measure:
                            del buf[:end]
                            return
                    else:
                        stats.other += 1
            elif opcode == 0x8:
                self.closed_code = int.from_bytes(buf[pos + header : pos + header + 2], "big")
            elif opcode == 0x9:  # ping -> pong
                self.transport.write(b"\x8a\x80" + os.urandom(4))
            pos = end
        if pos:
            del buf[:pos]

    def _socketio(self, packet: bytes, now_ns: int) -> bool:
        """One Engine.IO packet; True once the client is subscribed and only counts."""
        global READY
        stats = STATS
        if packet == b"2":
            self.transport.write(text(b"3"))
        elif packet.startswith(b'42["device:'):
            name, payload = orjson.loads(packet[2:])
            if PATTERN_NAME in name:
                self.count += 1
                stats.events += 1
                lat_us = (now_ns - payload["data"]["t"]) // 1000
                if lat_us > stats.max_us:
                    stats.max_us = lat_us
                stats.hist[min(max(lat_us, 0) // BIN_US, BINS - 1)] += 1
            else:
                stats.other += 1
        elif self.stage == 1 and (
            packet.startswith(b'42["connected"') and self.channel == "all"
            or packet.startswith(b"431[")
        ):
            self.stage = 2
            READY += 1
            if READY == self.n:
                self.all_ready.set()
            return not self.measure
        elif self.stage == 1 and packet.startswith(b"40{") and self.channel != "all":
            device = self.channel.split(":", 1)[1]
            self.transport.write(text(b'421["subscribe:device",' + orjson.dumps(device) + b"]"))
        else:
            stats.other += 1
        return False


PATTERN_NAME = "telemetry"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", required=True,
                   help="hub port, or several separated by commas (clients spread round-robin)")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--token", default="", help="bearer token for the handshake")
    p.add_argument("--subscribe", default="all", help="'all' or 'per-device:D'")
    p.add_argument("--device-prefix", default="dev")
    p.add_argument("--path", default="/ws")
    p.add_argument("--protocol", default="native", choices=["native", "socketio"])
    p.add_argument("--latency-clients", type=int, default=50,
                   help="clients that parse every frame and measure latency")
    a = p.parse_args()
    ports = [int(x) for x in str(a.port).split(",")]
    global AUTH_HEADER, SOCKETIO, PATTERN, PATTERN_NAME
    AUTH_HEADER = f"Authorization: Bearer {a.token}\r\n" if a.token else ""
    path = a.path
    if a.protocol == "socketio":
        SOCKETIO = True
        path = "/socket.io/?EIO=4&transport=websocket"
        PATTERN_NAME = "device:telemetry" if a.subscribe == "all" else "device:data"
        PATTERN = b'42["' + PATTERN_NAME.encode() + b'"'

    loop = asyncio.get_running_loop()
    all_ready = asyncio.Event()
    clients: list[Client] = []
    # Latency clients are spread over the fleet (every ``spread``-th connection): the hub
    # writes to an audience's members in set order, so the first N connections would measure
    # one end of every flush only.
    spread = max(1, a.clients // max(1, a.latency_clients))
    for i in range(a.clients):
        if a.subscribe == "all":
            channel = "all"
        else:
            devices = int(a.subscribe.split(":")[1])
            channel = f"device:{a.device_prefix}-{i % devices:04d}"
        _, proto = await loop.create_connection(
            lambda ch=channel, m=i % spread == 0 and i // spread < a.latency_clients: Client(
                path, ch, all_ready, a.clients, m),
            "127.0.0.1", ports[i % len(ports)])
        clients.append(proto)
    await asyncio.wait_for(all_ready.wait(), 60)
    print("READY", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    global STATS
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "count":
            print(json.dumps({"events": sum(c.count for c in clients)}), flush=True)
        elif line == "stats":
            counts = [c.count for c in clients]
            closed = sum(1 for c in clients if c.closed_code is not None)
            summary = STATS.summary(counts)
            summary["closed"] = closed
            print(json.dumps(summary), flush=True)
            STATS = Stats()
            for c in clients:
                c.count = 0
        elif line in ("quit", ""):
            for c in clients:
                c.transport.close()
            return


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
