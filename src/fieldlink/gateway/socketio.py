"""Socket.IO v5 on Engine.IO v4: packets, namespaces, acknowledgements, binary attachments.

A Socket.IO packet is the text of one Engine.IO message:
``<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`` with type ``0`` CONNECT, ``1``
DISCONNECT, ``2`` EVENT, ``3`` ACK, ``4`` CONNECT_ERROR, ``5`` BINARY_EVENT, ``6``
BINARY_ACK. A binary packet is followed by its attachments as binary messages; in the JSON
each is a placeholder ``{"_placeholder": true, "num": i}``. A client joins a namespace with
CONNECT (optionally carrying an ``auth`` object) and gets ``0{"sid"}`` or CONNECT_ERROR
``4{"message"}``; a session that joins none within ``connect_timeout_s`` is closed, and so is
one that sends a malformed packet.

``SocketIOServer`` implements ``engineio.EngineApp``; what each namespace does is its
``Namespace`` (gateway/socketio_app.py for fieldlink's vocabularies).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from fieldlink.core.errors import FieldlinkError
from fieldlink.core.measures import Measure, counter, labelled, measures_of
from fieldlink.gateway.engineio import MESSAGE, EngineSocket

log = logging.getLogger("fieldlink.socketio")

CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)
MAX_ATTACHMENTS = 10


class PacketError(Exception):
    """A packet that breaks the protocol: the session is closed."""


@dataclass(slots=True)
class Packet:
    type: int
    namespace: str = "/"
    id: int | None = None
    data: Any = None
    attachments: int = 0


def parse_packet(text: str) -> Packet:
    """One Socket.IO packet from an Engine.IO message; ``PacketError`` if malformed."""
    if not text or not text[0].isdigit() or int(text[0]) > BINARY_ACK:
        raise PacketError("unknown packet type")
    packet = Packet(int(text[0]))
    i, n = 1, len(text)
    if packet.type in (BINARY_EVENT, BINARY_ACK):
        dash = text.find("-", i)
        if dash < 0 or not text[i:dash].isdigit():
            raise PacketError("invalid attachment count")
        packet.attachments = int(text[i:dash])
        if packet.attachments > MAX_ATTACHMENTS:
            raise PacketError("too many attachments")
        i = dash + 1
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        end = n if comma < 0 else comma
        packet.namespace = text[i:end]
        i = end + 1 if comma >= 0 else n
    start = i
    while i < n and text[i].isdigit():
        i += 1
    if i > start:
        if i - start > 15:
            raise PacketError("ack id too long")
        packet.id = int(text[start:i])
    if i < n:
        try:
            packet.data = orjson.loads(text[i:])
        except orjson.JSONDecodeError:
            raise PacketError("invalid JSON payload") from None
    _check(packet)
    return packet


def _check(packet: Packet) -> None:
    kind, data = packet.type, packet.data
    if kind == CONNECT:
        if data is not None and not isinstance(data, dict):
            raise PacketError("CONNECT carries an object")
    elif kind == DISCONNECT:
        if data is not None:
            raise PacketError("DISCONNECT carries nothing")
    elif kind in (EVENT, BINARY_EVENT):
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise PacketError("EVENT carries [name, ...args]")
    elif kind in (ACK, BINARY_ACK):
        if not isinstance(data, list) or packet.id is None:
            raise PacketError("ACK carries an id and [args]")
    else:
        raise PacketError("a client does not send CONNECT_ERROR")


def encode(
    kind: int, data: Any = None, *, namespace: str = "/", ack_id: int | None = None
) -> tuple[str, list[bytes]]:
    """A packet's text and its binary attachments (``bytes`` anywhere in ``data`` become
    placeholders, and the packet a BINARY_EVENT/BINARY_ACK)."""
    attachments: list[bytes] = []
    if data is not None and kind in (EVENT, ACK):
        data = _deconstruct(data, attachments)
        if attachments:
            kind = BINARY_EVENT if kind == EVENT else BINARY_ACK
    head = str(kind)
    if attachments:
        head += f"{len(attachments)}-"
    if namespace != "/":
        head += namespace + ","
    if ack_id is not None:
        head += str(ack_id)
    if data is not None:
        head += orjson.dumps(data).decode()
    return head, attachments


def _deconstruct(value: Any, attachments: list[bytes]) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        attachments.append(bytes(value))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(value, list):
        return [_deconstruct(v, attachments) for v in value]
    if isinstance(value, dict):
        return {k: _deconstruct(v, attachments) for k, v in value.items()}
    return value


def _reconstruct(value: Any, attachments: list[bytes]) -> Any:
    if isinstance(value, dict):
        if value.get("_placeholder") is True and isinstance(value.get("num"), int):
            num = value["num"]
            if not 0 <= num < len(attachments):
                raise PacketError("placeholder out of range")
            return attachments[num]
        return {k: _reconstruct(v, attachments) for k, v in value.items()}
    if isinstance(value, list):
        return [_reconstruct(v, attachments) for v in value]
    return value


# ---- namespaces ---------------------------------------------------------------------------


class ConnectRefused(FieldlinkError):
    """A namespace refuses a CONNECT: the client gets CONNECT_ERROR with this message."""

    code = "connect_refused"


class Client:
    """One namespace connection on an Engine.IO session (``socket.id`` in client terms)."""

    def __init__(self, server: SocketIOServer, socket: EngineSocket, namespace: str) -> None:
        self.server = server
        self.socket = socket
        self.namespace = namespace
        self.sid = socket.sid if namespace == "/" else f"{namespace}#{socket.sid}"
        self.data: dict[str, Any] = {}  # the namespace's per-client state

    def emit(self, event: str, *args: Any) -> None:
        self.server.send(self.socket, EVENT, [event, *args], namespace=self.namespace)

    def ack(self, ack_id: int, *args: Any) -> None:
        self.server.send(self.socket, ACK, list(args), namespace=self.namespace, ack_id=ack_id)

    def disconnect(self) -> None:
        """Leave the namespace from the server side."""
        self.server.send(self.socket, DISCONNECT, namespace=self.namespace)
        self.server.leave(self, "server namespace disconnect")


class Namespace(Protocol):
    """What one namespace does. ``connect`` accepts a CONNECT by returning (it must not emit
    yet) or refuses it by raising ``ConnectRefused``; ``connected`` runs once the client has
    its CONNECT reply (it may emit)."""

    def connect(self, client: Client, auth: dict[str, Any] | None) -> None: ...

    def connected(self, client: Client) -> None: ...

    def event(self, client: Client, name: str, args: list[Any], ack_id: int | None) -> None: ...

    def disconnect(self, client: Client, reason: str) -> None: ...

    def upgraded(self, client: Client) -> None:
        """The client's session moved from polling to WebSocket."""


