"""Channels, membership and corked fan-out of domain events, with an explicit overload policy.

Theory of operation. Every client connection (a ``Member``) speaks one client protocol, whose
``Renderer`` turns domain events into that protocol's bytes. A channel keeps one
``Audience`` per renderer among its members. ``publish`` (the bus handler) gives the event
the next sequence number of every channel that carries it and, for each audience with
members, renders it once for that channel (the renderer's body of the event is computed once
per event, its per-channel envelope once per channel) and appends it to the audience's pending
list. A flush, scheduled at most once at a time, turns each audience's pending list into one
blob of frames and writes to each member ONE buffer holding the blobs of all its channels.
Cost per event is O(channels x renderers present); cost per member is one write per flush,
never an await.

Flushes run on the next loop tick when the hub is idle. When a flush was expensive (many
members), the next one waits as long as the last one took, so fan-out uses at most about half
of the loop and events batch up instead of queueing behind syscalls.

Display throttle. A member may join a channel with ``throttle_ms`` (a dashboard that cannot
draw faster than a few updates a second). Its audience then holds events back and releases
them at most once per interval: telemetry keeps only the latest per device (a fast device
reaches it at most once per interval, and the last value it sees is the device's last value);
other events are held in order, never dropped. Sequence numbers show the gaps.

Slow clients. When a member's transport buffer passes ``max_pending_bytes`` the transport
pauses it; while paused it is not written to, and its events are conflated: it keeps only the
latest event per (channel, type, key), so its backlog is bounded by the number of devices,
not by time. When the buffer drains the backlog is written at once (sequence numbers show the
gap). A member paused longer than ``slow_timeout_s``, or whose buffer passes
``4 * max_pending_bytes``, is closed with ``CloseCode.SLOW_CONSUMER`` and counted; nobody else
waits for it.

What the hub does not do: parse client messages or decide who may join what (the protocol's
session handler does, gateway/native.py), or know any protocol's wire format (renderers do).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from fieldlink.core import channels
from fieldlink.core.access import Principal
from fieldlink.core.closecodes import CloseCode
from fieldlink.core.events import DomainEvent, EventType
from fieldlink.core.measures import Measure, counter, gauge, labelled, measures_of

ConflationKey = tuple[str, str, str]  # (channel, event type, key)


class Renderer(Protocol):
    """One client protocol's view of domain events. Renderers are stateless and shared.
    Renderers of one ``family`` make the same payloads and differ only in ``frames``."""

    family: str

    def body(self, event: DomainEvent) -> bytes | None:
        """The event's body in this protocol, computed once per event; None if the protocol
        does not carry this event."""

    def payload(self, event: DomainEvent, channel: str, seq: int, body: bytes) -> bytes:
        """The event as sent on one channel (envelope around ``body``)."""

    def frames(self, payloads: list[bytes]) -> bytes:
        """The bytes to write for a channel's pending payloads (all members share them)."""


