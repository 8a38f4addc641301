"""The one place configuration becomes implementations, and the order a hub starts and stops.

``build(settings)`` picks each backend by URL scheme (store: ``sqlite://``, ``postgresql://``,
``memory://``; bus and cache: in-process, or ``redis://``; MQTT: the embedded broker or
``mqtt://``), constructs every component with its collaborators, and connects them: bus
subscriptions, the resume handler. It does nothing else. ``Runtime.start``/``stop`` run them
in an order that loses no accepted record: on the way down, ingest stops first, then clients
are flushed, then the store.

The path of a record: ``MqttListener`` -> ``Ingestor`` (registry, cache, presence) -> bus ->
``Hub`` (``NativeRenderer``) -> client, and ``Ingestor`` -> ``StoreWriter`` -> store. The path
of a command: ``NativeSession`` or REST -> ``CommandService`` -> ``MqttPublisher``; its ack:
``MqttListener`` -> ``CommandService`` -> bus.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldlink.api.auth import HttpAuth
from fieldlink.api.context import ApiContext, VppServices
from fieldlink.api.http import HandshakeStats
from fieldlink.api.metrics import metrics_registry
from fieldlink.backends.memory import MemoryBus, MemoryCache, MemoryStore
from fieldlink.core.access import DEFAULT_TENANT
from fieldlink.core.dedupe import DedupeWindow
from fieldlink.core.errors import ValidationError
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.core.rules import AlertRule, parse_rule
from fieldlink.core.status import StatusBook
from fieldlink.core.topics import Route, TopicScheme, route_from_config
from fieldlink.core.vpp import Approval, SocLimits
from fieldlink.gateway.engineio import EngineServer, EngineSettings, EngineStats
from fieldlink.gateway.hub import Hub
from fieldlink.gateway.native import NativeSession
from fieldlink.gateway.socketio import SocketIOServer, SocketIOStats
from fieldlink.gateway.socketio_app import FieldlinkNamespace
from fieldlink.gateway.ws import (
    GatewayConnection,
    GatewaySettings,
    keepalive,
    websocket_protocol_factory,
)
from fieldlink.mqtt.broker import HUB_USER, EmbeddedBroker, mosquitto_hash
from fieldlink.mqtt.listener import MqttListener
from fieldlink.mqtt.publisher import MqttPublisher
from fieldlink.ports import Bus, Cache, Store
from fieldlink.services.agents import AgentService
from fieldlink.services.aggregate import AggregateService
from fieldlink.services.alerts import AlertService
from fieldlink.services.commands import CommandService
from fieldlink.services.dispatch import DispatchBoard, DispatchService
from fieldlink.services.health import Health
from fieldlink.services.identity import (
    IdentityService,
    TokenConfig,
    TokenService,
    load_or_create_secret,
)
from fieldlink.services.ingest import Ingestor
from fieldlink.services.presence import Presence
from fieldlink.services.proposals import ProposalService
from fieldlink.services.registry import DeviceRegistry
from fieldlink.services.replica import Replica
from fieldlink.services.views import DeviceViews
from fieldlink.services.writer import IngestCounters, StoreWriter

from .settings import Settings

log = logging.getLogger("fieldlink")

DEDUPE_WINDOW = 100_000


def now_ms() -> int:
    return int(time.time() * 1000)


def store_from_url(url: str) -> Store:
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        from fieldlink.backends.sqlite import SqliteStore

        path = rest[1:] if rest.startswith("/") and rest[1:2] == "/" else rest
        return SqliteStore(path)
    if scheme in ("postgresql", "postgres"):
        from fieldlink.backends.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:///PATH, postgresql://... or memory://"
    )


async def migrate_database(url: str) -> list[str]:
    """Apply the missing numbered migrations to a PostgreSQL database; the names applied."""
    from fieldlink.backends.postgres import migrate

    return await migrate(url)


def bus_and_cache_from_url(url: str | None, cache_ttl_s: float) -> tuple[Bus, Cache]:
    """In-process (one instance) without a URL; Redis with ``redis://``."""
    if url is None:
        return MemoryBus(), MemoryCache(cache_ttl_s)
    from fieldlink.backends.redis import RedisBus, RedisCache

    return RedisBus(url), RedisCache(url, cache_ttl_s)


def load_routes(path: Path | None) -> tuple[Route, ...]:
    if path is None:
        return ()
    with open(path, "rb") as fh:
        config: dict[str, Any] = tomllib.load(fh)
    return tuple(
        route_from_config(f"route{i}", cfg) for i, cfg in enumerate(config.get("routes", []))
    )


