"""Prometheus exposition. Counters live as plain integers on the ingestor and the hub; this
collector reads them at scrape time, so the hot path pays nothing for metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from fieldlink.app.wiring import Runtime


class RuntimeCollector:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        c = self.runtime.ingestor.counters
        h = self.runtime.hub.stats
        yield CounterMetricFamily(
            "fieldlink_ingest_received", "Telemetry records received", value=c.received
        )
        yield CounterMetricFamily(
            "fieldlink_ingest_stored", "Telemetry records committed", value=c.stored
        )
        rejected = CounterMetricFamily(
            "fieldlink_ingest_rejected", "Records rejected, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        dropped = CounterMetricFamily(
            "fieldlink_ingest_dropped", "Records dropped, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield GaugeMetricFamily(
            "fieldlink_ingest_pending", "Records waiting for the store", value=c.pending
        )
        yield CounterMetricFamily(
            "fieldlink_status_messages", "Status messages received", value=c.status_messages
        )
        yield CounterMetricFamily(
            "fieldlink_status_rejected", "Status messages rejected", value=c.status_rejected
        )
        yield GaugeMetricFamily(
            "fieldlink_devices", "Registered devices", value=len(self.runtime.ingestor.devices)
        )
        online = GaugeMetricFamily(
            "fieldlink_devices_by_status", "Devices by status", labels=["status"]
        )
        for status, n in self.runtime.status.counts().items():
            online.add_metric([status], n)
        yield online
        yield GaugeMetricFamily(
            "fieldlink_ws_clients", "Connected WebSocket clients", value=h.connected
        )
        yield CounterMetricFamily(
            "fieldlink_ws_connections", "WebSocket connections accepted", value=h.connections_total
        )
        yield CounterMetricFamily(
            "fieldlink_ws_events", "Events published to the gateway", value=h.events_published
        )
        yield CounterMetricFamily(
            "fieldlink_ws_deliveries", "Events delivered to clients", value=h.deliveries
        )
        yield CounterMetricFamily(
            "fieldlink_ws_writes", "Socket writes by the gateway", value=h.frames_written
        )
        yield CounterMetricFamily(
            "fieldlink_ws_slow_disconnects",
            "Clients closed as slow consumers",
            value=h.slow_disconnects,
        )
        yield CounterMetricFamily(
            "fieldlink_ws_conflated",
            "Events replaced by a newer one for a lagging client",
            value=h.conflated,
        )
        yield CounterMetricFamily(
            "fieldlink_ws_client_errors",
            "Client messages answered with an error",
            value=h.client_errors,
        )


def registry_for(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
