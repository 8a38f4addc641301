"""The hub's ingest subscription: hands each message to the service that owns its topic kind
(telemetry and custom routes to the ingestor, status to presence, acks to the command
service) and acknowledges QoS 1 messages once they are handled.

Acknowledge after store. A QoS 1 message is acknowledged (PUBACK) only once what it carried is
durable: a telemetry record's store batch committed, an ack's command log update written.
Until then the broker keeps it in this client's persistent session and sends it again after a
reconnect, so a hub crash or a database outage loses nothing the broker accepted. Messages
with nothing to store (rejected input, status) are acknowledged at once. A whole store batch
is acknowledged from one callback (no task per message).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

from gmqtt import Client

from fieldlink.core.measures import Measure
from fieldlink.core.topics import TopicKind, TopicScheme
from fieldlink.mqtt.connection import MqttConnection
from fieldlink.ports import AckIntake, StatusIntake, TelemetryIntake

log = logging.getLogger("fieldlink.mqtt")

# How long the broker keeps this instance's session (and queues its messages) while it is
# away. mosquitto keeps routing a shared subscription's share to a member that crashed, so this
# also bounds how long a crashed instance that never returns holds its share (docs/scale-out.md).
SESSION_EXPIRY_S = 24 * 3600
# Unacknowledged messages the broker may have in flight to us: bounds what waits in memory for
# a commit (the store writer's buffer is larger, so it never overflows).
RECEIVE_MAXIMUM = 10_000
UNKNOWN_TOPIC = "unknown_topic"
INVALID_TOPIC = "invalid_topic"
_TELEMETRY, _ROUTE, _STATUS, _ACK = (
    TopicKind.TELEMETRY,
    TopicKind.ROUTE,
    TopicKind.STATUS,
    TopicKind.ACK,
)


class MqttListener:
    """The ingest subscription, on a persistent MQTT v5 session (``clean_session=False`` with
    a stable ``client_id`` and an expiry), so QoS 1 telemetry published while the hub is
    reconnecting, or while the broker restarts with persistence, is delivered afterwards."""

    def __init__(
        self,
        url: str,
        *,
        scheme: TopicScheme,
        telemetry: TelemetryIntake,
        status: StatusIntake,
        acks: AckIntake,
        client_id: str,
        shared_group: str | None = None,
        session_expiry_s: int = SESSION_EXPIRY_S,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.scheme = scheme
        self.telemetry = telemetry
        self.status = status
        self.acks = acks
        self.connection = MqttConnection(
            url,
            client_id=client_id,
            name="ingest",
            clean_session=False,
            credentials=credentials,
            session_expiry_s=session_expiry_s,
            receive_maximum=RECEIVE_MAXIMUM,
            on_connect=self._on_connect,
            on_message=self._on_message,
            on_qos1_publish=self._on_qos1_publish,
        )
        self.connected = self.connection.connected
        self._ack_future: asyncio.Future[Any] | None = None
        self._ack_mids: list[int] = []
        self._generation = 0  # connection count: acks never cross a reconnect
        self.acked = 0
        self.unacked_failed = 0
        # With several instances each message must be handled once: a shared subscription
        # makes the broker hand every message to one member of the group.
        self.shared = bool(shared_group)
        prefix = f"$share/{shared_group}/" if shared_group else ""
        self.filters = [prefix + f for f in scheme.ingest_filters()]

    @property
    def client(self) -> Client:
        return self.connection.client

    @property
    def connects(self) -> int:
        return self.connection.connects

    async def start(self) -> None:
        await self.connection.start()

    async def stop(self, settle_s: float = 5.0) -> None:
        """Leave the shared group (so the broker stops queueing this instance's share), let
        what was received reach the store and be acknowledged, then disconnect. Anything still
        unacknowledged is sent again when this session resumes."""
        if self.shared and self.connected.is_set():
            for topic_filter in self.filters:
                self.client.unsubscribe(topic_filter)
        try:
            await asyncio.wait_for(self.telemetry.settled(), settle_s)
        except TimeoutError:
            log.warning("mqtt: stopping with records not yet stored; the broker keeps them")
        await self.connection.stop()

    def ok(self) -> bool:
        """Health: connected to the broker."""
        return self.connected.is_set()

    def _on_connect(self) -> None:
        self._generation += 1
        self._ack_future = None
        for topic_filter in self.filters:
            self.client.subscribe(topic_filter, qos=1)
        log.info(
            "mqtt connected to %s:%d, subscribed to %s",
            *self.connection.address,
            ", ".join(self.filters),
        )

    def _route(self, topic: Any, payload: bytes) -> asyncio.Future[Any] | None:
        """Hand the message to its owner; the future to wait for before acknowledging."""
        if not isinstance(topic, str):  # gmqtt hands over undecodable topics as bytes
            self.telemetry.refuse(INVALID_TOPIC)
            return None
        match = self.scheme.match(topic)
        if match is None:
            self.telemetry.refuse(UNKNOWN_TOPIC)
            return None
        kind = match.kind
        if kind is _TELEMETRY or kind is _ROUTE:
            return self.telemetry.ingest_mqtt(match, topic, payload)
        if kind is _STATUS:
            self.status.status_message(match.device_id or "", payload)
        elif kind is _ACK:
            return self.acks.handle_ack(match.device_id or "", payload)
        return None

    def _on_message(
        self, client: Client, topic: Any, payload: bytes, qos: int, properties: Any
    ) -> int:
        """QoS 0 (and QoS 2) messages: nothing to acknowledge after the store."""
        self._route(topic, payload)
        return 0

    def _on_qos1_publish(self, mid: int, payload: bytes, topic: Any, properties: Any) -> None:
        """QoS 1: route, then PUBACK when what it carried is durable (one callback per batch)."""
        future = self._route(topic, payload)
        if future is None:  # rejected, a status message, or nothing to store: done now
            self.connection.send_puback(mid)
            self.acked += 1
            return
        if future is not self._ack_future:  # the first message of a new store batch
            self._ack_future = future
            self._ack_mids = []
            future.add_done_callback(partial(self._batch_done, self._ack_mids, self._generation))
        self._ack_mids.append(mid)

    def _batch_done(self, mids: list[int], generation: int, future: asyncio.Future[Any]) -> None:
        if future is self._ack_future:
            self._ack_future = None
        if future.cancelled() or future.exception() is not None:
            # Not stored (buffer full): no PUBACK, so the broker sends it again after the next
            # reconnect of this session.
            self.unacked_failed += len(mids)
            return
        if generation != self._generation or not self.connected.is_set():
            return  # that connection is gone: the broker re-sends these on the new one
        for mid in mids:
            self.connection.send_puback(mid)
        self.acked += len(mids)

    def measures(self) -> Iterator[Measure]:
        yield Measure(
            "fieldlink_mqtt_acked",
            "QoS 1 messages acknowledged to the broker (after the store committed them)",
            "counter",
            self.acked,
        )