def load_alert_rules(path: Path | None) -> tuple[AlertRule, ...]:
    """``[[rules]]`` tables of a TOML file: each a rule (docs/alerts.md) with an ``id`` and an
    optional ``tenant`` (default: the default tenant)."""
    if path is None:
        return ()
    with open(path, "rb") as fh:
        config: dict[str, Any] = tomllib.load(fh)
    rules = []
    for i, raw in enumerate(config.get("rules", [])):
        try:
            rules.append(
                parse_rule(
                    raw,
                    rule_id=str(raw.get("id") or f"{path.stem}-{i + 1}"),
                    tenant_id=str(raw.get("tenant") or DEFAULT_TENANT),
                )
            )
        except ValidationError as exc:
            raise ValueError(f"{path}: rule {i + 1}: {exc.message} ({exc.path})") from None
    return tuple(rules)


def token_config(settings: Settings) -> TokenConfig:
    """JWT settings: HS256 with the configured secret or ``<data-dir>/jwt.secret``, or
    RS256/ES256 with PEM key files. Several instances must share the secret or keys."""
    algorithm = settings.jwt_algorithm
    if algorithm == "HS256":
        secret = (
            settings.jwt_secret.encode()
            if settings.jwt_secret
            else load_or_create_secret(settings.data_dir)
        )
        return TokenConfig(algorithm, secret=secret)
    private = settings.jwt_private_key_file.read_text() if settings.jwt_private_key_file else None
    public = settings.jwt_public_key_file.read_text() if settings.jwt_public_key_file else None
    return TokenConfig(algorithm, private_key=private, public_key=public)


def mqtt_client_id(settings: Settings) -> str:
    """Stable across restarts of the same hub (same host and data directory), so the broker
    keeps its session and queued messages; different for hubs on other hosts or with other
    data (containers with the same /data path differ by hostname)."""
    if settings.mqtt_client_id:
        return settings.mqtt_client_id
    identity = f"{socket.gethostname()}:{settings.data_dir.resolve()}"
    return f"fieldlink-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


@dataclass
class Runtime:
    """Everything one hub process runs (from ``build``), started and stopped in order."""

    settings: Settings
    store: Store
    cache: Cache
    bus: Bus
    broker: EmbeddedBroker | None
    mqtt_url: str
    identity: IdentityService
    registry: DeviceRegistry
    alerts: AlertService
    aggregate: AggregateService
    board: DispatchBoard
    dispatches: DispatchService
    proposals: ProposalService
    agents: AgentService
    presence: Presence
    writer: StoreWriter
    ingestor: Ingestor
    replica: Replica
    views: DeviceViews
    commands: CommandService
    publisher: MqttPublisher
    listener: MqttListener
    hub: Hub
    native: NativeSession
    socketio: FieldlinkNamespace
    engines: dict[str, EngineServer]
    auth: HttpAuth
    handshake_stats: HandshakeStats
    health: Health
    api: ApiContext
    gateway_settings: GatewaySettings
    ws_protocol: type[GatewayConnection]
    admin_token_path: Path | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        s = self.settings
        if self.broker is not None:
            await self.broker.start()
        await self.store.start()
        await self.identity.load()
        self.admin_token_path = await self.identity.bootstrap(s.data_dir)
        if self.broker is not None and s.device_auth:
            self.broker.set_users(await self.identity.broker_users())
        await self.registry.load()
        await self.replica.warm()  # latest readings survive a restart
        await self.alerts.load()
        self.alerts.start()
        await self.board.load(self.store)
        await self.bus.start()  # listening to other instances before any ingest
        await self.publisher.start()
        await self.listener.start()
        self.agents.start()
        for job in (
            self.aggregate.run(),
            self.presence.run_sweeper(s.status_sweep_s),
            self.commands.run_sweeper(s.command_sweep_s),
            keepalive(self.hub, self.gateway_settings),
            self.hub.run_slow_sweeper(),
        ):
            self._tasks.append(asyncio.create_task(job))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.agents.close()
        await self.dispatches.close()
        await self.commands.close()
        await self.alerts.close()
        await self.native.close()
        await self.socketio.close()
        for engine in self.engines.values():
            engine.close_all()
        await self.listener.stop()
        await self.publisher.stop()
        self.hub.flush()
        try:
            await asyncio.wait_for(self.writer.settled(), self.settings.stop_timeout_s)
        except TimeoutError:
            # The store is down: these stay unacknowledged at the broker (MQTT) and are sent
            # again to the next instance that resumes the session.
            log.warning(
                "stopping with %d records not stored (the store is unavailable)",
                self.ingestor.counters.pending,
            )
        await self.store.close()
        await self.bus.close()
        await self.cache.close()
        if self.broker is not None:
            await self.broker.stop()


