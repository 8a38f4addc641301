"""Synthetic WebSocket server for the self-check: accepts clients, answers the handshake and
``subscribe``, then sends telemetry events to every client as fast as asked, batched like the
hub does (one array frame per tick), so the client fleet can be measured alone.

    python bench/blaster.py --port P --clients 1000 --rate 500 --batch 5 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import time

from fieldlink.gateway.frames import text_frame as frame

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B41"


class Conn(asyncio.Protocol):
    members: list[Conn] = []
    subscribed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.open = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            if b"\r\n\r\n" not in self.buf:
                return
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            self.open = True
        if self.buf:  # the subscribe frame: answer once, ignore its content
            self.buf = b""
            self.transport.write(frame(b'{"type":"subscribed","channel":"all","seq":0,"snapshot":{}}'))
            Conn.members.append(self)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=500, help="events per second per client")
    p.add_argument("--batch", type=int, default=5, help="events per frame")
    p.add_argument("--duration", type=float, default=10)
    a = p.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", a.port)
    print("LISTENING", flush=True)
    while len(Conn.members) < a.clients:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    sent = 0
    start = time.perf_counter()
    seq = 0
    while time.perf_counter() - start < a.duration:
        due = int((time.perf_counter() - start) * a.rate) - sent
        if due >= a.batch:
            now = time.time_ns()
            events = []
            for _ in range(due):
                seq += 1
                events.append(b'{"type":"telemetry","channel":"all","seq":%d,"data":{"device_id":"d",'
                              b'"ts":1,"t":%d,"power_kw":3.25,"soc":55.5}}' % (seq, now))
            blob = frame(b"[" + b",".join(events) + b"]")
            for member in Conn.members:
                member.transport.write(blob)
            sent += due
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - start
    print(json.dumps({"sent_per_client": sent, "elapsed_s": elapsed}), flush=True)
    await asyncio.sleep(1.0)
    server.close()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
