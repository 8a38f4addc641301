"""Accepted records on their way into the store: batching, retry while the store is down,
and the ``pending`` part of the ingest count.

MQTT records are batched: every record enqueued in one loop tick goes into one store write,
and they share one future that resolves when the batch is committed (the listener
acknowledges QoS 1 then). A batch whose write fails is kept in a bounded retry buffer
(``max_pending_records``, shared with in-flight writes) and written again, oldest first, with
capped backoff; while anything waits there the store counts as down. HTTP records are written
per request and never kept: a failure is answered 503 and the client retries. A record that
is not kept (buffer full, or a failed HTTP write) is ``dropped`` by reason and forgotten by the
dedupe window, so its redelivery is accepted later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from fieldlink.core.dedupe import DedupeWindow
from fieldlink.core.errors import DependencyDown
from fieldlink.core.measures import Measure, add, counter, gauge, labelled
from fieldlink.core.model import Record
from fieldlink.ports import Store, WriteResult

log = logging.getLogger("fieldlink.writer")

DUPLICATE = "duplicate"
STORE_UNAVAILABLE = "store_unavailable"
BUFFER_FULL = "buffer_full"


@dataclass(slots=True)
class IngestCounters:
    """Counting contract (SPEC §5): every telemetry record that enters is ``received`` once and
    ends as exactly one of ``stored``, ``rejected`` (by reason; a duplicate ``(device, seq)``
    is rejected with reason ``duplicate``) or ``dropped`` (by reason). While writes are in
    flight they are ``pending``: ``received == stored + rejected + dropped + pending`` holds at
    every instant. Shared by the ingestor (received, rejected) and the writer (the rest)."""

    received: int = counter("fieldlink_ingest_received", "Telemetry records received")
    stored: int = counter("fieldlink_ingest_stored", "Telemetry records committed")
    pending: int = gauge("fieldlink_ingest_pending", "Records waiting for the store")
    rejected: dict[str, int] = labelled(
        "fieldlink_ingest_rejected", "Records rejected, by reason", "reason"
    )
    dropped: dict[str, int] = labelled(
        "fieldlink_ingest_dropped", "Records dropped, by reason", "reason"
    )
    http_refused: int = counter(
        "fieldlink_ingest_http_refused",
        "HTTP ingest requests answered 503 while the store was down",
    )
    store_retries: int = 0  # retry rounds of buffered batches

    def reject(self, reason: str, n: int = 1) -> None:
        add(self.rejected, reason, n)

    def drop(self, reason: str, n: int = 1) -> None:
        add(self.dropped, reason, n)

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


class StoreWriter:
    def __init__(
        self,
        *,
        store: Store,
        counters: IngestCounters,
        dedupe: DedupeWindow,
        max_pending_records: int = 100_000,
        retry_backoff_s: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self.store = store
        self.counters = counters
        self.dedupe = dedupe
        self.max_pending_records = max_pending_records
        self.retry_backoff_s = retry_backoff_s
        self.store_down = False
        self._settled = asyncio.Event()
        self._settled.set()
        self._batch: list[Record] = []
        self._batch_future: asyncio.Future[WriteResult] | None = None
        # Batches whose write failed, oldest first, waiting for the store to come back.
        self._retry: deque[tuple[list[Record], asyncio.Future[WriteResult]]] = deque()
        self._retry_task: asyncio.Task[None] | None = None

    # ---- in ---------------------------------------------------------------------------------

    def enqueue(self, record: Record) -> asyncio.Future[WriteResult]:
        """Add an MQTT record to this loop tick's batch; the returned future (shared by the
        batch) resolves when the batch is committed, or fails if the buffer cannot take it."""
        counters = self.counters
        if counters.pending < self.max_pending_records:  # the common case, inline: per record
            counters.pending += 1
            self._settled.clear()
        else:
            refused = self._refuse_if_full([record])
            assert refused is not None
            return refused
        if self._batch_future is None:
            loop = asyncio.get_running_loop()
            self._batch_future = loop.create_future()
            loop.call_soon(self._flush_batch)
        self._batch.append(record)
        return self._batch_future

    def write(self, records: list[Record]) -> asyncio.Future[WriteResult]:
        """Write HTTP records now; the future fails (``DependencyDown``) if they are not
        stored, and nothing of them is kept."""
        refused = self._refuse_if_full(records)
        if refused is not None:
            return refused
        waiter: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self.store.write(records).add_done_callback(
            lambda f: self._written(f, records, waiter, keep=False)
        )
        return waiter

    def _refuse_if_full(self, records: list[Record]) -> asyncio.Future[WriteResult] | None:
        """Count the records as pending, or, if the buffer cannot take them, a failed future
        (the records dropped as ``buffer_full`` and forgotten)."""
        if self.counters.pending + len(records) <= self.max_pending_records:
            self.counters.pending += len(records)
            self._settled.clear()
            return None
        self.counters.drop(BUFFER_FULL, len(records))
        self._forget(records)
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        future.set_exception(DependencyDown("the store's write buffer is full"))
        future.exception()  # mark retrieved: fire-and-forget callers never look
        return future

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        waiter, self._batch_future = self._batch_future, None
        assert waiter is not None
        if self.store_down:  # keep the order: behind what already waits for the store
            self._retry.append((batch, waiter))
            return
        self.store.write(batch).add_done_callback(
            lambda f: self._written(f, batch, waiter, keep=True)
        )

    # ---- out --------------------------------------------------------------------------------

    def _written(
        self,
        future: asyncio.Future[WriteResult],
        records: list[Record],
        waiter: asyncio.Future[WriteResult],
        *,
        keep: bool,
    ) -> None:
        """A store write ended. Committed: count and resolve. Failed: keep the batch for a
        retry (MQTT), or drop it and fail the waiter (HTTP: the client is told to retry)."""
        error = _failure(future)
        if error is None:
            self._committed(future.result(), len(records), waiter)
            return
        if keep:
            if not self.store_down:
                log.warning("store write failed (%s); buffering MQTT records and retrying", error)
            self.store_down = True
            self._retry.append((records, waiter))
            if self._retry_task is None:
                self._retry_task = asyncio.get_running_loop().create_task(self._retry_writes())
            return
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

    def _forget(self, records: list[Record]) -> None:
        for record in records:
            if record.seq is not None:
                self.dedupe.forget(record.device_id, record.seq)

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
                    if _failure(future) is None:
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

    # ---- state ------------------------------------------------------------------------------

    def buffered(self) -> int:
        """Records waiting in the retry buffer for the store to come back."""
        return sum(len(records) for records, _ in self._retry)

    def ok(self) -> bool:
        """Health: the last write did not fail (nothing waits for the store to come back)."""
        return not self.store_down

    async def settled(self) -> None:
        """Wait until no write is in flight (tests and shutdown use it)."""
        await self._settled.wait()

    def measures(self) -> Iterator[Measure]:
        yield Measure(
            "fieldlink_ingest_buffered",
            "MQTT records waiting in the retry buffer for the store to come back",
            "gauge",
            self.buffered(),
        )


def _failure(future: asyncio.Future[WriteResult]) -> BaseException | None:
    if future.cancelled():
        return DependencyDown("store write cancelled")
    return future.exception()
