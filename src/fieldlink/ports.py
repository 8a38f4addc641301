"""The seams of the hub. One small Protocol each, handed to a component's constructor.

Backends (store, cache, bus): every implementation (memory, SQLite, PostgreSQL, Redis) honours
the contract in the docstring, and the contract suites in tests/contract run against all of
them. The other seams (devices, credentials, the MQTT publisher, broker accounts, sessions) are
how services and transports reach each other without importing each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fieldlink.core.access import Principal
from fieldlink.core.alerts import Alert
from fieldlink.core.commands import Command, CommandRequest, Status
from fieldlink.core.events import DeviceStatus, DomainEvent
from fieldlink.core.measures import Measure
from fieldlink.core.model import Device, Record
from fieldlink.core.topics import TopicMatch


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


class AlertLog(Protocol):
    """Persisted alerts (every store implements it). At most one alert per (rule, device) is
    open (active or acknowledged): ``insert_alert`` refuses a second, so instances racing to
    raise the same crossing store one. Changes are compare-and-set on ``version``."""

    async def insert_alert(self, alert: Alert) -> bool:
        """Add a new alert; False if one is already open for its rule and device."""

    async def replace_alert(self, alert: Alert, expected_version: int) -> bool:
        """Store ``alert`` if the stored one still has ``expected_version``."""

    async def get_alert(self, alert_id: str) -> Alert | None: ...

    async def list_alerts(
        self,
        *,
        tenant_id: str | None = None,
        device_id: str | None = None,
        states: Sequence[str] = (),
        level: str | None = None,
        since_ms: int | None = None,
        limit: int = 500,
    ) -> list[Alert]:
        """Newest first (by last change); filters combine."""

    async def open_alerts(self) -> list[Alert]:
        """Every open alert (the evaluator's state after a restart or failover)."""


class Leases(Protocol):
    """Named leases: one holder at a time (the leader of a job among several instances)."""

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int, now_ms: int) -> bool:
        """Take or renew the lease until ``now_ms + ttl_ms``: True if ``holder`` has it now
        (it was free, expired, or already its own)."""