class Member(Protocol):
    """What the hub needs of a connected client (gateway/ws.py implements it)."""

    client_id: str
    renderer: Renderer
    principal: Principal | None
    subscriptions: dict[str, Audience]  # channel name -> the audience it joined
    out: list[bytes]
    closing: bool
    paused_since: float | None
    backlog: dict[ConflationKey, bytes]

    def write(self, data: bytes) -> None:
        """Write bytes the renderer made (frames) to the transport."""

    def buffered_bytes(self) -> int: ...

    def kick(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` (the hub has already forgotten the member)."""


class Audience:
    """The members of one channel that speak one renderer (at one display throttle), and
    their pending payloads. A throttled audience holds payloads in ``held`` until its timer
    releases them into ``pending``."""

    __slots__ = ("held", "keys", "members", "pending", "renderer", "throttle_s", "timer")

    def __init__(self, renderer: Renderer, throttle_s: float = 0.0) -> None:
        self.renderer = renderer
        self.throttle_s = throttle_s
        self.members: set[Member] = set()
        self.pending: list[bytes] = []
        self.keys: list[ConflationKey] = []
        self.held: dict[ConflationKey, bytes] = {}
        self.timer: asyncio.TimerHandle | None = None


class Channel:
    __slots__ = ("audiences", "name", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.audiences: list[Audience] = []

    def audience(self, renderer: Renderer, throttle_s: float = 0.0) -> Audience:
        for audience in self.audiences:
            if audience.renderer is renderer and audience.throttle_s == throttle_s:
                return audience
        audience = Audience(renderer, throttle_s)
        self.audiences.append(audience)
        return audience

    def has_members(self) -> bool:
        return any(audience.members for audience in self.audiences)


@dataclass(slots=True)
class HubStats:
    connected: int = gauge("fieldlink_ws_clients", "Connected WebSocket clients")
    connections_total: int = counter("fieldlink_ws_connections", "WebSocket connections accepted")
    events_published: int = counter("fieldlink_ws_events", "Events published to the gateway")
    deliveries: int = counter("fieldlink_ws_deliveries", "Events delivered to clients")
    frames_written: int = counter("fieldlink_ws_writes", "Socket writes by the gateway")
    flushes: int = 0
    slow_disconnects: int = counter(
        "fieldlink_ws_slow_disconnects", "Clients closed as slow consumers"
    )
    conflated: int = counter(
        "fieldlink_ws_conflated", "Events replaced by a newer one for a lagging client"
    )
    throttled: int = counter(
        "fieldlink_ws_throttled", "Telemetry replaced by a newer one under a display throttle"
    )
    client_errors: int = counter(
        "fieldlink_ws_client_errors", "Client messages answered with an error"
    )
    refused: dict[str, int] = labelled(
        "fieldlink_ws_handshakes_refused", "WebSocket handshakes refused, by code", "code"
    )
    forbidden: int = counter(
        "fieldlink_ws_forbidden", "Subscribes and commands refused by authorization"
    )
    rate_limited: int = counter(
        "fieldlink_ws_rate_limited", "Client messages refused by the per-connection rate limit"
    )
    expired: int = counter(
        "fieldlink_ws_token_expired", "Connections closed because their token expired"
    )

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1


class Hub:
    """Implements ``ports.SessionCloser``."""

    def __init__(
        self,
        *,
        max_pending_bytes: int = 1024 * 1024,
        slow_timeout_s: float = 10.0,
        flush_backoff: float = 1.0,
        max_flush_delay_s: float = 0.05,
        private_channel_ttl_s: float = 5.0,
    ) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.slow_timeout_s = slow_timeout_s
        self.flush_backoff = flush_backoff
        self.max_flush_delay_s = max_flush_delay_s
        self.private_channel_ttl_s = private_channel_ttl_s
        self.paused: set[Member] = set()
        self.channels: dict[str, Channel] = {}
        self.members: set[Member] = set()
        self.stats = HubStats()
        self._dirty: list[Audience] = []
        self._scheduled = False
        self._next_flush_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- events in ----------------------------------------------------------------------

    def publish(self, event: DomainEvent) -> None:
        """Bus handler: sequence the event on each of its channels and queue it for members."""
        self.stats.events_published += 1
        # Each renderer encodes the event once, whatever the number of channels: usually one
        # renderer is present, so it is kept in locals; a dict only for more.
        first: Renderer | None = None
        first_body: bytes | None = None
        bodies: dict[Renderer, bytes | None] | None = None
        final = event.final
        event_type = event.type
        for name in event.channels:
            channel = self.channels.get(name)
            if channel is None:
                if name.startswith(channels.COMMAND_PREFIX):
                    continue  # a private channel with no member here: nothing to keep
                channel = self.channels[name] = Channel(name)
            elif final and name.startswith(channels.COMMAND_PREFIX):
                self.close_private(name)
            channel.seq += 1
            for audience in channel.audiences:
                if not audience.members:
                    continue
                renderer = audience.renderer
                if renderer is first:
                    body = first_body
                elif first is None:
                    first, body = renderer, renderer.body(event)
                    first_body = body
                else:
                    if bodies is None:
                        bodies = {}
                    if renderer in bodies:
                        body = bodies[renderer]
                    else:
                        body = bodies[renderer] = renderer.body(event)
                if body is None:
                    continue
                payload = renderer.payload(event, name, channel.seq, body)
                if audience.throttle_s:
                    self._hold(audience, event, name, channel.seq, payload)
                    continue
                if not audience.pending:
                    self._dirty.append(audience)
                audience.pending.append(payload)
                audience.keys.append((name, event_type, event.key or str(channel.seq)))
        if self._dirty and not self._scheduled:
            self._schedule()

    def _hold(
        self, audience: Audience, event: DomainEvent, name: str, seq: int, payload: bytes
    ) -> None:
        """A throttled audience: telemetry conflates per device, other events wait in order."""
        held = audience.held
        if event.type is EventType.TELEMETRY:
            key: ConflationKey = (name, event.type, event.key)
            if held.pop(key, None) is not None:
                self.stats.throttled += 1
        else:
            key = (name, event.type, f"{event.key}#{seq}")
        held[key] = payload  # (re)inserted last: release order is arrival order
        if audience.timer is None:
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            audience.timer = loop.call_later(audience.throttle_s, self._release, audience)

    def _release(self, audience: Audience) -> None:
        audience.timer = None
        if not audience.held or not audience.members:
            audience.held.clear()
            return
        if not audience.pending:
            self._dirty.append(audience)
        audience.pending.extend(audience.held.values())
        audience.keys.extend(audience.held.keys())
        audience.held.clear()
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        delay = self._next_flush_at - time.perf_counter()
        if delay <= 0:
            loop.call_soon(self.flush)
        else:
            loop.call_later(min(delay, self.max_flush_delay_s), self.flush)

    def flush(self) -> None:
        """Write every pending event to its audiences' members: one write per member."""
        self._scheduled = False
        if not self._dirty:
            return
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, []
        touched: list[Member] = []
        deliveries = 0
        for audience in dirty:
            pending, audience.pending = audience.pending, []
            keys, audience.keys = audience.keys, []
            members = audience.members
            if not members:
                continue
            blob = audience.renderer.frames(pending)
            deliveries += len(pending) * len(members)
            for member in members:
                if member.paused_since is not None:
                    self._conflate(member, keys, pending)
                    continue
                out = member.out
                if not out:
                    touched.append(member)
                out.append(blob)
        hard_limit = 4 * self.max_pending_bytes
        for member in touched:
            out, member.out = member.out, []
            if member.closing:
                continue
            if member.buffered_bytes() > hard_limit:
                self._kick_slow(member, "slow consumer: outbox over its hard limit")
                continue
            member.write(out[0] if len(out) == 1 else b"".join(out))
        self.stats.deliveries += deliveries
        self.stats.frames_written += len(touched)
        self.stats.flushes += 1
        ended = time.perf_counter()
        self._next_flush_at = ended + (ended - started) * self.flush_backoff

    def _conflate(self, member: Member, keys: list[ConflationKey], payloads: list[bytes]) -> None:
        backlog = member.backlog
        for key, payload in zip(keys, payloads, strict=True):
            if backlog.pop(key, None) is not None:
                self.stats.conflated += 1
            backlog[key] = payload  # re-inserted last: the backlog stays in event order

    # ---- slow consumers -----------------------------------------------------------------

    def pause(self, member: Member) -> None:
        """The member's transport buffer passed the high-water mark."""
        if member.paused_since is None:
            member.paused_since = time.monotonic()
            self.paused.add(member)

    def resume(self, member: Member) -> None:
        """The member's buffer drained: send its conflated backlog as one write."""
        member.paused_since = None
        self.paused.discard(member)
        if member.backlog and not member.closing:
            payloads = list(member.backlog.values())
            member.backlog.clear()
            member.write(member.renderer.frames(payloads))

    def sweep_slow(self, now: float | None = None) -> int:
        """Close members paused for longer than ``slow_timeout_s``. Returns how many."""
        now = time.monotonic() if now is None else now
        stale = [
            m
            for m in self.paused
            if m.paused_since is not None and now - m.paused_since > self.slow_timeout_s
        ]
        for member in stale:
            self._kick_slow(member, "slow consumer: not reading")
        return len(stale)

    async def run_slow_sweeper(self) -> None:
        """Close members that stay paused longer than the slow timeout, until cancelled."""
        interval = max(0.05, min(1.0, self.slow_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.sweep_slow()

    def _kick_slow(self, member: Member, reason: str) -> None:
        self.stats.slow_disconnects += 1
        self.kick(member, CloseCode.SLOW_CONSUMER, reason)

    # ---- members ------------------------------------------------------------------------

    def add(self, member: Member) -> None:
        self.members.add(member)
        self.stats.connected = len(self.members)
        self.stats.connections_total += 1

    def remove(self, member: Member) -> None:
        """Forget a member (its connection is gone). Idempotent."""
        for audience in member.subscriptions.values():
            audience.members.discard(member)
        member.subscriptions.clear()
        member.backlog.clear()
        self.paused.discard(member)
        self.members.discard(member)
        self.stats.connected = len(self.members)

    def kick(self, member: Member, code: int, reason: str) -> None:
        self.remove(member)
        member.kick(code, reason)

    def close_subject(self, subject: str, code: int, reason: str) -> int:
        """Close every connection of one user (``ports.SessionCloser``)."""
        members = [m for m in self.members if m.principal and m.principal.subject == subject]
        for member in members:
            self.kick(member, code, reason)
        return len(members)

    def count_subject(self, subject: str) -> int:
        """Open connections authenticated as ``subject`` (per-user cap)."""
        return sum(1 for m in self.members if m.principal and m.principal.subject == subject)

    def join(self, member: Member, name: str, throttle_ms: int = 0) -> int:
        """Join a channel (again: with new options); returns its sequence number now. Pending
        events are flushed first, so the member receives exactly the events published after
        this call, each once, in order: a snapshot the caller sends right away is consistent
        with that number. ``throttle_ms``: the display throttle (see the module doc)."""
        if self._dirty:
            self.flush()
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name)
        self.leave(member, name)
        audience = channel.audience(member.renderer, throttle_ms / 1000)
        audience.members.add(member)
        member.subscriptions[name] = audience
        return channel.seq

    def leave(self, member: Member, name: str) -> None:
        audience = member.subscriptions.pop(name, None)
        if audience is not None:
            audience.members.discard(member)

    def join_private(self, member: Member, name: str) -> None:
        """Add a member to a private channel (a command's requester). The channel is dropped
        ``private_channel_ttl_s`` after its final event."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name)
        audience = channel.audience(member.renderer)
        audience.members.add(member)
        member.subscriptions[name] = audience

    def switch_renderer(self, member: Member, renderer: Renderer) -> None:
        """Move a member to another renderer in every channel it is in (a Socket.IO client
        that upgraded from polling to WebSocket). Pending events are flushed first, in the old
        form; everything after arrives in the new."""
        if self._dirty:
            self.flush()
        same_payloads = member.renderer.family == renderer.family
        member.renderer = renderer
        for name, old in list(member.subscriptions.items()):
            old.members.discard(member)
            channel = self.channels.get(name)
            if channel is None:
                continue
            audience = channel.audience(renderer, old.throttle_s)
            audience.members.add(member)
            member.subscriptions[name] = audience
            if old.held and same_payloads:
                # Events a throttle holds back are due to this member too: they move with it
                # (another family would need them rendered again; the next ones will be).
                for key, payload in old.held.items():
                    audience.held.setdefault(key, payload)
                if audience.timer is None:
                    loop = self._loop or asyncio.get_running_loop()
                    self._loop = loop
                    audience.timer = loop.call_later(audience.throttle_s, self._release, audience)

    def close_private(self, name: str) -> None:
        """The channel has had its last event: forget it once that is surely flushed."""
        loop = self._loop or asyncio.get_running_loop()
        loop.call_later(self.private_channel_ttl_s, self._drop_channel, name)

    def _drop_channel(self, name: str) -> None:
        channel = self.channels.pop(name, None)
        if channel is not None:
            for audience in channel.audiences:
                for member in audience.members:
                    member.subscriptions.pop(name, None)

    def channel_seq(self, name: str) -> int:
        channel = self.channels.get(name)
        return channel.seq if channel else 0

    def subscriber_count(self, name: str) -> int:
        channel = self.channels.get(name)
        return sum(len(a.members) for a in channel.audiences) if channel else 0

    def measures(self) -> Iterator[Measure]:
        return measures_of(self.stats)
