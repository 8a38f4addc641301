"""Prometheus exposition. Counters live as plain integers on the ingestor and the hub; this
collector reads them at scrape time, so the hot path pays nothing for metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from fieldlink.app.wiring import Runtime


Sample = Callable[["Runtime"], float]

# (name, help, counter?, how to read it): the one list of unlabelled metrics.
SCALARS: tuple[tuple[str, str, bool, Sample], ...] = (
    (
        "fieldlink_ingest_received",
        "Telemetry records received",
        True,
        lambda r: r.ingestor.counters.received,
    ),
    (
        "fieldlink_ingest_stored",
        "Telemetry records committed",
        True,
        lambda r: r.ingestor.counters.stored,
    ),
    (
        "fieldlink_ingest_pending",
        "Records waiting for the store",
        False,
        lambda r: r.ingestor.counters.pending,
    ),
    (
        "fieldlink_status_messages",
        "Status messages received",
        True,
        lambda r: r.ingestor.counters.status_messages,
    ),
    (
        "fieldlink_status_rejected",
        "Status messages rejected",
        True,
        lambda r: r.ingestor.counters.status_rejected,
    ),
    (
        "fieldlink_ingest_buffered",
        "MQTT records waiting in the retry buffer for the store to come back",
        False,
        lambda r: r.ingestor.buffered(),
    ),
    (
        "fieldlink_ingest_http_refused",
        "HTTP ingest requests answered 503 while the store was down",
        True,
        lambda r: r.ingestor.counters.http_refused,
    ),
    (
        "fieldlink_mqtt_acked",
        "QoS 1 messages acknowledged to the broker (after the store committed them)",
        True,
        lambda r: r.mqtt.acked if r.mqtt is not None else 0,
    ),
    (
        "fieldlink_bus_published",
        "Events sent to other instances (Redis)",
        True,
        lambda r: r.redis_bus.published if r.redis_bus is not None else 0,
    ),
    (
        "fieldlink_bus_received",
        "Events received from other instances (Redis)",
        True,
        lambda r: r.redis_bus.received if r.redis_bus is not None else 0,
    ),
    (
        "fieldlink_bus_dropped",
        "Events not sent to other instances because Redis was unreachable",
        True,
        lambda r: r.redis_bus.dropped if r.redis_bus is not None else 0,
    ),
    (
        "fieldlink_commands_accepted",
        "Commands logged",
        True,
        lambda r: r.commands.counters.accepted,
    ),
    (
        "fieldlink_commands_refused",
        "Command requests refused before logging (invalid, id taken)",
        True,
        lambda r: r.commands.counters.refused,
    ),
    (
        "fieldlink_commands_sent",
        "Commands published to devices",
        True,
        lambda r: r.commands.counters.sent,
    ),
    (
        "fieldlink_commands_terminal",
        "Commands that reached a terminal state (on this instance)",
        True,
        lambda r: r.commands.counters.terminal,
    ),
    (
        "fieldlink_command_acks",
        "Command answers received from devices",
        True,
        lambda r: r.commands.counters.acks,
    ),
    (
        "fieldlink_command_acks_late",
        "Answers after a terminal state (recorded, outcome unchanged)",
        True,
        lambda r: r.commands.counters.late_acks,
    ),
    (
        "fieldlink_command_acks_rejected",
        "Answers that were malformed, for unknown commands, or from another device",
        True,
        lambda r: r.commands.counters.acks_rejected,
    ),
    (
        "fieldlink_ws_forbidden",
        "Subscribes and commands refused by authorization",
        True,
        lambda r: r.hub.stats.forbidden,
    ),
    (
        "fieldlink_ws_rate_limited",
        "Client messages refused by the per-connection rate limit",
        True,
        lambda r: r.hub.stats.rate_limited,
    ),
    (
        "fieldlink_ws_token_expired",
        "Connections closed because their token expired",
        True,
        lambda r: r.hub.stats.expired,
    ),
    (
        "fieldlink_http_header_timeouts",
        "Connections closed because a request head was too slow (slowloris)",
        True,
        lambda r: r.handshake_stats.timed_out,
    ),
    (
        "fieldlink_auth_logins_failed",
        "Password logins refused",
        True,
        lambda r: r.identity.counters.login_failures,
    ),
    ("fieldlink_devices", "Registered devices", False, lambda r: len(r.ingestor.devices)),
    ("fieldlink_ws_clients", "Connected WebSocket clients", False, lambda r: r.hub.stats.connected),
    (
        "fieldlink_ws_connections",
        "WebSocket connections accepted",
        True,
        lambda r: r.hub.stats.connections_total,
    ),
    (
        "fieldlink_ws_events",
        "Events published to the gateway",
        True,
        lambda r: r.hub.stats.events_published,
    ),
    (
        "fieldlink_ws_deliveries",
        "Events delivered to clients",
        True,
        lambda r: r.hub.stats.deliveries,
    ),
    (
        "fieldlink_ws_writes",
        "Socket writes by the gateway",
        True,
        lambda r: r.hub.stats.frames_written,
    ),
    (
        "fieldlink_ws_slow_disconnects",
        "Clients closed as slow consumers",
        True,
        lambda r: r.hub.stats.slow_disconnects,
    ),
    (
        "fieldlink_ws_conflated",
        "Events replaced by a newer one for a lagging client",
        True,
        lambda r: r.hub.stats.conflated,
    ),
    (
        "fieldlink_ws_client_errors",
        "Client messages answered with an error",
        True,
        lambda r: r.hub.stats.client_errors,
    ),
)


class RuntimeCollector:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        for name, help_text, is_counter, sample in SCALARS:
            kind = CounterMetricFamily if is_counter else GaugeMetricFamily
            yield kind(name, help_text, value=sample(runtime))
        c = runtime.ingestor.counters
        for name, help_text, label, values, is_counter in (
            (
                "fieldlink_ingest_rejected",
                "Records rejected, by reason",
                "reason",
                c.rejected,
                True,
            ),
            ("fieldlink_ingest_dropped", "Records dropped, by reason", "reason", c.dropped, True),
            (
                "fieldlink_devices_by_status",
                "Devices by status",
                "status",
                runtime.status.counts(),
                False,
            ),
            (
                "fieldlink_auth_refused",
                "Requests and handshakes refused by authentication or limits, by code",
                "code",
                runtime.auth_refusals(),
                True,
            ),
            (
                "fieldlink_ws_handshakes_refused",
                "WebSocket handshakes refused, by code",
                "code",
                runtime.hub.stats.refused,
                True,
            ),
        ):
            labelled: Metric = (CounterMetricFamily if is_counter else GaugeMetricFamily)(
                name, help_text, labels=[label]
            )
            for key, n in sorted(values.items()):
                labelled.add_metric([key], n)  # type: ignore[attr-defined]
            yield labelled


def registry_for(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