class Docs(Protocol):
    """Small JSON documents by (kind, key): tenants, users, device credentials."""

    async def put_doc(self, kind: str, key: str, doc: dict[str, Any]) -> None: ...

    async def get_doc(self, kind: str, key: str) -> dict[str, Any] | None: ...

    async def list_docs(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """``(key, doc)`` pairs of one kind, by key."""

    async def swap_doc(
        self, kind: str, key: str, doc: dict[str, Any], expected_version: int | None
    ) -> bool:
        """Compare-and-set on the documents' integer ``"version"`` field: store ``doc`` if the
        stored document's version is ``expected_version`` (``None``: only if there is no
        document under the key). True if it was stored; False (nothing written) otherwise.
        Concurrent swaps from several instances on the same key: exactly one wins."""


class FleetPower(Protocol):
    """The VPP's fleet power history (docs/vpp.md)."""

    async def fleet_power(
        self, start_ms: int, end_ms: int, bucket_ms: int, tenant_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Per bucket with data, in time order: ``{"ts": bucket_start, "power_kw": P,
        "nodes": N, "capacity_kw": C}``. A node is a device whose meta declares a positive
        ``capacity_kw``. For each minute m, P(m) is the sum over the nodes that reported
        ``power_kw`` in m of each node's average ``power_kw`` in m, N(m) the number of those
        nodes and C(m) the sum of their capacities; a bucket's values are the means of P, N
        and C over its minutes that have data. Range and bucket are whole minutes; one
        tenant's nodes only when ``tenant_id`` is given. Values of magnitude >= 1e300 are left
        out. Memory and SQLite judge "node" and capacity by the device's meta now (a deleted
        device drops out); PostgreSQL by what held when the rows were written (its rollup)."""


class Store(CommandLog, AlertLog, Leases, Docs, FleetPower, Protocol):
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

    async def delete_device(self, device_id: str, purge: bool) -> int:
        """Remove the device row (after what was queued before); with ``purge`` also its
        telemetry rows. Returns how many telemetry rows were removed."""

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
        """This instance ingested the record: remember it (and publish it to a shared cache).
        A record older than the one held (and not expired) is ignored."""

    def remember(self, record: Record, now_ms: int) -> None:
        """Another instance ingested it (and wrote any shared cache): update local reads only."""

    def get_latest(self, device_id: str, now_ms: int) -> Record | None:
        """The newest record set or remembered within the TTL, else None."""

    async def rebuild(self, now_ms: int) -> int:
        """Write every live entry back to the shared cache (after it restarted empty); returns
        how many. The in-process cache has nothing to rebuild."""

    async def close(self) -> None: ...


EventHandler = Callable[[DomainEvent], None]
ResumeHandler = Callable[[], Awaitable[None]]


class Bus(Protocol):
    """Carries domain events from the instance that produced them to every handler.

    Delivery is at most once. Handlers are called in publish order for the events of one
    producer and must not block (they only enqueue or update memory). This instance's events
    reach its handlers synchronously inside ``publish`` (except ``remote_only`` handlers);
    other instances' events (never ``local_only`` ones) arrive through ``start``ed listening.
    A handler registered before ``publish`` sees every event published after registration.
    The in-process bus is single node only: it has no remote events and never resumes.
    """

    def subscribe(self, handler: EventHandler, *, remote_only: bool = False) -> None:
        """Call ``handler`` for every event; with ``remote_only``, only for other instances'
        events (read models follow them), before the other handlers see them."""

    def on_resume(self, handler: ResumeHandler) -> None:
        """Await ``handler`` each time the bus is back after losing other instances (events
        were missed meanwhile), before later remote events are delivered."""

    def publish(self, event: DomainEvent) -> None: ...

    async def start(self) -> None:
        """Listen to other instances; returns once nothing published from now on is missed."""

    async def close(self) -> None: ...

    def ok(self) -> bool:
        """Health: False while other instances are unreachable."""

    def measures(self) -> Iterable[Measure]: ...


class DeviceDirectory(Protocol):
    """Who the registered devices are (the device registry)."""

    def get(self, device_id: str) -> Device | None: ...

    def tenant_of(self, device_id: str) -> str:
        """Its registration's tenant, else its credentials', else the default tenant."""


class CredentialDirectory(Protocol):
    """Which devices have credentials (the identity service)."""

    def credential_tenant(self, device_id: str) -> str | None:
        """The tenant a device's credentials assign it to; None for a device without any."""


class BrokerAccounts(Protocol):
    """The embedded broker's per-device accounts (``--device-auth``)."""

    def add_user(self, device_id: str, broker_hash: str) -> None:
        """Let the device log in with the key whose broker hash this is (reloads the broker)."""


class ControlPublisher(Protocol):
    """Messages from the hub to devices (commands on ``edge/{id}/control``), QoS 1.

    ``publish`` never blocks: it hands the message to the broker connection or to a bounded
    outbox in order, and returns False when the connection is down or the outbox is full (the
    caller keeps the command pending). ``connections`` counts successful connects, so a caller
    can tell that the link came back and send what it held back."""

    @property
    def connected(self) -> bool: ...

    @property
    def connections(self) -> int: ...

    def publish(self, topic: str, payload: bytes) -> bool: ...


class SessionCloser(Protocol):
    """Live client sessions (the gateway hub)."""

    def close_subject(self, subject: str, code: int, reason: str) -> int:
        """Close every live session of one user with ``code``; returns how many."""


class PresenceView(Protocol):
    """Devices' online/offline status (the presence service)."""

    def status(self, device_id: str) -> DeviceStatus: ...


# ---- what the MQTT listener hands each topic kind to ------------------------------------


class TelemetryIntake(Protocol):
    """Telemetry and custom-route topics (the ingestor)."""

    def ingest_mqtt(
        self, match: TopicMatch, topic: str, payload: bytes
    ) -> asyncio.Future[WriteResult] | None:
        """Handle one message; the future to wait for before acknowledging it (its store
        batch), or None when nothing is stored. Never raises for bad input."""

    def refuse(self, reason: str) -> None:
        """A message on no known topic, or an undecodable one: counted."""

    async def settled(self) -> None:
        """Returns once nothing handed in is still on its way to the store."""


class StatusIntake(Protocol):
    """Status topics, last wills included (the presence service)."""

    def status_message(self, device_id: str, payload: bytes) -> None: ...


class AckIntake(Protocol):
    """Command answers on ``edge/{id}/ack`` (the command service)."""

    def handle_ack(self, device_id: str, payload: bytes) -> asyncio.Future[Any]:
        """The future resolves once the answer is in the command log (acknowledge then)."""


# ---- what gateways and the REST API use -------------------------------------------------


class Authenticator(Protocol):
    """Verifies tokens (the identity service)."""

    def authenticate(self, token: str, kinds: tuple[str, ...]) -> Principal:
        """The token's principal; ``Unauthorized`` (counted) for a bad, expired or revoked
        token or one of another kind."""


class Commands(Protocol):
    """Commands to devices (the command service), as a client session uses them."""

    def parse(self, obj: Any, device_id: str | None = None) -> CommandRequest:
        """A checked request; ``ValidationError`` otherwise."""

    def authorize(self, principal: Principal, device_id: str) -> None:
        """``NotFound`` (another tenant's device, alike an unknown one) or ``Forbidden``."""

    async def log(self, request: CommandRequest, command_id: str | None = None) -> Command:
        """Logged, not yet sent; ``Conflict`` for a taken id."""

    async def send(self, command: Command) -> Command:
        """Its first event, then sent (or failed, rejected, queued); as it stands."""

    async def wait(self, command: Command, extra_s: float = 1.0) -> Command:
        """The command once terminal, or as it stands ``extra_s`` after its deadline."""


class LatestReadings(Protocol):
    """Each device's current reading (the latest-state cache, through the views)."""

    def latest(self, device_id: str) -> Record | None:
        """The newest record within the cache TTL, else None."""


class Probe(Protocol):
    """Something ``/health`` asks (the store writer, the MQTT listener, the bus)."""

    def ok(self) -> bool:
        """Usable right now."""


class OpenAlerts(Protocol):
    """The open alerts as this instance knows them (the alert service)."""

    def open_alerts(
        self, tenant_id: str | None = None, device_id: str | None = None
    ) -> list[Alert]:
        """Most severe and newest first."""


class ProposalDecisions(Protocol):
    """Operators' decisions on agent proposals (services/proposals.py)."""

    async def decide(
        self, proposal_id: str, principal: Principal, approve: bool, note: str | None = None
    ) -> dict[str, Any]:
        """Approve (and execute, once) or reject a pending proposal; ``Conflict`` when it was
        decided already or has expired."""
