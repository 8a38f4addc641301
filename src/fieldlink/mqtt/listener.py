"""The hub's MQTT client: subscribes to the ingest filters and feeds every message to the one
ingest path. Reconnects by itself (gmqtt) and resubscribes on every connect.

Acknowledge after store. A QoS 1 telemetry message is acknowledged (PUBACK) only once the
store has committed it; until then the broker keeps it in this client's persistent session and
sends it again after a reconnect, so a hub crash or a database outage loses nothing the broker
accepted. Messages that carry nothing to store (rejected input, status) are acknowledged at
once. gmqtt acknowledges before its ``on_message`` callback unless it is given a coroutine per
message; to keep the hot path free of a task per message we replace its QoS 1 packet handler
(one method of gmqtt 0.8, pinned in pyproject.toml) and acknowledge a whole store batch from
one callback. ``tests/integration/test_faults.py`` fails if a future gmqtt breaks this.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

from fieldlink.core.topics import TopicScheme
from fieldlink.services.ingest import Ingestor

log = logging.getLogger("fieldlink.mqtt")

# How long the broker keeps this instance's session (and queues its messages) while it is
# away. mosquitto keeps routing a shared subscription's share to a member that crashed, so this
# also bounds how long a crashed instance that never returns holds its share (docs/scale-out.md).
SESSION_EXPIRY_S = 24 * 3600
# Reconnect backoff: 0.25 s, doubling per failed attempt, capped at 4 s (so a broker that comes
# back is found within 4 s, and a long outage costs one attempt every 4 s).
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 4.0
RECEIVE_MAXIMUM = 10_000


def parse_mqtt_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"unsupported MQTT URL {url!r}: use mqtt://HOST:PORT")
    return parts.hostname or "127.0.0.1", parts.port or 1883


class MqttIngest:
    """The ingest subscription.

    It uses a persistent MQTT session (``clean_session=False`` with a stable ``client_id``), so
    QoS 1 telemetry published while the hub is reconnecting, or while the broker restarts with
    persistence, is queued by the broker and delivered afterwards.
    """

    def __init__(
        self,
        url: str,
        ingestor: Ingestor,
        scheme: TopicScheme,
        client_id: str | None = None,
        shared_group: str | None = None,
        session_expiry_s: int = SESSION_EXPIRY_S,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.ingestor = ingestor
        self.scheme = scheme
        self.connected = asyncio.Event()
        self.client = Client(
            client_id or f"fieldlink-{secrets.token_hex(4)}",
            clean_session=False,
            # MQTT v5 ends a session on disconnect unless it has an expiry interval.
            session_expiry_interval=session_expiry_s,
            # Unacknowledged messages the broker may have in flight to us: bounds what waits
            # in memory for a commit (the ingestor's buffer is larger, so it never overflows).
            receive_maximum=RECEIVE_MAXIMUM,
        )
        handler = self.client._package_handler
        if not hasattr(handler, "_handle_qos_1_publish_packet") or not hasattr(
            handler, "_send_puback"
        ):
            raise RuntimeError("this gmqtt version lacks the QoS 1 hook fieldlink relies on")
        self._send_puback = handler._send_puback
        handler._handle_qos_1_publish_packet = self._on_qos1_publish
        self._ack_future: asyncio.Future[Any] | None = None
        self._ack_mids: list[int] = []
        self._generation = 0  # connection count: acks never cross a reconnect
        self.acked = 0
        self.unacked_failed = 0
        self.on_connected: list[Callable[[], None]] = []
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        if credentials is not None:
            self.client.set_auth_credentials(*credentials)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": RECONNECT_MIN_S})
        self._backoff: asyncio.Task[None] | None = None
        self.connects = 0
        self.stopping = False
        # With several instances each message must be handled once: a shared subscription
        # makes the broker hand every message to one member of the group.
        self.shared = bool(shared_group)
        prefix = f"$share/{shared_group}/" if shared_group else ""
        self.filters = [prefix + f for f in scheme.ingest_filters()]

    async def start(self) -> None:
        # MQTT 3.1.1: no per-packet v5 property parsing (about 5% of the ingest loop); shared
        # subscriptions and persistent sessions work with 3.1.1 clients on mosquitto and EMQX.
        await self.client.connect(self.host, self.port, keepalive=30, version=MQTTv50)
        await asyncio.wait_for(self.connected.wait(), 10)

    async def stop(self, settle_s: float = 5.0) -> None:
        """Leave the shared group (so the broker stops queueing this instance's share), let
        what was received reach the store and be acknowledged, then disconnect. Anything still
        unacknowledged is sent again when this session resumes."""
        if self._drainer is not None:
            self._drainer.cancel()
        if self._backoff is not None:
            self._backoff.cancel()
        if self.shared and self.connected.is_set():
            for topic_filter in self.filters:
                self.client.unsubscribe(topic_filter)
        try:
            await asyncio.wait_for(self.ingestor.settled(), settle_s)
        except TimeoutError:
            log.warning("mqtt: stopping with records not yet stored; the broker keeps them")
        self.stopping = True
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except (TimeoutError, OSError) as exc:
            log.warning("mqtt disconnect: %s", exc)

    def _on_connect(self, client: Client, flags: Any, rc: Any, properties: Any) -> None:
        self.connects += 1
        self._generation += 1
        self._ack_future = None
        self._subscribe_all()
        self.connected.set()
        for callback in self.on_connected:
            callback()
        log.info(
            "mqtt connected to %s:%d, subscribed to %s",
            self.host,
            self.port,
            ", ".join(self.filters),
        )

    def _subscribe_all(self) -> None:
        """(Re)subscribe. Packet ids are shared with outgoing QoS 1 publishes; if commands
        hold all of them, try again shortly rather than lose the subscription."""
        try:
            for topic_filter in self.filters:
                self.client.subscribe(topic_filter, qos=1)
        except OverflowError:
            asyncio.get_running_loop().call_later(0.05, self._subscribe_all)

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish at QoS 1 (commands to devices); False when not connected. The broker caps
        unacknowledged messages per client (its receive maximum, 20 on a default mosquitto);
        beyond that, messages wait here in order and go out as acknowledgements free room."""
        if not self.connected.is_set():
            return False
        self._outbox.append((topic, payload))
        self._send_outbox()
        return True

    def _send_outbox(self) -> None:
        """Send what waits, in order, until gmqtt has no packet id left; then retry soon."""
        while self._outbox:
            topic, payload = self._outbox[0]
            try:
                self.client.publish(topic, payload, qos=1)
            except OverflowError:  # gmqtt: every packet id is in flight
                if self._drainer is None or self._drainer.done():
                    self._drainer = asyncio.get_running_loop().create_task(self._drain())
                return
            self._outbox.popleft()

    async def _drain(self) -> None:
        while self._outbox:
            await asyncio.sleep(0.005)
            # While disconnected gmqtt resends what is in flight; the rest waits for the link.
            if self.connected.is_set():
                self._send_outbox()

    def _on_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        self.connected.clear()
        if self.stopping:
            log.info("mqtt disconnected from %s:%d (shutting down)", self.host, self.port)
            return
        log.warning("mqtt disconnected from %s:%d; reconnecting", self.host, self.port)
        if self._backoff is None or self._backoff.done():
            self._backoff = asyncio.get_running_loop().create_task(self._grow_backoff())

    async def _grow_backoff(self) -> None:
        """gmqtt retries with the configured delay, read before each attempt, and counts its
        failed attempts; keep the delay at min(max, min * 2^failures) until connected."""
        state = getattr(self.client, "_connection_state", None)
        try:
            while not self.connected.is_set() and not self.stopping:
                failures = int(getattr(state, "failed_connections", 0))
                delay = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2 ** min(failures, 8))
                self.client.set_config({"reconnect_delay": delay})
                await asyncio.sleep(0.05)
        finally:
            self.client.set_config({"reconnect_delay": RECONNECT_MIN_S})

    def _ingest(self, topic: Any, payload: bytes) -> asyncio.Future[Any] | None:
        if not isinstance(topic, str):  # gmqtt hands over undecodable topics as bytes
            self.ingestor.counters.received += 1
            self.ingestor.counters.reject("invalid_topic")
            return None
        return self.ingestor.ingest_mqtt(topic, payload)

    def _on_message(
        self, client: Client, topic: Any, payload: bytes, qos: int, properties: Any
    ) -> int:
        """QoS 0 (and QoS 2) messages: nothing to acknowledge after the store."""
        self._ingest(topic, payload)
        return 0

    def _on_qos1_publish(self, mid: int, payload: bytes, topic: Any, properties: Any) -> None:
        """Replaces gmqtt's QoS 1 handler: ingest, then PUBACK when the batch is committed."""
        future = self._ingest(topic, payload)
        if future is None:  # rejected, a status message, or nothing to store: done now
            self._send_puback(mid)
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
            self._send_puback(mid)
        self.acked += len(mids)
