"""Engine.IO v4, the transport layer under Socket.IO: sessions over HTTP long-polling and
WebSocket, the upgrade from one to the other, and the heartbeat.

Theory of operation. A session (``EngineSocket``) starts with a handshake: ``GET
<path>?EIO=4&transport=polling`` (or a WebSocket on ``transport=websocket``) answered with the
open packet ``0{"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}``. Packets are
one character of type (``0`` open, ``1`` close, ``2`` ping, ``3`` pong, ``4`` message, ``5``
upgrade, ``6`` noop) and data; over polling several are joined with ``\\x1e`` and binary ones
are ``b`` + base64; over WebSocket each is one frame (binary messages as binary frames).
Polling: a GET returns whatever is queued (waiting until something is), a POST carries the
client's packets. Upgrade: the client opens a WebSocket with the session's ``sid``, sends
``2probe`` (answered ``3probe``; a poll waiting meanwhile is released with ``6``), then ``5``;
from then on the session lives on the WebSocket and polling requests for it are refused.
Heartbeat: the server sends ``2`` every ``pingInterval`` and closes the session if no ``3``
comes within ``pingTimeout``. Errors answer the HTTP request 400 with
``{"code", "message"}`` (engine.io's codes); a malformed packet closes the session.

What lives above it (``EngineApp``, gateway/socketio.py) sees opened sessions, their messages
(text or bytes) and their end. The hub writes pre-rendered bytes through ``write``: frames
for a WebSocket session, ``\\x1e``-joined packets for a polling one (``renderer`` says which).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson
from websockets.http11 import Request

from fieldlink.core.access import Principal
from fieldlink.core.errors import FieldlinkError
from fieldlink.core.measures import Measure, counter, gauge, labelled, measures_of
from fieldlink.gateway.frames import text_frame
from fieldlink.gateway.hub import Audience, ConflationKey, Renderer
from fieldlink.gateway.ws import SansIOWebSocket

log = logging.getLogger("fieldlink.socketio")

OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"
SEPARATOR = b"\x1e"
PING_PACKET = b"2"
NOOP_PACKET = b"6"

# engine.io's error codes (answered with HTTP 400, or 403 for an origin)
TRANSPORT_UNKNOWN = (0, "Transport unknown")
SESSION_UNKNOWN = (1, "Session ID unknown")
BAD_METHOD = (2, "Bad handshake method")
BAD_REQUEST = (3, "Bad request")
FORBIDDEN = (4, "Forbidden")
BAD_VERSION = (5, "Unsupported protocol version")


class EngineError(Exception):
    """A request the protocol refuses: its HTTP status and engine.io error."""

    def __init__(self, error: tuple[int, str], status: int = 400, detail: str = "") -> None:
        super().__init__(detail or error[1])
        self.code, self.message = error
        self.status = status
        self.detail = detail

    def body(self) -> bytes:
        return orjson.dumps({"code": self.code, "message": self.message})


@dataclass(frozen=True)
class EngineSettings:
    path: str = "/socket.io/"
    ping_interval_ms: int = 25_000
    ping_timeout_ms: int = 20_000
    max_payload: int = 1_000_000  # bytes of one polling request, or of one WebSocket message
    max_buffered_bytes: int = 4 * 1024 * 1024  # a session's unsent data before it is closed
    high_water_bytes: int = 1024 * 1024  # WebSocket write buffer before the hub conflates


# ---- packets ----------------------------------------------------------------------------


def decode_payload(body: bytes) -> list[str | bytes]:
    """The packets of a polling request body; ``EngineError`` for anything malformed.
    Text packets come back as ``str`` (type + data), binary ones as ``bytes`` (the message)."""
    packets: list[str | bytes] = []
    for raw in body.split(SEPARATOR):
        if raw.startswith(b"b"):
            try:
                packets.append(base64.b64decode(raw[1:], validate=True))
            except binascii.Error:
                raise EngineError(BAD_REQUEST, detail="invalid base64 packet") from None
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EngineError(BAD_REQUEST, detail="packet is not UTF-8") from None
        if not text or text[0] not in "0123456":
            raise EngineError(BAD_REQUEST, detail="invalid packet type")
        packets.append(text)
    return packets


def encode_binary_for_polling(data: bytes) -> bytes:
    return b"b" + base64.b64encode(data)


# ---- the application above ------------------------------------------------------------


class EngineApp(Protocol):
    """What runs on Engine.IO sessions (the Socket.IO server, or a plain echo for the
    compliance suite)."""

    def opened(self, socket: EngineSocket) -> None: ...

    def message(self, socket: EngineSocket, data: str | bytes) -> None:
        """One message: text (without its ``4``) or binary. May close the socket."""

    def closed(self, socket: EngineSocket, reason: str) -> None: ...

    def upgraded(self, socket: EngineSocket) -> None:
        """The session is moving from polling to WebSocket: from now on render for the
        WebSocket (whatever is written meanwhile is re-framed and sent after it)."""


Authenticate = Callable[[dict[str, str], str], Principal | None]
"""(request headers, lower-cased; client host) -> the principal of a bearer token or session
cookie on the handshake request, or None; raises ``FieldlinkError`` for a bad one."""

CheckOrigin = Callable[[str | None], None]
"""Raises ``FieldlinkError`` (403) for an Origin that is not allowed."""


class _NoRenderer:
    """Placeholder until the application picks a renderer: carries nothing."""

    family = "none"

    def body(self, event: object) -> None:
        return None

    def payload(self, event: object, channel: str, seq: int, body: bytes) -> bytes:
        return body

    def frames(self, payloads: list[bytes]) -> bytes:
        return b""


NO_RENDERER: Renderer = _NoRenderer()


# ---- one session ------------------------------------------------------------------------


class EngineSocket:
    """One Engine.IO session, on polling or WebSocket. Implements ``hub.Member`` (the hub
    writes bytes rendered for its current transport)."""

    def __init__(self, server: EngineServer, sid: str, principal: Principal | None) -> None:
        self.server = server
        self.sid = sid
        self.client_id = sid
        self.principal = principal
        self.renderer: Renderer = NO_RENDERER  # the application sets it (per transport)
        self.subscriptions: dict[str, Audience] = {}
        self.out: list[bytes] = []
        self.paused_since: float | None = None
        self.backlog: dict[ConflationKey, bytes] = {}
        self.closing = False
        self.state: dict[str, Any] = {}  # the application's per-session data
        self.websocket: EngineWebSocket | None = None
        self.upgrading = False
        self._queue: list[bytes] = []  # polling: packets waiting for a GET
        self._queued_bytes = 0
        self._poll: asyncio.Future[None] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None

    @property
    def transport_name(self) -> str:
        return "websocket" if self.websocket is not None else "polling"

    # ---- out --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Bytes rendered for the current transport (hub.Member)."""
        if self.closing:
            return
        if self.websocket is not None:
            self.websocket.write(data)
        else:
            self._enqueue(data)

    def buffered_bytes(self) -> int:
        if self.websocket is not None:
            return self.websocket.buffered_bytes()
        return self._queued_bytes

    def send_text(self, packet: str) -> None:
        """One text packet (type + data), now."""
        data = packet.encode()
        if self.websocket is not None:
            if not self.closing:
                self.websocket.write(text_frame(data))
        else:
            self._enqueue(data)

    def send_binary(self, message: bytes) -> None:
        """One binary message (a Socket.IO attachment)."""
        if self.websocket is not None:
            if not self.closing:
                self.websocket.write_binary(message)
        else:
            self._enqueue(encode_binary_for_polling(message))

    def kick(self, code: int, reason: str) -> None:
        """Close the session (hub.Member; the code goes to a WebSocket's close frame)."""
        self.close(reason, code=code)

    def close(self, reason: str, *, code: int = 1000, notify: bool = True) -> None:
        """End the session: tell the client (``1``), release a waiting poll, forget it."""
        if self.closing:
            return
        if notify:
            self.send_text(CLOSE)
        self.closing = True
        self._cancel_timers()
        if self.websocket is not None:
            self.websocket.close_with(code, reason[:120])
        self._release_poll()
        self.server.forget(self, reason)

    def _enqueue(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self.server.settings.max_buffered_bytes:
            self.server.stats.slow_closed += 1
            self._queue.clear()
            self._queued_bytes = 0
            self.close("slow consumer: polling buffer over its limit", notify=False)
            return
        self._release_poll()

    def _release_poll(self) -> None:
        if self._poll is not None and not self._poll.done():
            self._poll.set_result(None)

    # ---- polling ----------------------------------------------------------------------

    async def poll(self) -> bytes:
        """A GET: the queued packets, waiting until there are some (or the session ends)."""
        if self._poll is not None and not self._poll.done():
            # Two polls at once: a protocol error. The first gets a close, the session ends.
            self.close("duplicate poll")
            raise EngineError(BAD_REQUEST, detail="a poll is already waiting")
        if not self._queue and not self.closing and not self.upgrading:
            self._poll = asyncio.get_running_loop().create_future()
            await self._poll
            self._poll = None
        if not self._queue:  # upgrading, or closed meanwhile: end this poll cleanly
            return NOOP_PACKET
        data = SEPARATOR.join(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        return data

    def received(self, packets: Sequence[str | bytes]) -> None:
        """Packets the client sent (a POST, or a WebSocket message)."""
        for packet in packets:
            if self.closing:
                return
            if isinstance(packet, bytes):
                self.server.app.message(self, packet)
                continue
            kind, data = packet[0], packet[1:]
            if kind == MESSAGE:
                self.server.app.message(self, data)
            elif kind == PONG:
                self._pong()
            elif kind == CLOSE:
                self.close("client closed", notify=False)
            elif kind == NOOP or (kind == PING and data == "probe"):
                continue
            else:
                self.close("unexpected packet", notify=False)

    # ---- heartbeat --------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._ping_timer = loop.call_later(
            self.server.settings.ping_interval_ms / 1000, self._send_ping
        )

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self.closing:
            return
        self.send_text(PING)
        self._pong_timer = asyncio.get_running_loop().call_later(
            self.server.settings.ping_timeout_ms / 1000, self._ping_timed_out
        )

    def _pong(self) -> None:
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self.start_heartbeat()

    def _ping_timed_out(self) -> None:
        self._pong_timer = None
        self.server.stats.ping_timeouts += 1
        self.close("ping timeout", notify=False)

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = None

    # ---- upgrade ----------------------------------------------------------------------

    def probe(self, websocket: EngineWebSocket) -> None:
        """``2probe`` on a WebSocket for this session: answer, and release a waiting poll."""
        self.upgrading = True
        websocket.write(text_frame(b"3probe"))
        self._release_poll()

    def upgrade(self, websocket: EngineWebSocket) -> None:
        """``5``: from now on the session lives on ``websocket``. The application moves its
        output to the WebSocket form first (what it still had rendered for polling lands in
        the polling queue), then everything queued goes out on the WebSocket, in order."""
        self.server.app.upgraded(self)
        queued, self._queue = self._queue, []
        self._queued_bytes = 0
        self.websocket = websocket
        self.upgrading = False
        self.server.stats.upgrades += 1
        self._release_poll()
        for data in queued:
            if data.startswith(b"b"):
                websocket.write_binary(base64.b64decode(data[1:]))
            else:
                websocket.write(b"".join(text_frame(p) for p in data.split(SEPARATOR)))


# ---- the WebSocket transport ------------------------------------------------------------


class EngineWebSocket(SansIOWebSocket):
    """A WebSocket on the Engine.IO path: a session opened directly on it, or an upgrade of a
    polling session (its ``sid`` in the query)."""

    def __init__(self, server: EngineServer) -> None:
        super().__init__(max_message_bytes=server.settings.max_payload)
        self.server = server
        self.socket: EngineSocket | None = None
        self.probing: EngineSocket | None = None

    def write_binary(self, message: bytes) -> None:
        if self.closing or self.transport is None:
            return
        n = len(message)
        head = (
            bytes((0x82, n))
            if n < 126
            else (
                b"\x82\x7e" + n.to_bytes(2, "big")
                if n < 65536
                else b"\x82\x7f" + n.to_bytes(8, "big")
            )
        )
        self.transport.write(head + message)

    def pause_writing(self) -> None:
        if self.socket is not None and not self.closing:
            self.server.hub_pause(self.socket)

    def resume_writing(self) -> None:
        if self.socket is not None and not self.closing:
            self.server.hub_resume(self.socket)

    def shutdown(self) -> None:
        if self.socket is not None:
            self.socket.close("server shutting down", code=1001)
        elif self.transport is not None:
            self.transport.close()

    def _on_request(self, request: Request) -> None:
        query = parse_qs(request.path.partition("?")[2])
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        try:
            self.server.check_version(query)
            if query.get("transport", [""])[0] != "websocket":
                raise EngineError(TRANSPORT_UNKNOWN)
            self.server.check_origin(headers.get("origin"))
            sid = query.get("sid", [None])[0]
            if sid is not None:
                existing = self.server.sessions.get(sid)
                if not self._accept(request, self.server.settings.high_water_bytes):
                    return
                if existing is None or existing.websocket is not None or existing.upgrading:
                    # Like engine.io: the WebSocket opens and is closed at once (a client on
                    # the wrong instance, or a second upgrade, reconnects from scratch).
                    self.server.stats.refuse(SESSION_UNKNOWN[1])
                    self.close_with(1008, SESSION_UNKNOWN[1])
                    return
                self.probing = existing
                return
            principal = self.server.authenticate_request(headers, "")
        except EngineError as exc:
            self.server.stats.refuse(exc.message)
            self._refuse(exc.status, "engineio", exc.message)
            return
        except FieldlinkError as exc:
            self.server.stats.refuse(exc.code)
            self._refuse(exc.http_status, exc.code, exc.message)
            return
        if not self._accept(request, self.server.settings.high_water_bytes):
            return
        socket = self.server.open_session(principal, upgrades=[])
        socket.websocket = self
        self.socket = socket
        self.write(text_frame(self.server.open_packet(socket, upgrades=[])))
        self.server.app.opened(socket)

    def _on_text(self, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self.close_with(1007, "invalid UTF-8")
            return
        probing = self.probing
        if probing is not None and self.socket is None:
            if text == "2probe":
                probing.probe(self)
            elif text == UPGRADE and probing.upgrading:
                self.probing = None
                self.socket = probing
                probing.upgrade(self)
            else:
                self.close_with(1002, "expected the upgrade")
            return
        socket = self.socket
        if socket is None:
            return
        if not text or text[0] not in "0123456":
            self.server.stats.malformed += 1
            socket.close("invalid packet", notify=False)
            return
        socket.received([text])

    def _on_binary(self, payload: bytes) -> None:
        if self.socket is not None:
            self.socket.received([payload])

    def _on_closed(self) -> None:
        if self.probing is not None:
            self.probing.upgrading = False
            self.probing = None
        socket, self.socket = self.socket, None
        if socket is not None and not socket.closing:
            socket.close("transport closed", notify=False)


# ---- the server -------------------------------------------------------------------------


@dataclass(slots=True)
class EngineStats:
    sessions: int = gauge("fieldlink_socketio_sessions", "Open Socket.IO (Engine.IO) sessions")
    opened: int = counter("fieldlink_socketio_sessions_opened", "Engine.IO sessions opened")
    upgrades: int = counter(
        "fieldlink_socketio_upgrades", "Sessions upgraded from polling to WebSocket"
    )
    ping_timeouts: int = counter(
        "fieldlink_socketio_ping_timeouts", "Sessions closed for a missed pong"
    )
    malformed: int = counter(
        "fieldlink_socketio_malformed", "Sessions closed for a malformed packet"
    )
    slow_closed: int = counter(
        "fieldlink_socketio_slow_closed", "Polling sessions closed with too much unsent data"
    )
    refused: dict[str, int] = labelled(
        "fieldlink_socketio_refused", "Engine.IO requests refused, by reason", "reason"
    )

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def measures(self) -> Iterator[Measure]:
        return measures_of(self)


class EngineServer:
    """Every Engine.IO session on one path, its polling endpoint (an ASGI app) and its
    WebSocket endpoint (``websocket()``, handed over by gateway/ws.py)."""

    def __init__(
        self,
        *,
        settings: EngineSettings,
        app: EngineApp,
        check_origin: CheckOrigin,
        authenticate: Authenticate,
        hub_pause: Callable[[EngineSocket], None],
        hub_resume: Callable[[EngineSocket], None],
        stats: EngineStats | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.check_origin = check_origin
        self.authenticate_request = authenticate
        self.hub_pause = hub_pause
        self.hub_resume = hub_resume
        self.sessions: dict[str, EngineSocket] = {}
        self.stats = stats or EngineStats()

    def websocket(self) -> EngineWebSocket:
        return EngineWebSocket(self)

    def open_packet(self, socket: EngineSocket, upgrades: list[str]) -> bytes:
        s = self.settings
        return OPEN.encode() + orjson.dumps(
            {
                "sid": socket.sid,
                "upgrades": upgrades,
                "pingInterval": s.ping_interval_ms,
                "pingTimeout": s.ping_timeout_ms,
                "maxPayload": s.max_payload,
            }
        )

    def open_session(self, principal: Principal | None, upgrades: list[str]) -> EngineSocket:
        socket = EngineSocket(self, secrets.token_urlsafe(15), principal)
        self.sessions[socket.sid] = socket
        self.stats.opened += 1
        self.stats.sessions += 1
        socket.start_heartbeat()
        return socket

    def forget(self, socket: EngineSocket, reason: str) -> None:
        if self.sessions.pop(socket.sid, None) is not None:
            self.stats.sessions -= 1
            self.app.closed(socket, reason)

    @staticmethod
    def check_version(query: dict[str, list[str]]) -> None:
        if query.get("EIO", [""])[0] != "4":
            raise EngineError(BAD_VERSION)

    def close_all(self) -> None:
        for socket in list(self.sessions.values()):
            socket.close("server shutting down", code=1001)

    # ---- polling (ASGI) ---------------------------------------------------------------

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        # CORS headers and preflights are the HTTP app's (the same allow-list as REST).
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        try:
            status, body = await self._polling(scope, receive, method, headers)
        except EngineError as exc:
            self.stats.refuse(exc.message)
            await _respond(send, exc.status, exc.body(), b"application/json")
            return
        except FieldlinkError as exc:
            self.stats.refuse(exc.code)
            error = orjson.dumps({"code": FORBIDDEN[0], "message": exc.message})
            await _respond(send, exc.http_status, error, b"application/json")
            return
        await _respond(send, status, body)

    async def _polling(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        method: str,
        headers: dict[str, str],
    ) -> tuple[int, bytes]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        self.check_version(query)
        if query.get("transport", [""])[0] != "polling":
            raise EngineError(TRANSPORT_UNKNOWN)
        self.check_origin(headers.get("origin"))
        sid = query.get("sid", [None])[0]
        if sid is None:
            if method != "GET":
                raise EngineError(BAD_METHOD)
            client = scope.get("client") or ("", 0)
            principal = self.authenticate_request(headers, client[0])
            socket = self.open_session(principal, upgrades=["websocket"])
            packet = self.open_packet(socket, upgrades=["websocket"])
            self.app.opened(socket)
            return 200, packet
        session = self.sessions.get(sid)
        if session is None or session.websocket is not None:
            raise EngineError(SESSION_UNKNOWN)
        socket = session
        if method == "GET":
            return 200, await socket.poll()
        if method != "POST":
            raise EngineError(BAD_METHOD)
        body = await _read_body(receive, self.settings.max_payload)
        try:
            packets = decode_payload(body)
        except EngineError:
            self.stats.malformed += 1
            socket.close("invalid packet", notify=False)
            raise
        socket.received(packets)
        return 200, b"ok"


async def _read_body(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise EngineError(BAD_REQUEST, detail="client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise EngineError(BAD_REQUEST, status=413, detail="payload too large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=UTF-8",
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
