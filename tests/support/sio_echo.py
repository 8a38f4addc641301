"""The echo server the official Engine.IO and Socket.IO compliance suites expect
(tests/node/*-protocol/test-suite.js), on fieldlink's own Engine.IO / Socket.IO layer:

- ``/engine.io/``: every message is sent back as it came (text or binary);
- ``/socket.io/``: namespaces ``/`` and ``/custom``; on connect the server emits ``auth`` with
  the CONNECT payload; ``message`` is answered with ``message-back`` and the same arguments,
  ``message-with-ack`` with an ack of the same arguments.

Both with pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1,000,000 and a connect timeout
of 1 s, as the suites assume. Run: ``python -m tests.support.sio_echo PORT``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from fieldlink.core.access import Principal
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.gateway.engineio import EngineServer, EngineSettings, EngineSocket
from fieldlink.gateway.hub import Hub
from fieldlink.gateway.native import NativeSession
from fieldlink.gateway.socketio import Client, SocketIOServer
from fieldlink.gateway.ws import GatewaySettings, websocket_protocol_factory

SETTINGS = {"ping_interval_ms": 300, "ping_timeout_ms": 200, "max_payload": 1_000_000}


class EngineEcho:
    """Engine.IO level: messages straight back."""

    def opened(self, socket: EngineSocket) -> None:
        pass

    def message(self, socket: EngineSocket, data: str | bytes) -> None:
        if isinstance(data, bytes):
            socket.send_binary(data)
        else:
            socket.send_text("4" + data)

    def closed(self, socket: EngineSocket, reason: str) -> None:
        pass

    def upgraded(self, socket: EngineSocket) -> None:
        pass


class EchoNamespace:
    def __init__(self) -> None:
        self.auth: dict[str, dict[str, Any]] = {}

    def connect(self, client: Client, auth: dict[str, Any] | None) -> None:
        client.data["auth"] = auth or {}

    def connected(self, client: Client) -> None:
        client.emit("auth", client.data["auth"])

    def event(self, client: Client, name: str, args: list[Any], ack_id: int | None) -> None:
        if name == "message":
            client.emit("message-back", *args)
        elif name == "message-with-ack" and ack_id is not None:
            client.ack(ack_id, *args)

    def disconnect(self, client: Client, reason: str) -> None:
        pass

    def upgraded(self, client: Client) -> None:
        pass


def anyone(headers: dict[str, str], host: str) -> Principal | None:
    return None


def any_origin(origin: str | None) -> None:
    return None


def engine(path: str, app: Any) -> EngineServer:
    return EngineServer(
        settings=EngineSettings(path=path, **SETTINGS),
        app=app,
        check_origin=any_origin,
        authenticate=anyone,
        hub_pause=lambda socket: None,
        hub_resume=lambda socket: None,
    )


async def main(port: int) -> None:
    engines = {
        "/engine.io/": engine("/engine.io/", EngineEcho()),
        "/socket.io/": engine(
            "/socket.io/",
            # The suite's client awaits one message at a time, so a second message in the
            # same read as the CONNECT reply would be missed: the echo's "auth" goes out a
            # moment later in a segment of its own, as the reference server's write buffering
            # (a transport is not writable until its last write drained) also does.
            SocketIOServer({"/": EchoNamespace(), "/custom": EchoNamespace()},
                           connect_timeout_s=1.0, connected_delay_s=0.005),
        ),
    }
    hub = Hub()
    native = NativeSession(hub=hub, snapshot=lambda channel: b"{}", devices=None,  # type: ignore[arg-type]
                           commands=None, proposals=None, authenticator=None,  # type: ignore[arg-type]
                           limiter=RateLimiter(50, 100), clock_ms=lambda: 0)
    app = Starlette(routes=[Mount(path.rstrip("/"), app=server) for path, server in engines.items()])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
        ws=websocket_protocol_factory(hub, native, GatewaySettings(), dict(engines)),
    )
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