def build(settings: Settings) -> Runtime:
    """Construct and connect every component of one hub process (nothing starts here)."""
    s = settings
    clock = now_ms
    scheme = TopicScheme(s.topic_prefix, load_routes(s.routes_file))
    store = store_from_url(s.resolved_database_url())
    bus, cache = bus_and_cache_from_url(s.redis_url, s.cache_ttl_s)
    broker = (
        None
        if s.mqtt_url
        else EmbeddedBroker(
            s.data_dir, s.mqtt_port, device_auth=s.device_auth, prefix=s.topic_prefix
        )
    )
    mqtt_url = s.mqtt_url or broker.url  # type: ignore[union-attr]
    hub_credentials = (
        (HUB_USER, broker.hub_password)
        if broker is not None and s.device_auth
        else s.mqtt_credentials()
    )
    identity = IdentityService(
        store,
        TokenService(token_config(s)),
        broker_hasher=mosquitto_hash,
        broker_accounts=broker if broker is not None and s.device_auth else None,
    )
    registry = DeviceRegistry(store=store, bus=bus, credentials=identity, clock_ms=clock)
    presence = Presence(
        book=StatusBook(int(s.silence_timeout_s * 1000)),
        registry=registry,
        bus=bus,
        clock_ms=clock,
        limits=s.limits,
        flap_window_ms=int(s.flap_window_s * 1000),
    )
    counters = IngestCounters()
    dedupe = DedupeWindow(DEDUPE_WINDOW)
    writer = StoreWriter(store=store, counters=counters, dedupe=dedupe)
    rate = s.mqtt_device_rate_per_s
    ingestor = Ingestor(
        registry=registry,
        presence=presence,
        cache=cache,
        bus=bus,
        writer=writer,
        counters=counters,
        dedupe=dedupe,
        credentials=identity,
        clock_ms=clock,
        limits=s.limits,
        device_limiter=RateLimiter(rate, rate * 2, max_keys=200_000) if rate > 0 else None,
    )
    replica = Replica(
        registry=registry,
        presence=presence,
        cache=cache,
        store=store,
        bus=bus,
        clock_ms=clock,
        cache_ttl_s=s.cache_ttl_s,
    )
    instance_id = f"{socket.gethostname()}-{secrets.token_hex(6)}"  # leases, dispatch runners
    alerts = AlertService(
        store=store,
        bus=bus,
        devices=registry,
        cache=cache,
        clock_ms=clock,
        instance_id=instance_id,
        config_rules=load_alert_rules(s.alert_rules_file),
    )
    aggregate = AggregateService(
        registry=registry,
        presence=presence,
        cache=cache,
        bus=bus,
        clock_ms=clock,
        max_rate_hz=s.vpp_aggregate_hz,
        max_age_ms=int(s.vpp_max_age_s * 1000),
        group_attribute=s.vpp_group_attribute,
    )
    board = DispatchBoard()
    views = DeviceViews(
        registry=registry,
        presence=presence,
        cache=cache,
        alerts=alerts,
        aggregate=aggregate.state,
        dispatch=board.snapshot,
        clock_ms=clock,
    )
    client_id = mqtt_client_id(s)
    publisher = MqttPublisher(
        mqtt_url,
        client_id=f"{client_id}-out",
        credentials=hub_credentials,
        session_expiry_s=s.mqtt_session_expiry_s,
    )
    commands = CommandService(
        log_store=store,
        bus=bus,
        devices=registry,
        presence=presence,
        publisher=publisher,
        scheme=scheme,
        clock_ms=clock,
        limits=s.limits,
        default_timeout_ms=int(s.command_timeout_s * 1000),
    )
    soc_limits = SocLimits(s.vpp_soc_min, s.vpp_soc_max)
    dispatches = DispatchService(
        store=store,
        bus=bus,
        commands=commands,
        nodes=aggregate.nodes,
        latest=views,
        clock_ms=clock,
        instance_id=instance_id,
        limits=soc_limits,
        command_timeout_ms=int(s.command_timeout_s * 1000),
        sample_interval_s=s.vpp_sample_s,
    )
    proposals = ProposalService(
        store=store,
        bus=bus,
        dispatches=dispatches,
        clock_ms=clock,
        default_approval=Approval(s.vpp_approval),
    )
    agents = AgentService(
        store=store,
        history=store,
        leases=store,
        dispatches=dispatches,
        proposals=proposals,
        alerts=alerts,
        presence=presence,
        nodes=aggregate.nodes,
        tenants=aggregate.tenants,
        clock_ms=clock,
        instance_id=instance_id,
        limits=soc_limits,
        interval_s=s.vpp_agent_interval_s,
    )
    listener = MqttListener(
        mqtt_url,
        scheme=scheme,
        telemetry=ingestor,
        status=presence,
        acks=commands,
        client_id=client_id,
        shared_group=s.mqtt_shared_group,
        session_expiry_s=s.mqtt_session_expiry_s,
        credentials=hub_credentials,
    )
    hub = Hub(max_pending_bytes=s.ws_max_pending_bytes, slow_timeout_s=s.ws_slow_timeout_s)
    native = NativeSession(
        hub=hub,
        snapshot=views.snapshot,
        devices=registry,
        commands=commands,
        proposals=proposals,
        authenticator=identity,
        limiter=RateLimiter(s.ws_messages_per_s, max(1.0, s.ws_messages_per_s * 2)),
        clock_ms=clock,
    )
    bus.subscribe(replica.apply, remote_only=True)
    bus.subscribe(commands.on_event)
    bus.subscribe(alerts.on_event)
    bus.subscribe(aggregate.on_event)
    bus.subscribe(board.on_event)
    bus.subscribe(ingestor.on_event)
    bus.subscribe(hub.publish)
    bus.on_resume(replica.resume)
    auth = HttpAuth(
        identity=identity,
        allowed_origins=s.allowed_origins,
        own_hosts={s.http_host, "127.0.0.1", "localhost"},
        own_port=s.http_port,
        device_limiter=RateLimiter(s.device_rate_per_s, s.device_rate_burst),
        anonymous_devices=s.anonymous_devices,
    )
    handshake_stats = HandshakeStats()
    socketio = FieldlinkNamespace(
        hub=hub,
        devices=registry,
        latest=views,
        commands=commands,
        proposals=proposals,
        authenticator=identity,
        limiter=RateLimiter(s.ws_messages_per_s, max(1.0, s.ws_messages_per_s * 2)),
        max_per_subject=s.ws_max_per_user,
    )
    engine_stats, socketio_stats = EngineStats(), SocketIOStats()
    engines = {
        path: EngineServer(
            settings=EngineSettings(
                path=path,
                ping_interval_ms=int(s.socketio_ping_interval_s * 1000),
                ping_timeout_ms=int(s.socketio_ping_timeout_s * 1000),
                high_water_bytes=s.ws_max_pending_bytes,
                max_buffered_bytes=4 * s.ws_max_pending_bytes,
            ),
            app=SocketIOServer({"/": socketio}, stats=socketio_stats),
            check_origin=auth.check_origin,
            authenticate=auth.handshake_principal,
            hub_pause=hub.pause,
            hub_resume=hub.resume,
            stats=engine_stats,
        )
        for path in s.socketio_paths
    }
    gateway_settings = GatewaySettings(
        path=s.ws_path,
        max_message_bytes=s.limits.max_payload_bytes,
        ping_interval_s=s.ws_ping_interval_s,
        authenticate=auth.websocket,
        max_connections=s.ws_max_connections,
        max_per_subject=s.ws_max_per_user,
    )
    health = Health(store=writer, broker=listener, bus=bus)
    metrics = metrics_registry(
        [
            ingestor,
            writer,
            presence,
            registry,
            listener,
            publisher,
            bus,
            commands,
            alerts,
            aggregate,
            dispatches,
            proposals,
            agents,
            hub,
            handshake_stats,
            identity,
            auth,
            engine_stats,
            socketio_stats,
        ]
    )
    api = ApiContext(
        auth=auth,
        ingestor=ingestor,
        views=views,
        registry=registry,
        store=store,
        cache=cache,
        commands=commands,
        alerts=alerts,
        vpp=VppServices(
            aggregate=aggregate, dispatches=dispatches, proposals=proposals, agents=agents
        ),
        identity=identity,
        sessions=hub,
        health=health,
        metrics=metrics,
        limits=s.limits,
        clock_ms=clock,
        mounts=tuple(engines.items()),
    )
    return Runtime(
        settings=s,
        store=store,
        cache=cache,
        bus=bus,
        broker=broker,
        mqtt_url=mqtt_url,
        identity=identity,
        registry=registry,
        alerts=alerts,
        aggregate=aggregate,
        board=board,
        dispatches=dispatches,
        proposals=proposals,
        agents=agents,
        presence=presence,
        writer=writer,
        ingestor=ingestor,
        replica=replica,
        views=views,
        commands=commands,
        publisher=publisher,
        listener=listener,
        hub=hub,
        native=native,
        socketio=socketio,
        engines=engines,
        auth=auth,
        handshake_stats=handshake_stats,
        health=health,
        api=api,
        gateway_settings=gateway_settings,
        ws_protocol=websocket_protocol_factory(hub, native, gateway_settings, dict(engines)),
    )
