"""The native ``/ws`` protocol (docs/protocol.md): its renderer and its session handler.

``NativeRenderer`` turns domain events into ``{"type", "channel", "seq", "data"}`` messages:
the event's body is encoded once, each channel's envelope is byte concatenation around it, and
a channel's pending messages become one text frame (a JSON array under load).

``NativeSession`` handles what a native client sends: subscribe (authorized against the
caller's tenant, answered with the channel's snapshot), unsubscribe, token refresh, commands
(authorized, logged and sent by the command service; the requester joins the command's
private channel before its first event) and ping. Mistakes are answered with an error frame;
the connection stays open. One instance serves every native connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import orjson

from fieldlink.core import channels
from fieldlink.core.access import Principal, can_subscribe
from fieldlink.core.errors import FieldlinkError, Forbidden, ProtocolError, ValidationError
from fieldlink.core.events import DomainEvent
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.gateway import protocol
from fieldlink.gateway.frames import text_frame
from fieldlink.gateway.hub import Hub, Member
from fieldlink.ports import Authenticator, Commands, DeviceDirectory, ProposalDecisions

log = logging.getLogger("fieldlink.gateway")

MAX_EVENTS_PER_FRAME = 500


def frames_for(payloads: list[bytes]) -> bytes:
    """Frames for a list of event payloads: one object, or JSON arrays of at most
    MAX_EVENTS_PER_FRAME events."""
    if len(payloads) == 1:
        return text_frame(payloads[0])
    return b"".join(
        text_frame(b"[" + b",".join(payloads[i : i + MAX_EVENTS_PER_FRAME]) + b"]")
        for i in range(0, len(payloads), MAX_EVENTS_PER_FRAME)
    )


class NativeRenderer:
    """Domain events as native ``/ws`` messages (``hub.Renderer``)."""

    family = "native"

    def body(self, event: DomainEvent) -> bytes:
        return orjson.dumps(event.data())

    def payload(self, event: DomainEvent, channel: str, seq: int, body: bytes) -> bytes:
        return protocol.event_payload(event.type, channel, seq, body)

    def frames(self, payloads: list[bytes]) -> bytes:
        return frames_for(payloads)


class NativeMember(Member, Protocol):
    """A native connection as the session handler sees it (gateway/ws.py implements it)."""

    def send(self, payload: bytes) -> None:
        """One message as a text frame, now."""

    def reauthenticate(self, principal: Principal) -> None:
        """A fresh token for the same user: adopt it and its expiry."""


SnapshotFn = Callable[[str], bytes]
"""The JSON snapshot of a channel (latest state) for a ``subscribed`` reply."""


class NativeSession:
    renderer = NativeRenderer()

    def __init__(
        self,
        *,
        hub: Hub,
        snapshot: SnapshotFn,
        devices: DeviceDirectory,
        commands: Commands,
        proposals: ProposalDecisions,
        authenticator: Authenticator,
        limiter: RateLimiter,
        clock_ms: Callable[[], int],
    ) -> None:
        self.hub = hub
        self.snapshot = snapshot
        self.devices = devices
        self.commands = commands
        self.proposals = proposals
        self.authenticator = authenticator
        self.limiter = limiter
        self.clock_ms = clock_ms
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- connection lifecycle (gateway/ws.py) -------------------------------------------

    def opened(self, member: NativeMember) -> None:
        self.hub.add(member)
        principal = member.principal
        identity = (
            {"tenant": principal.tenant_id, "role": str(principal.role)} if principal else None
        )
        member.send(protocol.connected(member.client_id, self.clock_ms(), identity))

    def closed(self, member: NativeMember) -> None:
        self.hub.remove(member)
        self.limiter.forget(member)

    async def close(self) -> None:
        """Cancel commands still being handed to the command service (shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- client messages ----------------------------------------------------------------

    def received(self, member: NativeMember, payload: bytes) -> None:
        """One client text message."""
        stats = self.hub.stats
        wait_s = self.limiter.take(member, time.monotonic())
        if wait_s > 0:
            stats.rate_limited += 1
            member.send(protocol.rate_limited(int(wait_s * 1000) + 1))
            return
        message: dict[str, Any] | None = None
        try:
            message = protocol.parse_client_message(payload)
            kind = message["type"]
            if kind == "subscribe":
                self._subscribe(member, message)
            elif kind == "unsubscribe":
                name = self._resolve(member, message["channel"])
                self.hub.leave(member, name)
                member.send(protocol.unsubscribed(name, message))
            elif kind == "auth":
                member.send(self._refresh(member, message))
            elif kind == "command":
                self._command(member, message)
            elif kind == "decide":
                self._spawn(self._decide(member, message))
            else:
                member.send(protocol.pong(message, self.clock_ms()))
        except ProtocolError as exc:
            stats.client_errors += 1
            member.send(protocol.error(exc.code, exc.message, message))

    def binary(self, member: NativeMember) -> None:
        """A binary message: this protocol is JSON text only."""
        self.hub.stats.client_errors += 1
        member.send(protocol.error("unsupported_data", "send JSON text frames, not binary"))

    @staticmethod
    def _resolve(member: NativeMember, channel: str) -> str:
        principal = member.principal
        return channels.resolve(channel, principal.tenant_id) if principal else channel

    def _subscribe(self, member: NativeMember, message: dict[str, Any]) -> None:
        name = self._resolve(member, message["channel"])
        if not self._may_subscribe(member.principal, name):
            self.hub.stats.forbidden += 1
            raise ProtocolError("not allowed to subscribe to this channel", code="forbidden")
        seq = self.hub.join(member, name, message.get("throttle_ms", 0))
        member.send(protocol.subscribed(name, seq, self.snapshot(name), message))

    def _may_subscribe(self, principal: Principal | None, channel: str) -> bool:
        if principal is None:
            return False
        device_tenant = None
        if channel.startswith(channels.DEVICE_PREFIX):
            device = self.devices.get(channel[len(channels.DEVICE_PREFIX) :])
            device_tenant = device.tenant_id if device is not None else None
        return can_subscribe(principal, channel, device_tenant)

    def _refresh(self, member: NativeMember, message: dict[str, Any]) -> bytes:
        """``{"type": "auth", "token"}``: a fresh token for the same user and tenant moves the
        connection's expiry."""
        current = member.principal
        token = message.get("token")
        try:
            if not isinstance(token, str) or current is None:
                raise ProtocolError("send {'type': 'auth', 'token': ...}", code="invalid_token")
            fresh = self.authenticator.authenticate(token, ("access", "service"))
            if (fresh.subject, fresh.tenant_id) != (current.subject, current.tenant_id):
                raise Forbidden("a refresh must be for the same user", code="forbidden")
        except FieldlinkError as exc:
            return protocol.error(exc.code, exc.message, message)
        member.reauthenticate(fresh)
        return protocol.auth_ok(fresh.expires_ms, message)

    def _command(self, member: NativeMember, message: dict[str, Any]) -> None:
        """A ``command`` message: authorized and parsed now, logged and sent in a task."""
        commands = self.commands
        given = message.get("id")
        shown_id = given if isinstance(given, str) else None
        try:
            request = commands.parse(message)
        except ValidationError as exc:
            member.send(protocol.command_refused(shown_id, exc.code, exc.message))
            return
        principal = member.principal
        try:
            if principal is None:
                raise Forbidden("sign in first", code="forbidden")
            commands.authorize(principal, request.device_id)
        except FieldlinkError as exc:
            self.hub.stats.forbidden += 1
            member.send(protocol.command_refused(request.id, exc.code, exc.message))
            return
        self._spawn(self._run_command(member, request))

    async def _decide(self, member: NativeMember, message: dict[str, Any]) -> None:
        """``{"type": "decide", "proposal", "decision", "note"?}``: an operator approves or
        rejects an agent proposal (docs/vpp.md); answered with ``decided`` or ``error``."""
        principal = member.principal
        try:
            if principal is None:
                raise Forbidden("sign in first", code="forbidden")
            proposal = await self.proposals.decide(
                message["proposal"],
                principal,
                message["decision"] == "approve",
                message.get("note"),
            )
        except FieldlinkError as exc:
            member.send(protocol.error(exc.code, exc.message, message))
            return
        member.send(protocol.decided(orjson.dumps(proposal), message))

    async def _run_command(self, member: NativeMember, request: Any) -> None:
        command_id = request.id
        try:
            command = await self.commands.log(request)
            command_id = command.id
            self.hub.join_private(member, channels.command(command.id))
            await self.commands.send(command)
        except FieldlinkError as exc:
            member.send(protocol.command_refused(command_id, exc.code, exc.message))
        except Exception:
            log.exception("command %s failed unexpectedly", command_id)
            member.send(protocol.command_refused(command_id, "internal", "internal error"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
