"""The hub's MQTT client: subscribes to the ingest filters and feeds every message to the one
ingest path. Reconnects by itself (gmqtt) and resubscribes on every connect."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv311

from fieldlink.core.topics import TopicScheme
from fieldlink.services.ingest import Ingestor

log = logging.getLogger("fieldlink.mqtt")


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
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.ingestor = ingestor
        self.scheme = scheme
        self.connected = asyncio.Event()
        self.client = Client(
            client_id or f"fieldlink-{secrets.token_hex(4)}",
            clean_session=False,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        self.connects = 0
        self.stopping = False

    async def start(self) -> None:
        # MQTT 3.1.1: no per-packet v5 property parsing (about 5% of the ingest loop); shared
        # subscriptions and persistent sessions work with 3.1.1 clients on mosquitto and EMQX.
        await self.client.connect(self.host, self.port, keepalive=30, version=MQTTv311)
        await asyncio.wait_for(self.connected.wait(), 10)

    async def stop(self) -> None:
        self.stopping = True
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except (TimeoutError, OSError) as exc:
            log.warning("mqtt disconnect: %s", exc)

    def _on_connect(self, client: Client, flags: Any, rc: Any, properties: Any) -> None:
        self.connects += 1
        for topic_filter in self.scheme.ingest_filters():
            client.subscribe(topic_filter, qos=1)
        self.connected.set()
        log.info(
            "mqtt connected to %s:%d, subscribed to %s",
            self.host,
            self.port,
            ", ".join(self.scheme.ingest_filters()),
        )

    def _on_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        self.connected.clear()
        if self.stopping:
            log.info("mqtt disconnected from %s:%d (shutting down)", self.host, self.port)
        else:
            log.warning("mqtt disconnected from %s:%d; reconnecting", self.host, self.port)

    def _on_message(
        self, client: Client, topic: Any, payload: bytes, qos: int, properties: Any
    ) -> int:
        if not isinstance(topic, str):  # gmqtt hands over undecodable topics as bytes
            self.ingestor.counters.received += 1
            self.ingestor.counters.reject("invalid_topic")
            return 0
        self.ingestor.ingest_mqtt(topic, payload)
        return 0
