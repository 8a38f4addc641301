"""The seams between the hub and its backends. One small Protocol each; every implementation
(memory, sqlite, and later postgres/redis) honours the contract in the docstring, and the
contract test suite (tests/contract) runs against all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fieldlink.core.commands import Command, Status
from fieldlink.core.model import Device, Record


@dataclass(frozen=True, slots=True)
class Event:
    """A live event on its way to clients.

    ``data`` is the event body already encoded as JSON, exactly once, at the source; the gateway
    wraps it per channel without decoding it again. ``channels`` lists every channel that carries
    it (``device:n1``, ``all``). ``key`` names what the event is about (the device id): a
    client that lags behind receives only the latest event per ``(channel, type, key)``.
    ``local_only`` events (silence-based status) are computed by every instance itself.
    """

    type: str
    channels: tuple[str, ...]
    data: bytes
    key: str = ""
    local_only: bool = False  # derived identically on every instance: never sent to others
    final: bool = False  # the last event of its private channel (a command's terminal state)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a committed batch did with the records it was given."""

    stored: int
    duplicates: int


class CommandLog(Protocol):
    """The persisted command log (every store implements it). State changes are
    compare-and-set on the status, so when several instances race (an ack against the
    deadline sweeper) exactly one wins and a command reaches exactly one terminal state."""

    async def insert_command(self, command: Command) -> bool:
        """Add a new command; False if its id is taken."""

    async def replace_command(self, command: Command, expected: Status) -> bool:
        """Store ``command`` if the stored one is still in ``expected``; False otherwise."""

    async def get_command(self, command_id: str) -> Command | None: ...

    async def list_commands(self, device_id: str, limit: int) -> list[Command]:
        """The device's commands, newest first."""

    async def due_commands(self, now_ms: int, limit: int) -> list[Command]:
        """Open (pending or sent) commands whose deadline has passed."""

    async def pending_commands(self, device_id: str | None) -> list[Command]:
        """Commands still pending (queued for an offline device, or waiting for the broker),
        oldest first: one device's, or every device's for None."""


class Docs(Protocol):
    """Small JSON documents by (kind, key): tenants, users, device credentials."""

    async def put_doc(self, kind: str, key: str, doc: dict[str, Any]) -> None: ...

    async def get_doc(self, kind: str, key: str) -> dict[str, Any] | None: ...

    async def list_docs(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """``(key, doc)`` pairs of one kind, by key."""


class Store(CommandLog, Docs, Protocol):
    """Durable history and the device registry.

    Ordering: writes submitted in order are committed in order. ``write`` returns a future that
    resolves once the records are committed (durable under the store's sync setting) or fails
    with ``DependencyDown``; callers that promise durability (HTTP 2xx, MQTT QoS 1 ack) await
    it, fire-and-forget callers may drop it. Records with the same ``(device_id, seq)`` are
    stored once; later copies count as ``duplicates``. ``close`` commits everything pending.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def write(self, records: Sequence[Record]) -> asyncio.Future[WriteResult]: ...

    def save_device(self, device: Device) -> None:
        """Insert or update a device (ordered with ``write``; committed with the next batch)."""

    async def get_device(self, device_id: str) -> Device | None: ...

    async def list_devices(self) -> list[Device]: ...

    async def query_range(
        self, device_id: str, start_ms: int, end_ms: int, limit: int, newest_first: bool = False
    ) -> list[Record]:
        """Records with ``start_ms <= ts < end_ms``, ordered by time, at most ``limit``."""

    async def query_buckets(
        self, device_id: str, start_ms: int, end_ms: int, bucket_ms: int, agg: str
    ) -> list[dict[str, Any]]:
        """One row per bucket that has data: ``{"ts": bucket_start_ms, metric: value, ...}``
        for every numeric metric; ``agg`` is avg|min|max|last|count."""

    async def latest(self, device_id: str) -> Record | None:
        """The newest stored record of the device (used to rebuild the cache)."""

    async def latest_since(self, since_ms: int) -> list[Record]:
        """The newest record of every device that has one with ``ts >= since_ms`` (the cache
        is rebuilt from this after Redis restarts)."""

    async def query_fleet(
        self,
        start_ms: int,
        end_ms: int,
        bucket_ms: int,
        agg: str,
        metrics: Sequence[str] = (),
        tenant_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every device's numeric metrics aggregated per bucket (``avg|sum|min|max|count``),
        ``[{"ts": bucket_start, metric: value, ...}]`` in time order; only ``metrics`` when
        given; one tenant's devices only when ``tenant_id`` is given. Callers pass whole minutes
        (range and bucket): PostgreSQL answers from its per-minute rollup. Values with
        magnitude >= 1e300 are left out."""


class Cache(Protocol):
    """Latest state per device with a TTL. Never the source of truth: a miss is answered from
    the store. Reads and writes are synchronous for the in-process implementation; a networked
    implementation keeps a local mirror so the hot path never awaits it."""

    def set_latest(self, record: Record, now_ms: int) -> None:
        """This instance ingested the record: remember it (and publish it to a shared cache)."""

    def remember(self, record: Record, now_ms: int) -> None:
        """Another instance ingested it (and wrote any shared cache): update local reads only."""

    def get_latest(self, device_id: str, now_ms: int) -> Record | None: ...


EventHandler = Callable[[Event], None]


class Bus(Protocol):
    """Carries events from the instance that produced them to every gateway.

    The in-process bus is single node only. Delivery is at most once; a handler is called in
    publish order for events of one producer, and must not block (it only enqueues). Handlers
    registered before ``publish`` see every event published after registration. This
    instance's events reach its own handlers synchronously inside ``publish``.
    """

    def subscribe(self, handler: EventHandler) -> None: ...

    def publish(self, event: Event) -> None: ...

    async def close(self) -> None: ...
