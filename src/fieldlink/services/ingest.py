"""The one ingest path shared by MQTT and HTTP: decode -> validate -> dedupe -> register ->
store -> cache -> status -> publish.

Counting contract (SPEC §5): every telemetry record that enters is ``received`` once and ends
as exactly one of ``stored``, ``rejected`` (by reason; a duplicate ``(device, seq)`` is
rejected with reason ``duplicate``) or ``dropped`` (the store failed or its buffer was full).
While writes are in flight they are ``pending``; ``received == stored + rejected + dropped +
pending`` holds at every instant.

Store outages (SPEC §5, issue 3): an MQTT batch whose write fails is kept in a bounded retry
buffer (``max_pending_records``, shared with in-flight writes) and written again with capped
backoff; its future resolves only when it is committed, so the listener acknowledges QoS 1
only then. While the buffer holds anything the store counts as down: HTTP requests are refused
at once with ``DependencyDown`` (503 + Retry-After) and nothing of them is kept. A record that
does not fit is dropped (``buffer_full``), left unacknowledged and forgotten by the dedupe
window, so the broker's redelivery is accepted later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from fieldlink.core import channels
from fieldlink.core.access import DEFAULT_TENANT
from fieldlink.core.codec import DEFAULT_LIMITS, Limits, decode_json, parse_status, validate_record
from fieldlink.core.dedupe import DedupeWindow
from fieldlink.core.errors import DependencyDown, FieldlinkError, ValidationError
from fieldlink.core.model import Device, Record, is_valid_device_id
from fieldlink.core.ratelimit import RateLimiter
from fieldlink.core.status import StatusBook, StatusChange
from fieldlink.core.topics import TopicKind, TopicScheme
from fieldlink.ports import Bus, Cache, Event, Store, WriteResult

log = logging.getLogger("fieldlink.ingest")

DUPLICATE = "duplicate"
DEVICE_MISMATCH = "device_mismatch"
RATE_LIMITED = "rate_limited"
DEVICE_AUTH_REQUIRED = "device_auth_required"


class DeviceRefused(FieldlinkError):
    """A request that writes for a device it may not speak for (HTTP 403)."""

    code = "forbidden"
    http_status = 403


UNKNOWN_TOPIC = "unknown_topic"
STORE_UNAVAILABLE = "store_unavailable"
BUFFER_FULL = "buffer_full"


@dataclass(slots=True)
class IngestCounters:
    received: int = 0
    stored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    status_messages: int = 0
    status_rejected: int = 0
    http_refused: int = 0  # HTTP requests answered 503 because the store was down
    store_retries: int = 0  # retry rounds of buffered batches

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def balanced(self) -> bool:
        """The SPEC §5 invariant once nothing is in flight."""
        return self.pending == 0 and (
            self.stored + self.rejected_total + self.dropped_total == self.received
        )


@dataclass(slots=True)
class HttpIngestResult:
    accepted: int
    stored: int
    duplicates: int
    errors: list[dict[str, Any]]


class Ingestor:
    """Owns the device registry, dedupe window and counters. One per hub process."""

    def __init__(
        self,
        *,
        store: Store,
        cache: Cache,
        bus: Bus,
        status: StatusBook,
        scheme: TopicScheme,
        clock_ms: Callable[[], int],
        limits: Limits = DEFAULT_LIMITS,
        max_pending_records: int = 100_000,
        dedupe_window: int = 100_000,
    ) -> None:
        self.store = store
        self.cache = cache
        self.bus = bus
        self.status = status
        self.scheme = scheme
        self.clock_ms = clock_ms
        self.limits = limits
        self.max_pending_records = max_pending_records
        self.counters = IngestCounters()
        self.devices: dict[str, Device] = {}
        self._recent = DedupeWindow(dedupe_window)
        self._settled = asyncio.Event()
        self._settled.set()
        self._batch: list[Record] = []
        self._batch_future: asyncio.Future[WriteResult] | None = None
        # Batches whose write failed, oldest first, waiting for the store to come back.
        self._retry: deque[tuple[list[Record], asyncio.Future[WriteResult]]] = deque()
        self._retry_task: asyncio.Task[None] | None = None
        self.retry_backoff_s = (0.1, 2.0)
        self.store_down = False
        # MQTT records per device (set by the runtime); over it they are ``rate_limited``.
        self.device_limiter: RateLimiter | None = None
        # The tenant a device's credentials assign it to (identity service); None: anonymous.
        self.credential_tenant: Callable[[str], str | None] = lambda device_id: None
        # Command acks (edge/{id}/ack) go to the command service: (device_id, payload) -> future.
        self.ack_handler: Callable[[str, bytes], asyncio.Future[Any]] | None = None

    async def load(self) -> None:
        """Load the device registry from the store (call once at start)."""
        for device in await self.store.list_devices():
            self.devices[device.id] = device

    # ---- transports in ------------------------------------------------------------------

    def ingest_mqtt(self, topic: str, payload: bytes) -> asyncio.Future[Any] | None:
        """Handle one MQTT message. Returns the future to wait for before acknowledging it
        (the store batch of accepted telemetry, or the command log update of an ack), else
        None. Never raises for bad input."""
        match = self.scheme.match(topic)
        if match is None:
            self.counters.received += 1
            self.counters.reject(UNKNOWN_TOPIC)
            return None
        if match.kind is TopicKind.STATUS:
            self._status_message(match.device_id or "", payload)
            return None
        if match.kind is TopicKind.ACK:
            if self.ack_handler is None:
                return None
            return self.ack_handler(match.device_id or "", payload)
        if match.kind not in (TopicKind.TELEMETRY, TopicKind.ROUTE):
            return None
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
        return self._enqueue(record)

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
        if self.store_down:
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
            result = await self._store(accepted)
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
            if self.credential_tenant(name) is not None or self.tenant_of(name) != DEFAULT_TENANT:
                self.counters.reject(DEVICE_AUTH_REQUIRED, len(items))
                raise DeviceRefused(
                    "this device has credentials: authenticate as it", code=DEVICE_AUTH_REQUIRED
                )

    # ---- the shared path ----------------------------------------------------------------

    def tenant_of(self, device_id: str) -> str:
        """The tenant a device belongs to: its registration, else its credentials, else the
        default tenant (anonymous devices)."""
        device = self.devices.get(device_id)
        if device is not None:
            return device.tenant_id
        return self.credential_tenant(device_id) or DEFAULT_TENANT

    def _accept(self, record: Record, now_ms: int, tenant_id: str | None = None) -> bool:
        """Dedupe, register, cache, update status and publish. False for a duplicate."""
        device_id = record.device_id
        if record.seq is not None and not self._recent.first_sighting(device_id, record.seq):
            self.counters.reject(DUPLICATE)
            return False
        self._register(device_id, record.kind, record.meta, now_ms, tenant_id)
        record.tenant_id = self.devices[device_id].tenant_id
        self.cache.set_latest(record, now_ms)
        change = self.status.activity(device_id, now_ms)
        if change is not None:
            self.publish_status(change)
        self._publish_telemetry(record, record.tenant_id)
        return True

    def _publish_telemetry(self, record: Record, tenant_id: str, local_only: bool = False) -> None:
        self.bus.publish(
            Event(
                "telemetry",
                channels.for_device_event(record.device_id, tenant_id),
                orjson.dumps(record.to_event_data()),
                record.device_id,
                local_only,
            )
        )

    def _register(
        self,
        device_id: str,
        kind: str,
        meta: dict[str, Any] | None,
        now_ms: int,
        tenant_id: str | None = None,
    ) -> None:
        device = self.devices.get(device_id)
        if device is None:
            tenant = tenant_id or self.credential_tenant(device_id) or DEFAULT_TENANT
            device = Device(device_id, kind, dict(meta or {}), now_ms, now_ms, tenant)
            self.devices[device_id] = device
            self.store.save_device(device)
            self._publish_device(device, "created")
        elif meta and any(device.meta.get(k) != v for k, v in meta.items()):
            device.meta.update(meta)
            self.store.save_device(device)
            self._publish_device(device, "updated")

    def _publish_device(self, device: Device, action: str) -> None:
        data = {
            "device_id": device.id,
            "action": action,
            "kind": device.kind,
            "meta": device.meta,
            "tenant": device.tenant_id,
        }
        self.bus.publish(
            Event(
                "device",
                channels.for_device_event(device.id, device.tenant_id),
                orjson.dumps(data),
                device.id,
            )
        )

    def _full(self, records: list[Record]) -> asyncio.Future[WriteResult] | None:
        """A failed future (and the records counted as dropped and forgotten by the dedupe
        window) if the buffer cannot take them."""
        if self.counters.pending + len(records) <= self.max_pending_records:
            return None
        self.counters.drop(BUFFER_FULL, len(records))
        self._forget(records)
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        future.set_exception(DependencyDown("the store's write buffer is full"))
        future.exception()  # mark retrieved: fire-and-forget callers never look
        return future

    def _forget(self, records: list[Record]) -> None:
        for record in records:
            if record.seq is not None:
                self._recent.forget(record.device_id, record.seq)

    def _enqueue(self, record: Record) -> asyncio.Future[WriteResult]:
        """Add an MQTT record to this loop tick's batch; one store write per tick. The returned
        future (shared by the batch) resolves when the batch is committed."""
        if self.counters.pending >= self.max_pending_records:
            refused = self._full([record])
            assert refused is not None
            return refused
        self.counters.pending += 1
        self._settled.clear()
        if self._batch_future is None:
            loop = asyncio.get_running_loop()
            self._batch_future = loop.create_future()
            loop.call_soon(self._flush_batch)
        self._batch.append(record)
        return self._batch_future

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        waiter, self._batch_future = self._batch_future, None
        assert waiter is not None
        if self.store_down:  # keep the order: behind what already waits for the store
            self._retry.append((batch, waiter))
            return
        self.store.write(batch).add_done_callback(lambda f: self._mqtt_written(f, batch, waiter))

    def _store(self, records: list[Record]) -> asyncio.Future[WriteResult]:
        refused = self._full(records)
        if refused is not None:
            return refused
        self.counters.pending += len(records)
        self._settled.clear()
        waiter: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self.store.write(records).add_done_callback(
            lambda f: self._http_written(f, records, waiter)
        )
        return waiter

    @staticmethod
    def _failed(future: asyncio.Future[WriteResult]) -> BaseException | None:
        if future.cancelled():
            return DependencyDown("store write cancelled")
        return future.exception()

    def _mqtt_written(
        self,
        future: asyncio.Future[WriteResult],
        records: list[Record],
        waiter: asyncio.Future[WriteResult],
    ) -> None:
        error = self._failed(future)
        if error is None:
            self._committed(future.result(), len(records), waiter)
            return
        if not self.store_down:
            log.warning("store write failed (%s); buffering MQTT records and retrying", error)
        self.store_down = True
        self._retry.append((records, waiter))
        if self._retry_task is None:
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_writes())

    def _http_written(
        self,
        future: asyncio.Future[WriteResult],
        records: list[Record],
        waiter: asyncio.Future[WriteResult],
    ) -> None:
        error = self._failed(future)
        if error is None:
            self._committed(future.result(), len(records), waiter)
            return
        # The HTTP client is told to retry (503), so nothing is kept: forget the records.
        self.counters.pending -= len(records)
        self.counters.drop(STORE_UNAVAILABLE, len(records))
        self._forget(records)
        log.warning("store write of %d HTTP records failed: %s", len(records), error)
        if not waiter.done():
            waiter.set_exception(error)
        self._maybe_settled()

    def _committed(self, result: WriteResult, n: int, waiter: asyncio.Future[WriteResult]) -> None:
        self.counters.pending -= n
        self.counters.stored += result.stored
        if result.duplicates:
            self.counters.reject(DUPLICATE, result.duplicates)
        if not waiter.done():
            waiter.set_result(result)
        self._maybe_settled()

    def _maybe_settled(self) -> None:
        if self.counters.pending == 0:
            self._settled.set()

    async def _retry_writes(self) -> None:
        """Write the buffered batches again, oldest first, with capped backoff, until none is
        left. The store commits the ones submitted together in one transaction."""
        delay, max_delay = self.retry_backoff_s
        try:
            while self._retry:
                await asyncio.sleep(delay)
                delay = min(max_delay, delay * 2)
                self.counters.store_retries += 1
                items = list(self._retry)
                self._retry.clear()
                futures = [self.store.write(records) for records, _ in items]
                await asyncio.wait(futures)
                failed = []
                for (records, waiter), future in zip(items, futures, strict=True):
                    if self._failed(future) is None:
                        self._committed(future.result(), len(records), waiter)
                    else:
                        failed.append((records, waiter))
                # Batches flushed meanwhile queued behind these: keep the order.
                self._retry.extendleft(reversed(failed))
                if not failed:
                    delay = self.retry_backoff_s[0]
            self.store_down = False
            log.warning("store is back: buffered MQTT records are committed")
        finally:
            self._retry_task = None

    def buffered(self) -> int:
        """Records waiting in the retry buffer for the store to come back."""
        return sum(len(records) for records, _ in self._retry)

    async def settled(self) -> None:
        """Wait until no write is in flight (tests and shutdown use it)."""
        await self._settled.wait()

    # ---- status -------------------------------------------------------------------------

    def _status_message(self, device_id: str, payload: bytes) -> None:
        self.counters.status_messages += 1
        if not payload:  # an empty retained message clears the retained status: nothing to do
            return
        try:
            if not is_valid_device_id(device_id):
                raise ValidationError("invalid_device_id", "invalid device id in status topic")
            status = parse_status(payload, self.limits)
        except ValidationError as exc:
            self.counters.status_rejected += 1
            log.info("status message rejected for %r: %s", device_id[:130], exc.message)
            return
        now_ms = self.clock_ms()
        self._register(device_id, "edge", None, now_ms)
        change = self.status.report(device_id, status, now_ms)  # type: ignore[arg-type]
        if change is not None:
            self.publish_status(change)

    def publish_status(self, change: StatusChange, local_only: bool = False) -> None:
        self.bus.publish(
            Event(
                "status",
                channels.for_device_event(change.device_id, self.tenant_of(change.device_id)),
                orjson.dumps(change.to_event_data()),
                change.device_id,
                local_only,
            )
        )

    def sweep_status(self) -> int:
        """Mark silent devices offline and publish each change. Returns how many changed.

        Every instance sweeps its own (replicated) status table, so these events stay local."""
        changes = self.status.sweep(self.clock_ms())
        for change in changes:
            self.publish_status(change, local_only=True)
        return len(changes)

    def catch_up(self, records: list[Record]) -> int:
        """Records from the store that are newer than this instance's latest state (events
        it missed while the bus was down): update the cache and tell this instance's clients
        (local events: every instance does this itself). Returns how many were newer."""
        now_ms = self.clock_ms()
        newer = 0
        for record in records:
            current = self.cache.get_latest(record.device_id, now_ms)
            if current is not None and current.ts_ms >= record.ts_ms:
                continue
            newer += 1
            self.cache.remember(record, now_ms)
            self._publish_telemetry(record, self.tenant_of(record.device_id), local_only=True)
        return newer

    # ---- other instances' events --------------------------------------------------------

    def apply_remote(self, event: Event) -> None:
        """Bring this instance's read models (registry, status, latest state) up to date with
        an event another instance produced. Nothing is stored or re-published here: the
        ingesting instance did both."""
        try:
            data = orjson.loads(event.data)
            device_id = data["device_id"]
            now_ms = self.clock_ms()
            if event.type == "telemetry":
                ts_ms = int(data.pop("ts"))
                seq = data.pop("seq", None)
                del data["device_id"]
                device = self.devices.get(device_id)
                kind = device.kind if device else "edge"
                self.cache.remember(Record(device_id, ts_ms, data, seq, None, kind), now_ms)
                self.status.seen(device_id, now_ms)
                if device is None:
                    tenant = channels.tenant_in(event.channels) or DEFAULT_TENANT
                    self.devices[device_id] = Device(device_id, kind, {}, now_ms, now_ms, tenant)
            elif event.type == "device":
                known = self.devices.get(device_id)
                created = known.created_ms if known else now_ms
                self.devices[device_id] = Device(
                    device_id,
                    data["kind"],
                    data["meta"],
                    created,
                    None,
                    data.get("tenant", DEFAULT_TENANT),
                )
            elif event.type == "status":
                change = StatusChange(device_id, data["status"], data["ts"], data["reason"])
                self.status.apply(change)
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            log.warning("ignored a malformed bus event of type %r: %s", event.type, exc)
