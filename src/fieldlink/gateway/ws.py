"""WebSocket connections as asyncio protocols mounted in uvicorn (one port for HTTP and WS).

uvicorn parses the HTTP upgrade request and hands the connection to the class returned by
``websocket_protocol_factory``. That class looks at the request path: the native gateway path
(``/ws``) is served by ``GatewayConnection`` itself, a Socket.IO path by an
``EngineWebSocket`` (gateway/engineio.py), and any other path by uvicorn's own WebSocket
protocol, so ASGI WebSocket routes keep working.

``SansIOWebSocket`` is what both share: the websockets library's sans-I/O ``ServerProtocol``
does the handshake and parses incoming frames (masking, control frames, size limit, close
handshake); outgoing frames are pre-built by the hub's renderers and written straight to the
transport.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from fieldlink.core.access import Principal
from fieldlink.core.closecodes import CloseCode
from fieldlink.core.errors import FieldlinkError
from fieldlink.gateway import protocol
from fieldlink.gateway.frames import PING_FRAME, text_frame
from fieldlink.gateway.hub import Audience, ConflationKey, Hub, Renderer
from fieldlink.gateway.native import NativeSession

log = logging.getLogger("fieldlink.gateway")


SUBPROTOCOL = "fieldlink.v1"

# authenticate(request) -> Principal, or raises a FieldlinkError (its http_status and code
# become the handshake's answer).
Authenticate = Callable[[Request], Principal]


class GatewaySettings:
    def __init__(
        self,
        path: str = "/ws",
        max_message_bytes: int = protocol.MAX_CLIENT_MESSAGE_BYTES,
        ping_interval_s: float = 20.0,
        ping_timeout_s: float = 20.0,
        authenticate: Authenticate | None = None,
        max_connections: int = 10_000,
        max_per_subject: int = 100,
    ) -> None:
        self.path = path
        self.max_message_bytes = max_message_bytes
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.authenticate = authenticate
        self.max_connections = max_connections
        self.max_per_subject = max_per_subject  # 0: no per-user cap


def _select_subprotocol(_: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``fieldlink.v1`` when offered (browsers that send ``bearer.<token>`` must offer it
    too); no subprotocol otherwise."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def request_path(first_chunk: bytes) -> str:
    """The path of an HTTP request from its first bytes (``GET /ws?x=1 HTTP/1.1``)."""
    try:
        return first_chunk.split(b" ", 2)[1].split(b"?", 1)[0].decode("latin-1")
    except IndexError:
        return ""


class SansIOWebSocket(asyncio.Protocol):
    """The transport side of one server WebSocket. Subclasses answer the handshake
    (``_on_request``: ``_accept`` or ``_refuse``) and handle whole messages (``_on_text``,
    ``_on_binary``) and the end (``_on_closed``, called once)."""

    def __init__(self, *, max_message_bytes: int, subprotocols: Sequence[str] = ()) -> None:
        self.transport: asyncio.Transport | None = None
        self.ws = ServerProtocol(
            max_size=max_message_bytes,
            subprotocols=[Subprotocol(s) for s in subprotocols] or None,
            select_subprotocol=_select_subprotocol if subprotocols else None,
        )
        self.closing = False
        self.opened = False
        self.last_rx = time.monotonic()
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._abort_handle: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.ws.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if self.opened:
            self.opened = False
            self._on_closed()

    # ---- writing ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Bytes that are already WebSocket frames (server frames are never masked)."""
        assert self.transport is not None
        self.transport.write(data)

    def buffered_bytes(self) -> int:
        assert self.transport is not None
        return self.transport.get_write_buffer_size()

    def send(self, payload: bytes) -> None:
        """One text message now."""
        if not self.closing and self.transport is not None:
            self.transport.write(text_frame(payload))

    def ping(self) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(PING_FRAME)

    def close_with(self, code: int, reason: str) -> None:
        """Send a close frame and close; abort if the peer has not gone within 2 s."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
        self._write_pending()
        self.transport.close()
        self._abort_handle = asyncio.get_running_loop().call_later(2.0, self.transport.abort)

    # ---- internals ----------------------------------------------------------------------

    def _write_pending(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def _process(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._write_pending()
        if self.ws.close_expected() and self.transport is not None and not self.closing:
            self.closing = True
            if self.opened:
                self.opened = False
                self._on_closed()
            self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        response = self.ws.reject(
            status, orjson.dumps({"error": {"code": code, "message": message}}).decode()
        )
        response.headers["Content-Type"] = "application/json"
        self.ws.send_response(response)
        self._write_pending()
        self.closing = True
        assert self.transport is not None
        self.transport.close()

    def _accept(self, request: Request, high_water_bytes: int) -> bool:
        """Complete the handshake; True if the connection is open."""
        response = self.ws.accept(request)
        self.ws.send_response(response)
        self._write_pending()
        assert self.transport is not None
        if response.status_code != 101:
            self.closing = True
            self.transport.close()
            return False
        self.opened = True
        # Above this the transport calls pause_writing and the hub conflates (hub.py).
        self.transport.set_write_buffer_limits(high=high_water_bytes)
        return True

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragment_opcode = opcode
                self._fragments = [bytes(frame.data)]
                return
            payload = bytes(frame.data)
        elif opcode is Opcode.CONT and self._fragment_opcode is not None:
            self._fragments.append(bytes(frame.data))
            if not frame.fin:
                return
            opcode, self._fragment_opcode = self._fragment_opcode, None
            payload = b"".join(self._fragments)
            self._fragments = []
        else:
            return  # PING is answered and CLOSE handled by ServerProtocol; PONG only counts
        if self.closing:
            return
        if opcode is Opcode.TEXT:
            self._on_text(payload)
        else:
            self._on_binary(payload)

    # ---- for subclasses -----------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        raise NotImplementedError

    def _on_text(self, payload: bytes) -> None:
        raise NotImplementedError

    def _on_binary(self, payload: bytes) -> None:
        raise NotImplementedError

    def _on_closed(self) -> None:
        raise NotImplementedError


class WebSocketRoute(Protocol):
    """Another protocol on a path of its own (the Socket.IO server, gateway/engineio.py)."""

    def websocket(self) -> asyncio.Protocol:
        """A protocol for one WebSocket connection on the route's path."""


