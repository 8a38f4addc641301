"""One MQTT v5 connection of the hub (gmqtt) with fieldlink's reconnect policy.

gmqtt reconnects by itself; this adds a capped exponential backoff (0.25 s doubling to 4 s, so
a broker that comes back is found within 4 s and a long outage costs one attempt every 4 s)
and a count of successful connects. The listener (ingest) and the publisher (commands) each
own one, so a flood of telemetry never delays a command and the two never share packet ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

log = logging.getLogger("fieldlink.mqtt")

RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 4.0

# gmqtt calls these with the client first (its callback convention).
MessageHandler = Callable[[Client, Any, bytes, int, Any], int]
Qos1Handler = Callable[[int, bytes, Any, Any], None]


def parse_mqtt_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"unsupported MQTT URL {url!r}: use mqtt://HOST:PORT")
    return parts.hostname or "127.0.0.1", parts.port or 1883


class MqttConnection:
    """``on_connect`` runs after every (re)connect; ``on_message`` gets QoS 0 messages (and
    QoS 1 ones unless ``on_qos1_publish`` takes them: then acknowledging them is the
    handler's job, through ``send_puback``)."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        name: str,
        clean_session: bool,
        credentials: tuple[str, str] | None = None,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        on_connect: Callable[[], None] | None = None,
        on_message: MessageHandler | None = None,
        on_qos1_publish: Qos1Handler | None = None,
    ) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.name = name
        self.connected = asyncio.Event()
        self.connects = 0
        self.stopping = False
        self._on_connect_callback = on_connect
        properties: dict[str, Any] = {}
        if session_expiry_s is not None:
            # MQTT v5 ends a session on disconnect unless it has an expiry interval.
            properties["session_expiry_interval"] = session_expiry_s
        if receive_maximum is not None:
            properties["receive_maximum"] = receive_maximum
        self.client = Client(client_id, clean_session=clean_session, **properties)
        if credentials is not None:
            self.client.set_auth_credentials(*credentials)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        if on_message is not None:
            self.client.on_message = on_message
        if on_qos1_publish is not None:
            # gmqtt acknowledges QoS 1 before ``on_message`` unless it gets a coroutine per
            # message; this one method of gmqtt 0.8 (pinned) is replaced so a handler can
            # acknowledge later without a task per message. test_faults.py guards it.
            handler = self.client._package_handler
            if not hasattr(handler, "_handle_qos_1_publish_packet") or not hasattr(
                handler, "_send_puback"
            ):
                raise RuntimeError("this gmqtt version lacks the QoS 1 hook fieldlink relies on")
            self.client._package_handler._handle_qos_1_publish_packet = on_qos1_publish
        self.client.set_config({"reconnect_retries": -1, "reconnect_delay": RECONNECT_MIN_S})
        self._backoff: asyncio.Task[None] | None = None

    def send_puback(self, mid: int) -> None:
        self.client._package_handler._send_puback(mid)

    async def start(self, timeout_s: float = 10.0) -> None:
        await self.client.connect(self.host, self.port, keepalive=30, version=MQTTv50)
        await asyncio.wait_for(self.connected.wait(), timeout_s)

    async def stop(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
        self.stopping = True
        try:
            await asyncio.wait_for(self.client.disconnect(), 5)
        except (TimeoutError, OSError) as exc:
            log.warning("mqtt %s disconnect: %s", self.name, exc)

    def _on_connect(self, client: Client, flags: Any, rc: Any, properties: Any) -> None:
        self.connects += 1
        self.connected.set()
        if self._on_connect_callback is not None:
            self._on_connect_callback()

    def _on_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        self.connected.clear()
        if self.stopping:
            log.info("mqtt %s disconnected from %s:%d (shutting down)", self.name, *self.address)
            return
        log.warning("mqtt %s disconnected from %s:%d; reconnecting", self.name, *self.address)
        if self._backoff is None or self._backoff.done():
            self._backoff = asyncio.get_running_loop().create_task(self._grow_backoff())

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

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
