"""The ``/ws`` endpoint as an asyncio protocol mounted in uvicorn (one port for HTTP and WS).

uvicorn parses the HTTP upgrade request and hands the connection to the class returned by
``websocket_protocol_factory``. For the gateway path this class speaks WebSocket itself,
using the websockets sans-I/O ``ServerProtocol`` for the handshake and for incoming frames
(masking, control frames, size limit, close handshake), and writes pre-built event frames
straight to the transport. Any other path is handed to uvicorn's own WebSocket protocol so
ASGI WebSocket routes keep working.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

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
from fieldlink.gateway.hub import Hub, Renderer
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


class GatewayConnection(asyncio.Protocol):
    """One WebSocket client of the hub (implements ``native.NativeMember``): the transport
    side. What the client says goes to the protocol's session handler; what the hub writes
    goes straight to the socket."""

    hub: Hub
    session: NativeSession
    settings: GatewaySettings

    def __init__(self, config: Any, server_state: Any, app_state: Any) -> None:
        self._uvicorn = (config, server_state, app_state)
        self.server_state = server_state
        self.transport: asyncio.Transport | None = None
        self.delegate: asyncio.Protocol | None = None
        self.ws = ServerProtocol(
            max_size=self.settings.max_message_bytes,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            select_subprotocol=_select_subprotocol,
        )
        self.renderer: Renderer = self.session.renderer
        self.principal: Principal | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.client_id = secrets.token_urlsafe(9)
        self.subscriptions: set[str] = set()
        self.out: list[bytes] = []
        self.paused_since: float | None = None
        self.backlog: dict[tuple[str, str, str], bytes] = {}
        self.closing = False
        self.opened = False
        self.last_rx = time.monotonic()
        self._fragments: list[bytes] = []
        self._abort_handle: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data)
            return
        if not self.opened and self.ws.state is State.CONNECTING:
            path = data.split(b" ", 2)[1].split(b"?", 1)[0].decode("latin-1")
            if path != self.settings.path:
                self._hand_over(data)
                return
        self.last_rx = time.monotonic()
        self.ws.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        if self.delegate is not None:
            return self.delegate.eof_received()
        self.ws.receive_eof()
        self._process()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
            return
        self.server_state.connections.discard(self)
        self.closing = True
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self.opened:
            self.session.closed(self)

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
            self.delegate.shutdown()  # type: ignore[attr-defined]
        elif self.opened:
            self.hub.kick(self, CloseCode.GOING_AWAY, "server shutting down")
        elif self.transport is not None:
            self.transport.close()

    # ---- hub.Member ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def buffered_bytes(self) -> int:
        assert self.transport is not None
        return self.transport.get_write_buffer_size()

    def send(self, payload: bytes) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(text_frame(payload))

    def ping(self) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(PING_FRAME)

    def kick(self, code: int, reason: str) -> None:
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

    def _hand_over(self, data: bytes) -> None:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

        self.server_state.connections.discard(self)
        config, server_state, app_state = self._uvicorn
        self.delegate = WebSocketsSansIOProtocol(
            config=config, server_state=server_state, app_state=app_state
        )
        assert self.transport is not None
        self.delegate.connection_made(self.transport)
        self.delegate.data_received(data)

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
                self._open(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._write_pending()
        if self.ws.close_expected() and self.transport is not None and not self.closing:
            self.closing = True
            if self.opened:
                self.session.closed(self)
            self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        self.hub.stats.refuse(code)
        response = self.ws.reject(
            status, orjson.dumps({"error": {"code": code, "message": message}}).decode()
        )
        response.headers["Content-Type"] = "application/json"
        self.ws.send_response(response)
        self._write_pending()
        self.closing = True
        assert self.transport is not None
        self.transport.close()

    def _open(self, request: Request) -> None:
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
        response = self.ws.accept(request)
        self.ws.send_response(response)
        self._write_pending()
        if response.status_code == 101:
            self.opened = True
            assert self.transport is not None
            # Above this the transport calls pause_writing and the hub conflates (hub.py).
            self.transport.set_write_buffer_limits(high=self.hub.max_pending_bytes)
            self.session.opened(self)
            self.expire_at(self.principal.expires_ms if self.principal else None)
        else:
            self.closing = True
            assert self.transport is not None
            self.transport.close()

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

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or (opcode is Opcode.CONT and self._fragments):
            data = bytes(frame.data)
            if not frame.fin:
                self._fragments.append(data)
                return
            if self._fragments:
                self._fragments.append(data)
                payload = b"".join(self._fragments)
                self._fragments.clear()
            else:
                payload = data
            if not self.closing:
                self.session.received(self, payload)
        elif (opcode is Opcode.BINARY or opcode is Opcode.CONT) and frame.fin:
            self.session.binary(self)
        # PING is answered and CLOSE handled by ServerProtocol; PONG only refreshes last_rx.


def websocket_protocol_factory(
    hub: Hub, session: NativeSession, settings: GatewaySettings
) -> type[GatewayConnection]:
    """A GatewayConnection class bound to one hub and session handler, to pass to
    ``uvicorn.Config(ws=...)`` (uvicorn constructs one per connection)."""
    return type(
        "BoundGatewayConnection",
        (GatewayConnection,),
        {"hub": hub, "session": session, "settings": settings},
    )


async def keepalive(hub: Hub, settings: GatewaySettings) -> None:
    """Ping every member each interval; close those silent for interval + timeout."""
    while True:
        await asyncio.sleep(settings.ping_interval_s)
        deadline = time.monotonic() - settings.ping_interval_s - settings.ping_timeout_s
        for member in list(hub.members):
            if isinstance(member, GatewayConnection):
                if member.last_rx < deadline:
                    hub.kick(member, CloseCode.GOING_AWAY, "ping timeout")
                else:
                    member.ping()