class GatewayConnection(SansIOWebSocket):
    """The class uvicorn constructs for every WebSocket upgrade, and one native ``/ws``
    client of the hub (implements ``native.NativeMember``). What the client says goes to the
    native session handler; what the hub writes goes straight to the socket."""

    hub: Hub
    session: NativeSession
    settings: GatewaySettings
    routes: dict[str, WebSocketRoute]  # other paths (Socket.IO), with a trailing slash

    def __init__(self, config: Any, server_state: Any, app_state: Any) -> None:
        super().__init__(
            max_message_bytes=self.settings.max_message_bytes, subprotocols=[SUBPROTOCOL]
        )
        self._uvicorn = (config, server_state, app_state)
        self.server_state = server_state
        self.delegate: asyncio.Protocol | None = None
        self.renderer: Renderer = self.session.renderer
        self.principal: Principal | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.client_id = secrets.token_urlsafe(9)
        self.subscriptions: dict[str, Audience] = {}
        self.out: list[bytes] = []
        self.paused_since: float | None = None
        self.backlog: dict[ConflationKey, bytes] = {}

    # ---- asyncio.Protocol (forwarded once the path chose another handler) ---------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data)
            return
        if not self.opened and self.ws.state is State.CONNECTING:
            path = request_path(data)
            if path != self.settings.path:
                self._hand_over(path, data)
                return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self.delegate is not None:
            return self.delegate.eof_received()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
            return
        self.server_state.connections.discard(self)
        if self._expiry is not None:
            self._expiry.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.pause_writing()
        elif self.opened and not self.closing:
            self.hub.pause(self)

    def resume_writing(self) -> None:
        if self.delegate is not None:
            self.delegate.resume_writing()
        elif self.opened and not self.closing:
            self.hub.resume(self)

    def shutdown(self) -> None:
        """uvicorn calls this on server shutdown: tell the client to reconnect elsewhere."""
        if self.delegate is not None:
            shutdown = getattr(self.delegate, "shutdown", None)
            if shutdown is not None:
                shutdown()
        elif self.opened:
            self.hub.kick(self, CloseCode.GOING_AWAY, "server shutting down")
        elif self.transport is not None:
            self.transport.close()

    def _hand_over(self, path: str, data: bytes) -> None:
        self.server_state.connections.discard(self)
        route = self.routes.get(path.rstrip("/") + "/")
        if route is not None:
            self.delegate = route.websocket()
        else:
            from uvicorn.protocols.websockets.websockets_sansio_impl import (
                WebSocketsSansIOProtocol,
            )

            config, server_state, app_state = self._uvicorn
            self.delegate = WebSocketsSansIOProtocol(
                config=config, server_state=server_state, app_state=app_state
            )
        assert self.transport is not None
        self.delegate.connection_made(self.transport)
        self.delegate.data_received(data)

    # ---- hub.Member ---------------------------------------------------------------------

    def kick(self, code: int, reason: str) -> None:
        self.close_with(code, reason)

    def reauthenticate(self, principal: Principal) -> None:
        self.principal = principal
        self.expire_at(principal.expires_ms)

    def expire_at(self, expires_ms: int | None) -> None:
        """Close with 4001 when the token expires (a refresh moves the deadline)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if expires_ms is None:
            return
        delay = max(0.0, expires_ms / 1000 - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        self.hub.stats.expired += 1
        self.hub.kick(self, CloseCode.TOKEN_EXPIRED, "token expired")

    # ---- the native protocol ------------------------------------------------------------

    def _refuse(self, status: int, code: str, message: str) -> None:
        self.hub.stats.refuse(code)
        super()._refuse(status, code, message)

    def _on_request(self, request: Request) -> None:
        settings = self.settings
        if settings.authenticate is not None:
            try:
                self.principal = settings.authenticate(request)
            except FieldlinkError as exc:
                self._refuse(exc.http_status, exc.code, exc.message)
                return
            if settings.max_per_subject and (
                self.hub.count_subject(self.principal.subject) >= settings.max_per_subject
            ):
                self._refuse(
                    429,
                    "too_many_connections",
                    f"at most {settings.max_per_subject} connections per user",
                )
                return
        if len(self.hub.members) >= settings.max_connections:
            self._refuse(503, "server_full", "the server has no room for more connections")
            return
        if self._accept(request, self.hub.max_pending_bytes):
            self.session.opened(self)
            self.expire_at(self.principal.expires_ms if self.principal else None)

    def _on_text(self, payload: bytes) -> None:
        self.session.received(self, payload)

    def _on_binary(self, payload: bytes) -> None:
        self.session.binary(self)

    def _on_closed(self) -> None:
        self.session.closed(self)


def websocket_protocol_factory(
    hub: Hub,
    session: NativeSession,
    settings: GatewaySettings,
    routes: dict[str, WebSocketRoute] | None = None,
) -> type[GatewayConnection]:
    """A GatewayConnection class bound to one hub, the native session handler and the other
    WebSocket routes by path, to pass to ``uvicorn.Config(ws=...)`` (uvicorn constructs one
    per connection)."""
    return type(
        "BoundGatewayConnection",
        (GatewayConnection,),
        {"hub": hub, "session": session, "settings": settings, "routes": routes or {}},
    )


async def keepalive(hub: Hub, settings: GatewaySettings) -> None:
    """Ping every native member each interval; close those silent for interval + timeout."""
    while True:
        await asyncio.sleep(settings.ping_interval_s)
        deadline = time.monotonic() - settings.ping_interval_s - settings.ping_timeout_s
        for member in list(hub.members):
            if isinstance(member, GatewayConnection):
                if member.last_rx < deadline:
                    hub.kick(member, CloseCode.GOING_AWAY, "ping timeout")
                else:
                    member.ping()
