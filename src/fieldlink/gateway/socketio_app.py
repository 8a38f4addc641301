"""fieldlink on Socket.IO: the ``/`` namespace that the seeds' clients talk to, and the
renderers of its vocabularies (docs/socketio.md).

Vocabularies. The seeds name the same things differently, and a client must not receive both
names. A connection speaks one vocabulary at a time:

- ``platform`` (multi-tenant platform): on connect the client is in its tenant's room and
  receives ``device:telemetry``, ``device:status`` and ``command:ack``; ``subscribe
  {deviceId}`` adds one device (nothing, if its tenant room already carries it: no event is
  sent twice).
- ``gas`` (gas sensor gateway): ``subscribe:device`` joins one device and receives
  ``device:data`` (at once with the current reading, then live) and ``device:alerts``.
- ``drone`` (drone fleet): ``subscribe {all: true}`` or ``{droneSerial}`` receives
  ``drone:event`` for registry changes of drones.

A connection starts in ``platform`` unless its CONNECT ``auth`` names a vocabulary; the
first subscribe event of another vocabulary switches it (leaving the tenant room it never
asked for). ``send:command`` works in every vocabulary and answers through the ack callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from fieldlink.core import channels
from fieldlink.core.access import DEFAULT_TENANT, Principal, can_subscribe
from fieldlink.core.commands import Command, Status
from fieldlink.core.errors import FieldlinkError, ProtocolError, RateLimited, ValidationError
from fieldlink.core.events import (
    AggregateChanged,
    AlertChanged,
    CommandMoved,
    DeviceAction,
    DeviceChanged,
    DispatchChanged,
    DomainEvent,
    ProposalChanged,
    StatusChanged,
    TelemetryAccepted,
)
from fieldlink.core.model import Record, is_valid_device_id
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.gateway import protocol
from fieldlink.gateway.engineio import SEPARATOR, EngineSocket
from fieldlink.gateway.frames import text_frame
from fieldlink.gateway.hub import Hub
from fieldlink.gateway.socketio import Client, ConnectRefused
from fieldlink.ports import (
    Authenticator,
    Commands,
    DeviceDirectory,
    LatestReadings,
    ProposalDecisions,
)

log = logging.getLogger("fieldlink.socketio")

NOT_RESPONDING = "Device is not responding"


class Vocabulary(StrEnum):
    PLATFORM = "platform"
    GAS = "gas"
    DRONE = "drone"


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def render(vocabulary: Vocabulary, event: DomainEvent) -> tuple[str, dict[str, Any]] | None:
    """The Socket.IO event (name, payload) that ``vocabulary`` makes of a domain event, or
    None if it carries nothing for it. docs/socketio.md has this as a table."""
    if isinstance(event, TelemetryAccepted):
        if vocabulary is Vocabulary.DRONE:
            return None
        record = event.record
        name = "device:data" if vocabulary is Vocabulary.GAS else "device:telemetry"
        return name, telemetry_payload(record)
    if isinstance(event, StatusChanged):
        if vocabulary is not Vocabulary.PLATFORM:
            return None
        return "device:status", {
            "deviceId": event.device_id,
            "status": str(event.status),
            "reason": str(event.reason),
            "timestamp": iso(event.ts_ms),
        }
    if isinstance(event, CommandMoved):
        if vocabulary is not Vocabulary.PLATFORM or not event.final:
            return None
        return "command:ack", command_payload(event.command)
    if isinstance(event, AlertChanged):
        if vocabulary is Vocabulary.DRONE:
            return None
        alert = event.alert
        return "device:alerts", {"deviceId": alert.device_id, "alerts": [alert.to_dict()]}
    if isinstance(event, DeviceChanged):
        if vocabulary is not Vocabulary.DRONE or not event.name.startswith("drone."):
            return None
        return "drone:event", {"event": event.name, "data": drone_data(event)}
    # The VPP's channels reach only clients that asked for them (``subscribe {channel}``),
    # in whatever vocabulary they speak.
    if isinstance(event, AggregateChanged):
        return "aggregate", event.state
    if isinstance(event, DispatchChanged):
        name = "dispatch:optimized" if event.name == "dispatch.optimized" else "dispatch"
        return name, event.data()
    if isinstance(event, ProposalChanged):
        return "proposal", event.proposal
    return None


def drone_data(event: DeviceChanged) -> dict[str, Any]:
    """``{droneSerial, full}`` (created), ``{droneSerial, changes}`` (updated), ``{droneSerial,
    <attribute>: new, changes}`` (an attribute's own event), ``{droneSerial}`` (deleted)."""
    data: dict[str, Any] = {"droneSerial": event.device_id}
    if event.action is DeviceAction.CREATED:
        data["full"] = {"droneSerial": event.device_id, "kind": event.kind, **event.meta}
    if event.changes is not None:
        data["changes"] = {k: {"old": v[0], "new": v[1]} for k, v in event.changes.items()}
        if event.name != "drone.updated":
            for key, (_, new) in event.changes.items():
                data[key] = new
    return data


def telemetry_payload(record: Record) -> dict[str, Any]:
    return {
        "deviceId": record.device_id,
        "data": record.to_event_data(),
        "timestamp": iso(record.ts_ms),
    }


def command_payload(command: Command) -> dict[str, Any]:
    body: dict[str, Any] = {
        "commandId": command.id,
        "deviceId": command.device_id,
        "action": command.action,
        "status": str(command.status),
    }
    for key in ("result", "reason", "error"):
        value = getattr(command, key)
        if value is not None:
            body[key] = value
    return body


class SioRenderer:
    """Domain events as Socket.IO EVENT packets of one vocabulary, framed for one transport
    (``hub.Renderer``): WebSocket frames, or ``\\x1e``-joined packets for a polling reply."""

    def __init__(self, vocabulary: Vocabulary, websocket: bool) -> None:
        self.vocabulary = vocabulary
        self.websocket = websocket
        self.family = f"socketio:{vocabulary}"  # polling and WebSocket share payloads

    def body(self, event: DomainEvent) -> bytes | None:
        rendered = render(self.vocabulary, event)
        if rendered is None:
            return None
        return b"42" + orjson.dumps(rendered)

    def payload(self, event: DomainEvent, channel: str, seq: int, body: bytes) -> bytes:
        return body  # Socket.IO events carry no channel or sequence: the same bytes for all

    def frames(self, payloads: list[bytes]) -> bytes:
        if self.websocket:
            return b"".join(text_frame(p) for p in payloads)
        return SEPARATOR.join(payloads)


RENDERERS = {(v, ws): SioRenderer(v, ws) for v in Vocabulary for ws in (False, True)}


def renderer_for(vocabulary: Vocabulary, socket: EngineSocket) -> SioRenderer:
    return RENDERERS[(vocabulary, socket.websocket is not None)]


class FieldlinkNamespace:
    """The ``/`` namespace (``socketio.Namespace``). Each connected client's Engine.IO
    session is a hub member."""

    def __init__(
        self,
        *,
        hub: Hub,
        devices: DeviceDirectory,
        latest: LatestReadings,
        commands: Commands,
        proposals: ProposalDecisions,
        authenticator: Authenticator,
        limiter: RateLimiter,
        max_per_subject: int = 100,
    ) -> None:
        self.hub = hub
        self.devices = devices
        self.latest = latest
        self.commands = commands
        self.proposals = proposals
        self.authenticator = authenticator
        self.limiter = limiter  # client events per connection
        self.max_per_subject = max_per_subject
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- connect / disconnect -------------------------------------------------------------

    def connect(self, client: Client, auth: dict[str, Any] | None) -> None:
        """Who it is: ``auth.token``, else the handshake's bearer header or session cookie."""
        auth = auth or {}
        socket = client.socket
        token = auth.get("token")
        try:
            if isinstance(token, str):
                socket.principal = self.authenticator.authenticate(
                    token, ("access", "service", "session")
                )
            elif socket.principal is None:
                raise ConnectRefused(
                    "authentication required: connect with auth: {token}", code="missing_token"
                )
            vocabulary = Vocabulary(auth.get("vocabulary", Vocabulary.PLATFORM))
            throttle = protocol.throttle_ms(auth.get("throttleMs", 0))
        except ValueError:
            raise ConnectRefused(
                "vocabulary is platform, gas or drone", code="invalid_vocabulary"
            ) from None
        except ProtocolError as exc:
            raise ConnectRefused(exc.message, code=exc.code) from None
        except ConnectRefused:
            raise
        except FieldlinkError as exc:
            raise ConnectRefused(exc.message, code=exc.code) from None
        principal = socket.principal
        assert principal is not None
        if self.max_per_subject and (
            self.hub.count_subject(principal.subject) >= self.max_per_subject
        ):
            raise ConnectRefused(
                f"at most {self.max_per_subject} connections per user", code="too_many_connections"
            )
        client.data["vocabulary"] = vocabulary
        client.data["chosen"] = "vocabulary" in auth
        client.data["throttle_ms"] = throttle
        # A hub member from now on (before the CONNECT reply): counted against the user's cap
        # and closed with the user's other sessions from the first instant.
        socket.renderer = renderer_for(vocabulary, socket)
        self.hub.add(socket)
        if vocabulary is Vocabulary.PLATFORM:
            self.hub.join(socket, self._tenant_room(principal), throttle)

    def connected(self, client: Client) -> None:
        client.emit("connected", {"clientId": client.sid})

    def disconnect(self, client: Client, reason: str) -> None:
        self.hub.remove(client.socket)
        self.limiter.forget(client.socket)

    def upgraded(self, client: Client) -> None:
        self.hub.switch_renderer(client.socket, RENDERERS[(client.data["vocabulary"], True)])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- events ---------------------------------------------------------------------------

    def event(self, client: Client, name: str, args: list[Any], ack_id: int | None) -> None:
        arg = args[0] if args else None
        wait_s = self.limiter.take(client.socket, time.monotonic())
        if wait_s > 0:
            self.hub.stats.rate_limited += 1
            limited = RateLimited("too many events; slow down", wait_s)
            self._refuse(client, name, limited, ack_id)
            return
        try:
            if name == "subscribe:device":
                self._subscribe_device(client, arg)
            elif name == "unsubscribe:device":
                self.hub.leave(client.socket, channels.device(self._device_id(arg)))
            elif name == "subscribe":
                self._subscribe(client, arg)
            elif name == "unsubscribe":
                self._unsubscribe(client, arg)
            elif name == "send:command":
                self._send_command(client, arg, ack_id)
                return
            elif name in ("proposal:approve", "proposal:reject"):
                self._decide(client, arg, name == "proposal:approve", ack_id)
                return
            else:
                raise ProtocolError(f"unknown event {name[:60]!r}", code="unknown_event")
        except FieldlinkError as exc:
            self._refuse(client, name, exc, ack_id)
            return
        if ack_id is not None:
            client.ack(ack_id, {"ok": True})

    def _refuse(self, client: Client, name: str, exc: FieldlinkError, ack_id: int | None) -> None:
        self.hub.stats.client_errors += 1
        error = {"error": exc.message, "code": exc.code, "event": name}
        if ack_id is not None:
            client.ack(ack_id, error)
        else:
            client.emit("fieldlink:error", error)

    @staticmethod
    def _device_id(value: Any) -> str:
        if isinstance(value, dict):
            value = value.get("deviceId", value.get("droneSerial"))
        if not is_valid_device_id(value):
            raise ValidationError(
                "invalid_device_id", "a device id is 1-128 of A-Z a-z 0-9 . _ : -"
            )
        return str(value)

    def _use(self, client: Client, vocabulary: Vocabulary) -> None:
        """Switch the connection to ``vocabulary`` (its first subscribe of that kind)."""
        current: Vocabulary = client.data["vocabulary"]
        if current is vocabulary:
            return
        if client.data["chosen"] and current is not vocabulary:
            raise ProtocolError(
                f"this connection speaks the {current} vocabulary", code="wrong_vocabulary"
            )
        socket = client.socket
        if current is Vocabulary.PLATFORM:
            self.hub.leave(socket, self._tenant_room(socket.principal))
        client.data["vocabulary"] = vocabulary
        client.data["chosen"] = True
        self.hub.switch_renderer(socket, renderer_for(vocabulary, socket))

    def _authorize(self, socket: EngineSocket, channel: str) -> None:
        principal = socket.principal
        device_tenant = None
        if channel.startswith(channels.DEVICE_PREFIX):
            device = self.devices.get(channel[len(channels.DEVICE_PREFIX) :])
            device_tenant = device.tenant_id if device is not None else None
        if principal is None or not can_subscribe(principal, channel, device_tenant):
            self.hub.stats.forbidden += 1
            raise ProtocolError("not allowed to subscribe to this channel", code="forbidden")

    def _subscribe_device(self, client: Client, arg: Any) -> None:
        device_id = self._device_id(arg)
        channel = channels.device(device_id)
        self._authorize(client.socket, channel)
        self._use(client, Vocabulary.GAS)
        self.hub.join(client.socket, channel, self._throttle(client, arg))
        record = self.latest.latest(device_id)
        if record is not None:
            client.emit("device:data", telemetry_payload(record))

    def _subscribe(self, client: Client, arg: Any) -> None:
        socket = client.socket
        if isinstance(arg, dict) and arg.get("all") is True:
            self._use(client, Vocabulary.DRONE)
            self.hub.join(socket, self._tenant_room(socket.principal), self._throttle(client, arg))
            return
        if isinstance(arg, dict) and "droneSerial" in arg:
            channel = channels.device(self._device_id(arg))
            self._authorize(socket, channel)
            self._use(client, Vocabulary.DRONE)
            self.hub.join(socket, channel, self._throttle(client, arg))
            return
        if isinstance(arg, dict) and isinstance(arg.get("channel"), str):
            # a native channel, e.g. the VPP's aggregate and dispatch (docs/socketio.md)
            channels.parse(arg["channel"])
            channel = channels.resolve(arg["channel"], self._tenant(socket.principal))
            self._authorize(socket, channel)
            self.hub.join(socket, channel, self._throttle(client, arg))
            return
        if isinstance(arg, dict) and "deviceId" in arg:
            channel = channels.device(self._device_id(arg))
            self._authorize(socket, channel)
            self._use(client, Vocabulary.PLATFORM)
            device = self.devices.get(channel[len(channels.DEVICE_PREFIX) :])
            room = self._tenant_room(socket.principal)
            if (
                device is not None
                and room in socket.subscriptions
                and (room == channels.tenant(device.tenant_id) or room == channels.ALL)
            ):
                # Its tenant room already carries this device's events (joining the device
                # too would send each twice); a throttle asked for applies to the room.
                if isinstance(arg, dict) and "throttleMs" in arg:
                    self.hub.join(socket, room, self._throttle(client, arg))
                return
            self.hub.join(socket, channel, self._throttle(client, arg))
            return
        raise ValidationError(
            "invalid_subscription",
            "subscribe with {all: true}, {droneSerial}, {deviceId} or {channel}",
        )

    def _unsubscribe(self, client: Client, arg: Any) -> None:
        socket = client.socket
        if isinstance(arg, dict) and arg.get("all") is True:
            self.hub.leave(socket, self._tenant_room(socket.principal))
        elif isinstance(arg, dict) and isinstance(arg.get("channel"), str):
            self.hub.leave(socket, channels.resolve(arg["channel"], self._tenant(socket.principal)))
        else:
            self.hub.leave(socket, channels.device(self._device_id(arg)))

    def _throttle(self, client: Client, arg: Any) -> int:
        if isinstance(arg, dict) and "throttleMs" in arg:
            return protocol.throttle_ms(arg["throttleMs"])
        throttle: int = client.data["throttle_ms"]
        return throttle

    @staticmethod
    def _tenant(principal: Principal | None) -> str:
        return principal.tenant_id if principal else DEFAULT_TENANT

    @classmethod
    def _tenant_room(cls, principal: Principal | None) -> str:
        return channels.tenant(cls._tenant(principal))

    # ---- VPP proposals ------------------------------------------------------------------------

    def _decide(self, client: Client, arg: Any, approve: bool, ack_id: int | None) -> None:
        """``proposal:approve|reject {proposalId, note?}``: answered through the ack with the
        proposal after the decision (and, when approved, its execution), or ``{error}``."""
        if not isinstance(arg, dict) or not isinstance(arg.get("proposalId"), str):
            raise ValidationError("invalid_proposal", "send {proposalId, note?}")
        principal = client.socket.principal
        assert principal is not None
        self._spawn(self._run_decision(client, principal, arg, approve, ack_id))

    async def _run_decision(
        self,
        client: Client,
        principal: Principal,
        arg: dict[str, Any],
        approve: bool,
        ack_id: int | None,
    ) -> None:
        try:
            proposal = await self.proposals.decide(
                arg["proposalId"], principal, approve, arg.get("note")
            )
        except FieldlinkError as exc:
            if ack_id is not None:
                client.ack(ack_id, {"error": exc.message, "code": exc.code})
            return
        if ack_id is not None:
            client.ack(ack_id, {"proposal": proposal})

    # ---- commands -------------------------------------------------------------------------

    def _send_command(self, client: Client, arg: Any, ack_id: int | None) -> None:
        """``send:command {deviceId, action, params, timeoutMs?}``: answered through the ack
        with the outcome (after the device answers or the deadline passes), or an error."""
        try:
            if not isinstance(arg, dict):
                raise ValidationError("invalid_command", "send {deviceId, action, params}")
            message = {
                "device": arg.get("deviceId"),
                "action": arg.get("action"),
                "params": arg.get("params") or {},
            }
            if "timeoutMs" in arg:
                message["timeout_ms"] = arg["timeoutMs"]
            if "id" in arg:
                message["id"] = arg["id"]
            request = self.commands.parse(message)
            principal = client.socket.principal
            assert principal is not None
            self.commands.authorize(principal, request.device_id)
        except FieldlinkError as exc:
            if ack_id is not None:
                client.ack(ack_id, {"error": exc.message, "code": exc.code})
            return
        self._spawn(self._run_command(client, request, ack_id))

    async def _run_command(self, client: Client, request: Any, ack_id: int | None) -> None:
        try:
            command = await self.commands.send(await self.commands.log(request))
            if not command.terminal:
                command = await self.commands.wait(command)
        except FieldlinkError as exc:
            answer: dict[str, Any] = {"error": exc.message, "code": exc.code}
        except Exception:
            log.exception("socket.io command failed unexpectedly")
            answer = {"error": "internal error", "code": "internal"}
        else:
            answer = outcome(command)
        if ack_id is not None:
            client.ack(ack_id, answer)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def outcome(command: Command) -> dict[str, Any]:
    """What ``send:command``'s ack answers: success with the result, the error, or a timeout
    (``{timeout: true, error: "Device is not responding"}``)."""
    body = command_payload(command)
    if command.status is Status.ACKED:
        body["success"] = True
    elif command.status in (Status.TIMEOUT, Status.SENT, Status.PENDING):
        body["timeout"] = True
        body["error"] = NOT_RESPONDING
    else:
        body.setdefault("error", command.reason or str(command.status))
    return body
