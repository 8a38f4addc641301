"""The one ingest path shared by MQTT and HTTP: decode -> validate -> dedupe -> register ->
cache -> status -> publish -> store.

What it owns: the validation of telemetry (core/codec.py), the per-device MQTT rate limit,
the dedupe window of recent ``(device, seq)`` pairs, who may write for which device over
HTTP, and the ``received``/``rejected`` half of the counting contract (the other half is the
store writer's, services/writer.py). What it does not: status messages (services/presence.py),
command acks (services/commands.py), the registry (services/registry.py), or anything another
instance ingested (services/replica.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fieldlink.core.access import DEFAULT_TENANT
from fieldlink.core.codec import DEFAULT_LIMITS, Limits, decode_json, validate_record
from fieldlink.core.dedupe import DedupeWindow
from fieldlink.core.errors import DependencyDown, DeviceRefused, ValidationError
from fieldlink.core.events import DeviceAction, DeviceChanged, DomainEvent, TelemetryAccepted
from fieldlink.core.measures import Measure, measures_of
from fieldlink.core.model import Record
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.core.topics import TopicMatch
from fieldlink.ports import Bus, Cache, CredentialDirectory, WriteResult
from fieldlink.services.presence import Presence
from fieldlink.services.registry import DeviceRegistry
from fieldlink.services.writer import DUPLICATE, IngestCounters, StoreWriter

log = logging.getLogger("fieldlink.ingest")

DEVICE_MISMATCH = "device_mismatch"
RATE_LIMITED = "rate_limited"
DEVICE_AUTH_REQUIRED = "device_auth_required"


@dataclass(slots=True)
class HttpIngestResult:
    accepted: int
    stored: int
    duplicates: int
    errors: list[dict[str, Any]]


class Ingestor:
    """One per hub process. Implements ``ports.TelemetryIntake`` for the MQTT listener."""

    def __init__(
        self,
        *,
        registry: DeviceRegistry,
        presence: Presence,
        cache: Cache,
        bus: Bus,
        writer: StoreWriter,
        counters: IngestCounters,
        dedupe: DedupeWindow,
        credentials: CredentialDirectory,
        clock_ms: Callable[[], int],
        limits: Limits = DEFAULT_LIMITS,
        device_limiter: RateLimiter | None = None,
    ) -> None:
        self.registry = registry
        self.presence = presence
        self.cache = cache
        self.bus = bus
        self.writer = writer
        self.counters = counters
        self.dedupe = dedupe
        self.credentials = credentials
        self.clock_ms = clock_ms
        self.limits = limits
        # MQTT records per device; over it they are rejected as ``rate_limited``.
        self.device_limiter = device_limiter

    # ---- MQTT -------------------------------------------------------------------------------

    def ingest_mqtt(
        self, match: TopicMatch, topic: str, payload: bytes
    ) -> asyncio.Future[WriteResult] | None:
        """One message on a telemetry topic or a custom route. Returns the future to wait for
        before acknowledging it (its store batch), or None if nothing is stored. Never raises
        for bad input: it is counted and logged."""
        self.counters.received += 1
        now_ms = self.clock_ms()
        limiter = self.device_limiter
        if (
            limiter is not None
            and match.device_id is not None
            and limiter.take(match.device_id, now_ms / 1000) > 0
        ):
            self.counters.reject(RATE_LIMITED)
            return None
        try:
            obj = decode_json(payload, self.limits)
            if match.route is not None:
                device_id, obj = match.route.extract(topic, obj)
                record = validate_record(
                    obj,
                    now_ms=now_ms,
                    device_id=device_id,
                    kind=match.route.kind,
                    limits=self.limits,
                )
            else:
                if (
                    isinstance(obj, dict)
                    and "device_id" in obj
                    and obj["device_id"] != match.device_id
                ):
                    raise ValidationError(
                        "device_id_mismatch",
                        "device_id in the payload differs from the topic",
                        "$.device_id",
                    )
                record = validate_record(
                    obj, now_ms=now_ms, device_id=match.device_id, limits=self.limits
                )
        except ValidationError as exc:
            self.counters.reject(exc.code)
            log.info("mqtt record rejected on %s: %s (%s)", topic[:200], exc.code, exc.message)
            return None
        if not self._accept(record, now_ms):
            return None
        return self.writer.enqueue(record)

    def refuse(self, reason: str) -> None:
        """A message on no known topic (or an undecodable one): received and rejected."""
        self.counters.received += 1
        self.counters.reject(reason)

    # ---- HTTP -------------------------------------------------------------------------------

    async def ingest_http(
        self, body: bytes, device_id: str | None = None, tenant_id: str = DEFAULT_TENANT
    ) -> HttpIngestResult:
        """Handle ``POST /api/telemetry`` (one record or a list). Returns once accepted records
        are committed; raises ``ValidationError`` for a body that holds no record at all and
        ``DependencyDown`` when the store cannot take them.

        ``device_id`` is the authenticated device (its records may omit ``device_id``; naming
        another device refuses the whole request with ``DeviceRefused`` ``device_mismatch``).
        Anonymous requests (None) may not write for a device that has credentials or belongs
        to another tenant (``device_auth_required``). Nothing of a refused request is kept."""
        if self.writer.store_down:
            self.counters.http_refused += 1
            raise DependencyDown("the database is unavailable; retry later")
        try:
            obj = decode_json(body, self.limits)
        except ValidationError:
            self.counters.received += 1
            self.counters.reject("invalid_json" if body else "empty_body")
            raise
        items = obj if isinstance(obj, list) else [obj]
        if len(items) > self.limits.max_batch_records:
            self.counters.received += 1
            self.counters.reject("too_many_records")
            raise ValidationError(
                "too_many_records", f"at most {self.limits.max_batch_records} records per request"
            )
        if not items:
            raise ValidationError("no_records", "the list holds no records")
        self.counters.received += len(items)
        self._check_identity(items, device_id)
        now_ms = self.clock_ms()
        accepted: list[Record] = []
        errors: list[dict[str, Any]] = []
        duplicates = 0
        for index, item in enumerate(items):
            try:
                if device_id is not None and isinstance(item, dict):
                    item.setdefault("device_id", device_id)
                record = validate_record(item, now_ms=now_ms, limits=self.limits)
            except ValidationError as exc:
                self.counters.reject(exc.code)
                detail = exc.to_dict()
                if isinstance(obj, list):
                    detail["path"] = f"$[{index}]" + str(detail["path"])[1:]
                errors.append(detail)
                continue
            if self._accept(record, now_ms, tenant_id):
                accepted.append(record)
            else:
                duplicates += 1
        if errors and not accepted and not duplicates:
            first = errors[0]
            raise ValidationError(str(first["code"]), str(first["message"]), str(first["path"]))
        stored = 0
        if accepted:
            result = await self.writer.write(accepted)
            stored = result.stored
            duplicates += result.duplicates
        return HttpIngestResult(len(accepted), stored, duplicates, errors)

    def _check_identity(self, items: list[Any], device_id: str | None) -> None:
        """Refuse a request that writes for a device it may not speak for (counted)."""
        named = {
            str(item["device_id"])
            for item in items
            if isinstance(item, dict) and isinstance(item.get("device_id"), str)
        }
        if device_id is not None:
            if named - {device_id}:
                self.counters.reject(DEVICE_MISMATCH, len(items))
                raise DeviceRefused(
                    "these credentials speak for one device only", code=DEVICE_MISMATCH
                )
            return
        for name in named:
            if (
                self.credentials.credential_tenant(name) is not None
                or self.registry.tenant_of(name) != DEFAULT_TENANT
            ):
                self.counters.reject(DEVICE_AUTH_REQUIRED, len(items))
                raise DeviceRefused(
                    "this device has credentials: authenticate as it", code=DEVICE_AUTH_REQUIRED
                )

    # ---- the shared path --------------------------------------------------------------------

    def _accept(self, record: Record, now_ms: int, tenant_id: str | None = None) -> bool:
        """Dedupe, register, cache, update status and publish. False for a duplicate."""
        device_id = record.device_id
        if record.seq is not None and not self.dedupe.first_sighting(device_id, record.seq):
            self.counters.reject(DUPLICATE)
            return False
        device = self.registry.register(device_id, record.kind, record.meta, now_ms, tenant_id)
        record.tenant_id = device.tenant_id
        self.cache.set_latest(record, now_ms)
        self.presence.activity(device_id, now_ms)
        self.bus.publish(TelemetryAccepted(record))
        return True

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler: a deleted device's ``(device, seq)`` pairs leave the dedupe window (its
        history may have been purged; the store's unique index still refuses real repeats)."""
        if isinstance(event, DeviceChanged) and event.action is DeviceAction.DELETED:
            self.dedupe.forget_device(event.device_id)

    async def settled(self) -> None:
        """Wait until no write is in flight."""
        await self.writer.settled()

    def measures(self) -> Iterator[Measure]:
        return measures_of(self.counters)
