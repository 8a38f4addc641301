"""Channels, membership and corked fan-out, with an explicit overload policy.

Theory of operation. ``publish`` (the bus handler) gives each event the next sequence number
of every channel that carries it and, if the channel has members, appends the event's JSON to
the channel's pending list. A flush, scheduled at most once at a time, turns each channel's
pending list into ONE text frame (a single event, or a JSON array of events under load), and
writes to each member ONE buffer holding the frames of all its channels. Cost per event is
O(channels); cost per member is one write per flush, never an await.

Flushes run on the next loop tick when the hub is idle. When a flush was expensive (many
members), the next one waits as long as the last one took, so fan-out uses at most about half
of the loop and events batch up instead of queueing behind syscalls.

Slow clients. When a member's transport buffer passes ``max_pending_bytes`` the transport
pauses it; while paused it is not written to, and its events are conflated: it keeps only the
latest event per (channel, type, device), so its backlog is bounded by the number of devices,
not by time. When the buffer drains the backlog is written as one frame (sequence numbers show
the gap). A member paused longer than ``slow_timeout_s``, or whose buffer passes
``4 * max_pending_bytes``, is closed with ``CloseCode.SLOW_CONSUMER`` and counted; nobody else
waits for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fieldlink.core import channels
from fieldlink.core.closecodes import CloseCode
from fieldlink.core.errors import ProtocolError
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.gateway import protocol
from fieldlink.gateway.frames import text_frame
from fieldlink.ports import Event

MAX_EVENTS_PER_FRAME = 500


class Member(Protocol):
    """What the hub needs of a connected client (gateway/ws.py implements it)."""

    client_id: str
    subscriptions: set[str]
    out: list[bytes]
    closing: bool
    paused_since: float | None
    backlog: dict[tuple[str, str, str], bytes]

    def write(self, data: bytes) -> None: ...

    def buffered_bytes(self) -> int: ...

    def send(self, payload: bytes) -> None: ...

    def kick(self, code: int, reason: str) -> None: ...


class Channel:
    __slots__ = ("members", "name", "pending", "pending_keys", "seq")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.members: set[Member] = set()
        self.pending: list[bytes] = []
        self.pending_keys: list[tuple[str, str, str]] = []


def frames_for(payloads: list[bytes]) -> bytes:
    """Frames for a list of event payloads: one object, or JSON arrays of at most
    MAX_EVENTS_PER_FRAME events."""
    if len(payloads) == 1:
        return text_frame(payloads[0])
    return b"".join(
        text_frame(b"[" + b",".join(payloads[i : i + MAX_EVENTS_PER_FRAME]) + b"]")
        for i in range(0, len(payloads), MAX_EVENTS_PER_FRAME)
    )


@dataclass(slots=True)
class HubStats:
    connected: int = 0
    connections_total: int = 0
    events_published: int = 0
    deliveries: int = 0
    frames_written: int = 0
    flushes: int = 0
    slow_disconnects: int = 0
    conflated: int = 0
    client_errors: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # handshakes refused, by code
    forbidden: int = 0  # subscribes and commands refused by authorization
    rate_limited: int = 0  # client messages over the per-connection rate
    expired: int = 0  # connections closed because their token expired

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1


SnapshotFn = Callable[[str], bytes]
"""Returns the JSON snapshot of a channel (latest state) for a ``subscribed`` reply."""


class Hub:
    def __init__(
        self,
        snapshot: SnapshotFn,
        *,
        max_pending_bytes: int = 1024 * 1024,
        slow_timeout_s: float = 10.0,
        flush_backoff: float = 1.0,
        max_flush_delay_s: float = 0.05,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.snapshot = snapshot
        self.max_pending_bytes = max_pending_bytes
        self.slow_timeout_s = slow_timeout_s
        self.paused: set[Member] = set()
        self.flush_backoff = flush_backoff
        self.max_flush_delay_s = max_flush_delay_s
        self.clock_ms = clock_ms
        self.channels: dict[str, Channel] = {}
        self.members: set[Member] = set()
        self.stats = HubStats()
        self._dirty: list[Channel] = []
        self._scheduled = False
        self._next_flush_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Commands from clients go to the command service (wired by the runtime).
        self.on_command: Callable[[Member, dict[str, Any]], None] | None = None
        # Authorization (wired by the runtime): may this member join this channel?
        self.authorize: Callable[[Member, str], bool] | None = None
        # A client's {"type": "auth", "token"} (token refresh); returns the reply frame.
        self.on_auth: Callable[[Member, dict[str, Any]], bytes] | None = None
        # Per-connection message rate (the runtime sets it from its settings).
        self.message_limiter = RateLimiter(50.0, 100.0)
        self.private_channel_ttl_s = 5.0

    # ---- events in ----------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Bus handler: sequence the event on each of its channels and queue it for members."""
        self.stats.events_published += 1
        for name in event.channels:
            channel = self.channels.get(name)
            if channel is None:
                if name.startswith(channels.COMMAND_PREFIX):
                    continue  # a private channel with no member here: nothing to keep
                channel = self.channels[name] = Channel(name)
            elif event.final and name.startswith(channels.COMMAND_PREFIX):
                self.close_private(name)
            channel.seq += 1
            if channel.members:
                if not channel.pending:
                    self._dirty.append(channel)
                channel.pending.append(
                    protocol.event_payload(event.type, name, channel.seq, event.data)
                )
                channel.pending_keys.append((name, event.type, event.key or str(channel.seq)))
        if self._dirty and not self._scheduled:
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
        """Write every pending event to its channels' members: one write per member."""
        self._scheduled = False
        if not self._dirty:
            return
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, []
        touched: list[Member] = []
        deliveries = 0
        for channel in dirty:
            pending, channel.pending = channel.pending, []
            keys, channel.pending_keys = channel.pending_keys, []
            members = channel.members
            if not members:
                continue
            blob = frames_for(pending)
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

    def _conflate(
        self, member: Member, keys: list[tuple[str, str, str]], payloads: list[bytes]
    ) -> None:
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
            member.write(frames_for(payloads))

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

    def _kick_slow(self, member: Member, reason: str) -> None:
        self.stats.slow_disconnects += 1
        self.kick(member, CloseCode.SLOW_CONSUMER, reason)

    # ---- members ------------------------------------------------------------------------

    def add(self, member: Member) -> None:
        self.members.add(member)
        self.stats.connected = len(self.members)
        self.stats.connections_total += 1
        principal = getattr(member, "principal", None)
        identity = (
            {"tenant": principal.tenant_id, "role": str(principal.role)} if principal else None
        )
        member.send(protocol.connected(member.client_id, self.clock_ms(), identity))

    def remove(self, member: Member) -> None:
        """Forget a member (its connection is gone). Idempotent."""
        for name in member.subscriptions:
            channel = self.channels.get(name)
            if channel is not None:
                channel.members.discard(member)
        member.subscriptions.clear()
        member.backlog.clear()
        self.message_limiter.forget(member)
        self.paused.discard(member)
        self.members.discard(member)
        self.stats.connected = len(self.members)

    def kick(self, member: Member, code: int, reason: str) -> None:
        self.remove(member)
        member.kick(code, reason)

    def subscribe(self, member: Member, name: str, request: dict[str, Any] | None = None) -> None:
        """Join a channel and answer with its snapshot.

        Pending events are flushed first, so the member receives exactly the events published
        after its snapshot, each once, in order.
        """
        if self._dirty:
            self.flush()
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name)
        channel.members.add(member)
        member.subscriptions.add(name)
        member.send(protocol.subscribed(name, channel.seq, self.snapshot(name), request))

    def unsubscribe(self, member: Member, name: str, request: dict[str, Any] | None = None) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            channel.members.discard(member)
        member.subscriptions.discard(name)
        member.send(protocol.unsubscribed(name, request))

    def handle_message(self, member: Member, payload: bytes) -> None:
        """One client text message. Mistakes are answered with an error frame; the connection
        stays open."""
        message: dict[str, Any] | None = None
        wait_s = self.message_limiter.take(member, time.monotonic())
        if wait_s > 0:
            self.stats.rate_limited += 1
            member.send(protocol.rate_limited(int(wait_s * 1000) + 1))
            return
        try:
            message = protocol.parse_client_message(payload)
            kind = message["type"]
            if kind == "subscribe":
                if self.authorize is not None and not self.authorize(member, message["channel"]):
                    self.stats.forbidden += 1
                    raise ProtocolError(
                        "not allowed to subscribe to this channel", code="forbidden"
                    )
                self.subscribe(member, message["channel"], message)
            elif kind == "unsubscribe":
                self.unsubscribe(member, message["channel"], message)
            elif kind == "auth":
                if self.on_auth is None:
                    raise ProtocolError("authentication is off here", code="unsupported")
                member.send(self.on_auth(member, message))
            elif kind == "command":
                if self.on_command is None:
                    raise ProtocolError("commands are not enabled here", code="unsupported")
                self.on_command(member, message)
            else:
                member.send(protocol.pong(message, self.clock_ms()))
        except ProtocolError as exc:
            self.stats.client_errors += 1
            member.send(protocol.error(exc.code, exc.message, message))

    def count_subject(self, subject: str) -> int:
        """Open connections authenticated as ``subject`` (per-user cap)."""
        return sum(1 for m in self.members if getattr(m, "subject", None) == subject)

    def join_private(self, member: Member, name: str) -> None:
        """Add a member to a private channel (a command's requester) without a reply. The
        channel is dropped ``private_channel_ttl_s`` after ``close_private``."""
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name)
        channel.members.add(member)
        member.subscriptions.add(name)

    def close_private(self, name: str) -> None:
        """The channel has had its last event: forget it once that is surely flushed."""
        loop = self._loop or asyncio.get_running_loop()
        loop.call_later(self.private_channel_ttl_s, self._drop_channel, name)

    def _drop_channel(self, name: str) -> None:
        channel = self.channels.pop(name, None)
        if channel is not None:
            for member in channel.members:
                member.subscriptions.discard(name)

    def channel_seq(self, name: str) -> int:
        channel = self.channels.get(name)
        return channel.seq if channel else 0

    def subscriber_count(self, name: str) -> int:
        channel = self.channels.get(name)
        return len(channel.members) if channel else 0


__all__ = ["Hub", "HubStats", "Member", "channels"]