@dataclass(slots=True)
class SocketIOStats:
    connects: int = counter("fieldlink_socketio_connects", "Socket.IO namespace connections")
    refused: dict[str, int] = labelled(
        "fieldlink_socketio_connects_refused", "Socket.IO CONNECTs refused, by reason", "reason"
    )
    events_in: int = counter("fieldlink_socketio_events_received", "Events clients sent")
    malformed: int = counter(
        "fieldlink_socketio_packets_malformed", "Sessions closed for a malformed packet"
    )
    connect_timeouts: int = counter(
        "fieldlink_socketio_connect_timeouts", "Sessions closed that joined no namespace in time"
    )

    def measures(self) -> Iterator[Measure]:
        return measures_of(self)


@dataclass(slots=True)
class _Session:
    clients: dict[str, Client] = field(default_factory=dict)
    partial: tuple[Packet, list[bytes]] | None = None  # a binary packet waiting for its parts
    timer: asyncio.TimerHandle | None = None


class SocketIOServer:
    """The Socket.IO layer of one path (``engineio.EngineApp``)."""

    def __init__(
        self,
        namespaces: dict[str, Namespace],
        *,
        connect_timeout_s: float = 45.0,
        connected_delay_s: float = 0.0,
        stats: SocketIOStats | None = None,
    ) -> None:
        self.namespaces = namespaces
        self.connect_timeout_s = connect_timeout_s
        # > 0: what a namespace sends on connect goes out that long after the CONNECT reply
        # (the compliance suite's echo server, tests/support/sio_echo.py).
        self.connected_delay_s = connected_delay_s
        self.stats = stats or SocketIOStats()

    # ---- engineio.EngineApp ---------------------------------------------------------------

    def opened(self, socket: EngineSocket) -> None:
        session = _Session()
        socket.state["sio"] = session
        session.timer = asyncio.get_running_loop().call_later(
            self.connect_timeout_s, self._connect_timed_out, socket
        )

    def message(self, socket: EngineSocket, data: str | bytes) -> None:
        session: _Session = socket.state["sio"]
        try:
            if isinstance(data, bytes):
                self._attachment(socket, session, data)
            else:
                if session.partial is not None:
                    raise PacketError("a text packet while attachments were expected")
                packet = parse_packet(data)
                if packet.attachments:
                    session.partial = (packet, [])
                else:
                    self._dispatch(socket, session, packet)
        except PacketError as exc:
            self.stats.malformed += 1
            log.info("socket.io session %s closed: %s", socket.sid[:8], exc)
            socket.close(f"invalid packet: {exc}", notify=False)

    def closed(self, socket: EngineSocket, reason: str) -> None:
        session: _Session | None = socket.state.get("sio")
        if session is None:
            return
        if session.timer is not None:
            session.timer.cancel()
        for client in list(session.clients.values()):
            self.leave(client, reason)

    def upgraded(self, socket: EngineSocket) -> None:
        session: _Session = socket.state["sio"]
        for client in session.clients.values():
            self.namespaces[client.namespace].upgraded(client)

    # ---- packets in -----------------------------------------------------------------------

    def _attachment(self, socket: EngineSocket, session: _Session, data: bytes) -> None:
        if session.partial is None:
            raise PacketError("an unexpected binary message")
        packet, parts = session.partial
        parts.append(data)
        if len(parts) == packet.attachments:
            session.partial = None
            packet.data = _reconstruct(packet.data, parts)
            self._dispatch(socket, session, packet)

    def _dispatch(self, socket: EngineSocket, session: _Session, packet: Packet) -> None:
        kind, name = packet.type, packet.namespace
        if kind == CONNECT:
            self._connect(socket, session, packet)
            return
        client = session.clients.get(name)
        if client is None:
            return  # not (or no longer) connected to that namespace: ignored, like socket.io
        if kind == DISCONNECT:
            self.leave(client, "client namespace disconnect")
        elif kind in (EVENT, BINARY_EVENT):
            self.stats.events_in += 1
            args = packet.data
            self.namespaces[name].event(client, args[0], args[1:], packet.id)
        # ACKs from clients answer server emits with an ack id; the server asks for none.

    def _connect(self, socket: EngineSocket, session: _Session, packet: Packet) -> None:
        name = packet.namespace
        namespace = self.namespaces.get(name)
        if namespace is None:
            self.stats.refused["invalid_namespace"] = (
                self.stats.refused.get("invalid_namespace", 0) + 1
            )
            self.send(socket, CONNECT_ERROR, {"message": "Invalid namespace"}, namespace=name)
            return
        if name in session.clients:
            return
        client = Client(self, socket, name)
        try:
            namespace.connect(client, packet.data)
        except ConnectRefused as exc:
            self.stats.refused[exc.code] = self.stats.refused.get(exc.code, 0) + 1
            error = {"message": exc.message, "data": {"code": exc.code}}
            self.send(socket, CONNECT_ERROR, error, namespace=name)
            return
        session.clients[name] = client
        self.stats.connects += 1
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        self.send(socket, CONNECT, {"sid": client.sid}, namespace=name)
        if self.connected_delay_s > 0:
            asyncio.get_running_loop().call_later(
                self.connected_delay_s, self._connected, namespace, client
            )
        else:
            namespace.connected(client)

    @staticmethod
    def _connected(namespace: Namespace, client: Client) -> None:
        if not client.socket.closing:
            namespace.connected(client)

    def _connect_timed_out(self, socket: EngineSocket) -> None:
        session: _Session = socket.state["sio"]
        session.timer = None
        if not session.clients:
            self.stats.connect_timeouts += 1
            socket.close("no namespace joined in time", notify=False)

    # ---- packets out ----------------------------------------------------------------------

    def send(
        self,
        socket: EngineSocket,
        kind: int,
        data: Any = None,
        *,
        namespace: str = "/",
        ack_id: int | None = None,
    ) -> None:
        text, attachments = encode(kind, data, namespace=namespace, ack_id=ack_id)
        socket.send_text(MESSAGE + text)
        for attachment in attachments:
            socket.send_binary(attachment)

    def leave(self, client: Client, reason: str) -> None:
        session: _Session | None = client.socket.state.get("sio")
        if session is not None and session.clients.pop(client.namespace, None) is not None:
            self.namespaces[client.namespace].disconnect(client, reason)
