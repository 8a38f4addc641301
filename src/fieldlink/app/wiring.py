"""The one place configuration becomes implementations (chosen by URL scheme), and the
runtime that starts and stops them in order."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
import tomllib
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldlink.api.auth import Auth
from fieldlink.api.http import HandshakeStats
from fieldlink.backends.memory import MemoryBus, MemoryCache, MemoryStore
from fieldlink.core import channels
from fieldlink.core.access import Principal, can_command, can_read, can_subscribe
from fieldlink.core.closecodes import CloseCode
from fieldlink.core.errors import FieldlinkError, ValidationError
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.core.status import StatusBook
from fieldlink.core.topics import Route, TopicScheme, route_from_config
from fieldlink.gateway import protocol
from fieldlink.gateway.hub import Hub, Member
from fieldlink.gateway.ws import (
    GatewaySettings,
    keepalive,
    sweep_slow,
    websocket_protocol_factory,
)
from fieldlink.mqtt.broker import HUB_USER, EmbeddedBroker, mosquitto_hash
from fieldlink.mqtt.listener import MqttIngest
from fieldlink.ports import Bus, Cache, Store
from fieldlink.services.commands import CommandService, new_command_id
from fieldlink.services.identity import (
    Forbidden,
    IdentityService,
    TokenConfig,
    TokenService,
    Unauthorized,
    load_or_create_secret,
)
from fieldlink.services.ingest import Ingestor
from fieldlink.services.views import DeviceViews

from .settings import Settings

if TYPE_CHECKING:
    from fieldlink.backends.redis import RedisBus, RedisCache

log = logging.getLogger("fieldlink")


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


def load_routes(path: Path | None) -> tuple[Route, ...]:
    if path is None:
        return ()
    with open(path, "rb") as fh:
        config: dict[str, Any] = tomllib.load(fh)
    return tuple(
        route_from_config(f"route{i}", cfg) for i, cfg in enumerate(config.get("routes", []))
    )


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


class Runtime:
    """Everything a hub process runs, wired from Settings. ``start``/``stop`` are ordered so no
    accepted record is lost: stop ingest first, then close clients, then flush the store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scheme = TopicScheme(settings.topic_prefix, load_routes(settings.routes_file))
        self.store = store_from_url(settings.resolved_database_url())
        self.redis_bus: RedisBus | None = None
        self.redis_cache: RedisCache | None = None
        self.cache: Cache
        self.bus: Bus
        if settings.redis_url:
            from fieldlink.backends.redis import RedisBus, RedisCache

            self.redis_bus = self.bus = RedisBus(settings.redis_url)
            self.redis_cache = self.cache = RedisCache(settings.redis_url, settings.cache_ttl_s)
        else:
            self.cache = MemoryCache(settings.cache_ttl_s)
            self.bus = MemoryBus()
        self.status = StatusBook(int(settings.silence_timeout_s * 1000))
        self.ingestor = Ingestor(
            store=self.store,
            cache=self.cache,
            bus=self.bus,
            status=self.status,
            scheme=self.scheme,
            clock_ms=now_ms,
            limits=settings.limits,
        )
        self.views = DeviceViews(self.ingestor)
        self.commands = CommandService(
            log_store=self.store,
            bus=self.bus,
            status=self.status,
            devices=self.ingestor.devices,
            tenant_of=self.ingestor.tenant_of,
            scheme=self.scheme,
            clock_ms=now_ms,
            publish=self._publish_mqtt,
            connected=lambda: self.mqtt is not None and self.mqtt.connected.is_set(),
            limits=settings.limits,
            default_timeout_ms=int(settings.command_timeout_s * 1000),
        )
        self.ingestor.ack_handler = self.commands.handle_ack
        self.hub = Hub(
            self.views.snapshot,
            max_pending_bytes=settings.ws_max_pending_bytes,
            slow_timeout_s=settings.ws_slow_timeout_s,
            clock_ms=now_ms,
        )
        self.bus.subscribe(self.hub.publish)
        self.hub.on_command = self._ws_command
        if self.redis_bus is not None and self.redis_cache is not None:
            self.redis_bus.subscribe_remote(self.ingestor.apply_remote)
            redis_cache = self.redis_cache

            async def rebuild_cache() -> None:
                # Redis is never the source of truth: read the latest state from the store,
                # push what this instance's clients missed, then refill Redis.
                since = now_ms() - int(settings.cache_ttl_s * 1000)
                try:
                    missed = self.ingestor.catch_up(await self.store.latest_since(since))
                except FieldlinkError as exc:
                    log.warning("redis is back, but the store is not (%s): mirror only", exc)
                    missed = 0
                rebuilt = await redis_cache.rebuild(now_ms())
                log.warning(
                    "redis is back: cache rebuilt with %d devices from the store "
                    "(%d newer than shown here)",
                    rebuilt,
                    missed,
                )

            self.redis_bus.on_reconnect.append(rebuild_cache)
        self.identity = IdentityService(
            self.store, TokenService(token_config(settings)), broker_hasher=mosquitto_hash
        )
        self.identity.on_device_credentials.append(self._broker_user_added)
        self.ingestor.credential_tenant = self.identity.credential_tenant
        if settings.mqtt_device_rate_per_s > 0:
            rate = settings.mqtt_device_rate_per_s
            self.ingestor.device_limiter = RateLimiter(rate, rate * 2, max_keys=200_000)
        self.auth = Auth(self)
        self.auth.allow_own_origins(
            {settings.http_host, "127.0.0.1", "localhost"}, settings.http_port
        )
        self.hub.authorize = self._may_subscribe
        self.hub.on_auth = self._ws_refresh
        self.hub.message_limiter = RateLimiter(
            settings.ws_messages_per_s, max(1.0, settings.ws_messages_per_s * 2)
        )
        self.admin_token_path: Path | None = None
        self.handshake_stats = HandshakeStats()
        self.gateway_settings = GatewaySettings(
            path=settings.ws_path,
            max_message_bytes=settings.limits.max_payload_bytes,
            ping_interval_s=settings.ws_ping_interval_s,
            authenticate=self.auth.websocket,
            max_connections=settings.ws_max_connections,
            max_per_subject=settings.ws_max_per_user,
        )
        self.ws_protocol = websocket_protocol_factory(self.hub, self.gateway_settings)
        self.broker: EmbeddedBroker | None = None
        self.mqtt: MqttIngest | None = None
        self.mqtt_url = settings.mqtt_url
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.started_ms = now_ms()

    async def start(self) -> None:
        s = self.settings
        if self.mqtt_url is None:
            self.broker = EmbeddedBroker(
                s.data_dir, s.mqtt_port, device_auth=s.device_auth, prefix=s.topic_prefix
            )
            await self.broker.start()
            self.mqtt_url = self.broker.url
        await self.store.start()
        await self.identity.load()
        self.admin_token_path = await self.identity.bootstrap(s.data_dir)
        if self.broker is not None and s.device_auth:
            self.broker.set_users(await self.identity.broker_users())
        await self.ingestor.load()
        if self.redis_bus is not None:
            await self.redis_bus.start()  # subscribed before any ingest: no first message lost
        self.mqtt = MqttIngest(
            self.mqtt_url,
            self.ingestor,
            self.scheme,
            client_id=self.mqtt_client_id(),
            shared_group=s.mqtt_shared_group,
            credentials=(HUB_USER, self.broker.hub_password)
            if self.broker is not None and s.device_auth
            else s.mqtt_credentials(),
            session_expiry_s=s.mqtt_session_expiry_s,
        )
        commands = self.commands
        self.mqtt.on_connected.append(lambda: self._spawn(commands.send_pending(None)))
        await self.mqtt.start()
        self._tasks.append(asyncio.create_task(self._sweep_status()))
        self._tasks.append(asyncio.create_task(self._sweep_commands()))
        self._tasks.append(asyncio.create_task(keepalive(self.hub, self.gateway_settings)))
        self._tasks.append(asyncio.create_task(sweep_slow(self.hub)))

    def mqtt_client_id(self) -> str:
        """Stable across restarts of the same hub (same host and data directory), so the broker
        keeps its session and queued messages; different for hubs on other hosts or with other
        data (containers with the same /data path differ by hostname)."""
        if self.settings.mqtt_client_id:
            return self.settings.mqtt_client_id
        identity = f"{socket.gethostname()}:{self.settings.data_dir.resolve()}"
        digest = hashlib.sha256(identity.encode()).hexdigest()
        return f"fieldlink-{digest[:12]}"

    def _publish_mqtt(self, topic: str, payload: bytes) -> bool:
        return self.mqtt is not None and self.mqtt.publish(topic, payload)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _broker_user_added(self, device_id: str, broker_hash: str) -> None:
        if self.broker is not None and self.settings.device_auth and broker_hash:
            self.broker.add_user(device_id, broker_hash)

    def close_sessions(self, subject: str) -> int:
        """Close every WebSocket of a user (revoked), with 4003."""
        members = [m for m in self.hub.members if getattr(m, "subject", None) == subject]
        for member in members:
            self.hub.kick(member, CloseCode.REVOKED, "access revoked")
        return len(members)

    def auth_refusals(self) -> dict[str, int]:
        """Every authentication refusal by code (REST, handshakes, tokens, device keys)."""
        merged = dict(self.auth.refused)
        for code, n in self.identity.counters.token_failures.items():
            merged[code] = merged.get(code, 0) + n
        if self.identity.counters.device_auth_failures:
            merged["invalid_device_key"] = (
                merged.get("invalid_device_key", 0) + self.identity.counters.device_auth_failures
            )
        return merged

    def _may_subscribe(self, member: Member, channel: str) -> bool:
        principal: Principal | None = getattr(member, "principal", None)
        if principal is None:
            return False
        device_tenant = None
        if channel.startswith(channels.DEVICE_PREFIX):
            device = self.ingestor.devices.get(channel[len(channels.DEVICE_PREFIX) :])
            device_tenant = device.tenant_id if device is not None else None
        return can_subscribe(principal, channel, device_tenant)

    def _ws_refresh(self, member: Member, message: dict[str, Any]) -> bytes:
        """``{"type": "auth", "token"}``: a fresh token for the same user and tenant moves the
        connection's expiry."""
        current: Principal | None = getattr(member, "principal", None)
        token = message.get("token")
        try:
            if not isinstance(token, str) or current is None:
                raise Unauthorized("send {'type': 'auth', 'token': ...}", code="invalid_token")
            fresh = self.identity.authenticate(token, ("access", "service"))
            if (fresh.subject, fresh.tenant_id) != (current.subject, current.tenant_id):
                raise Forbidden("a refresh must be for the same user", code="forbidden")
        except FieldlinkError as exc:
            return protocol.error(exc.code, exc.message, message)
        member.principal = fresh  # type: ignore[attr-defined]
        member.expire_at(fresh.expires_ms)  # type: ignore[attr-defined]
        return protocol.auth_ok(fresh.expires_ms, message)

    def _ws_command(self, member: Member, message: dict[str, Any]) -> None:
        """A ``command`` message from a WebSocket client: the client joins the command's
        private channel as soon as the id is logged, so it sees every transition."""
        hub, commands = self.hub, self.commands
        given = message.get("id")
        shown_id = given if isinstance(given, str) else None
        try:
            request = commands.parse(message)
        except ValidationError as exc:
            commands.counters.refused += 1
            member.send(protocol.command_refused(shown_id, exc.code, exc.message))
            return
        principal: Principal | None = getattr(member, "principal", None)
        device = self.ingestor.devices.get(request.device_id)
        if principal is None or (device is not None and not can_read(principal, device.tenant_id)):
            # Another tenant's device answers like one that does not exist.
            hub.stats.forbidden += 1
            member.send(
                protocol.command_refused(
                    request.id, "unknown_device", f"device {request.device_id!r} is not registered"
                )
            )
            return
        if not can_command(principal, device.tenant_id if device else principal.tenant_id):
            hub.stats.forbidden += 1
            member.send(
                protocol.command_refused(request.id, "forbidden", "your role may not send commands")
            )
            return
        command_id = request.id or new_command_id()

        async def run() -> None:
            try:
                await commands.submit(
                    request,
                    command_id,
                    on_logged=lambda c: hub.join_private(member, channels.command(c.id)),
                )
            except FieldlinkError as exc:
                member.send(protocol.command_refused(command_id, exc.code, exc.message))
            except Exception:
                log.exception("command %s failed unexpectedly", command_id)
                member.send(protocol.command_refused(command_id, "internal", "internal error"))

        self._spawn(run())

    async def _sweep_commands(self) -> None:
        while True:
            await asyncio.sleep(self.settings.command_sweep_s)
            try:
                await self.commands.sweep()
            except FieldlinkError as exc:
                log.warning("command sweep: %s", exc)

    async def _sweep_status(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_sweep_s)
            self.ingestor.sweep_status()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.commands.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.mqtt is not None:
            await self.mqtt.stop()
        self.hub.flush()
        try:
            await asyncio.wait_for(self.ingestor.settled(), self.settings.stop_timeout_s)
        except TimeoutError:
            # The store is down: these stay unacknowledged at the broker (MQTT) and are sent
            # again to the next instance that resumes the session.
            log.warning(
                "stopping with %d records not stored (the store is unavailable)",
                self.ingestor.counters.pending,
            )
        await self.store.close()
        await self.bus.close()
        if self.redis_cache is not None:
            await self.redis_cache.close()
        if self.broker is not None:
            await self.broker.stop()

    def health(self) -> dict[str, Any]:
        bus_ok = self.redis_bus is None or self.redis_bus.connected
        checks = {
            "store": "down" if self.ingestor.store_down else "ok",
            "broker": "ok" if self.mqtt is not None and self.mqtt.connected.is_set() else "down",
            "bus": "ok" if bus_ok else "down",
        }
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return {"status": status, "checks": checks}
