"""Messages from the hub to devices (commands on ``edge/{id}/control``) at QoS 1, on the hub's
own outgoing MQTT connection (``ports.ControlPublisher``).

The broker caps the unacknowledged messages a client may have in flight (its receive
maximum: 20 on a default mosquitto; gmqtt raises when every packet id is taken). Beyond that,
messages wait in a bounded outbox, in order, and go out as acknowledgements free room. A full
outbox or a lost connection refuses the message (``publish`` returns False, counted): the
command service decides what happens to the command.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator

from fieldlink.core.measures import Measure
from fieldlink.mqtt.connection import MqttConnection

log = logging.getLogger("fieldlink.mqtt")

MAX_OUTBOX = 10_000


class MqttPublisher:
    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        credentials: tuple[str, str] | None = None,
        session_expiry_s: int = 24 * 3600,
        max_outbox: int = MAX_OUTBOX,
    ) -> None:
        # A persistent session: messages in flight when the link drops are sent again by
        # gmqtt after the reconnect (a clean session would discard them).
        self.connection = MqttConnection(
            url,
            client_id=client_id,
            name="commands",
            clean_session=False,
            credentials=credentials,
            session_expiry_s=session_expiry_s,
        )
        self.max_outbox = max_outbox
        self.refused = 0
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.connection.connected.is_set()

    @property
    def connections(self) -> int:
        return self.connection.connects

    async def start(self) -> None:
        await self.connection.start()

    async def stop(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
        await self.connection.stop()

    def publish(self, topic: str, payload: bytes) -> bool:
        """Send at QoS 1, or queue behind what waits; False (counted) when not connected or
        the outbox is full."""
        if not self.connected or len(self._outbox) >= self.max_outbox:
            self.refused += 1
            return False
        self._outbox.append((topic, payload))
        self._send_outbox()
        return True

    def _send_outbox(self) -> None:
        """Send what waits, in order, until gmqtt has no packet id left; then retry soon."""
        client = self.connection.client
        while self._outbox:
            topic, payload = self._outbox[0]
            try:
                client.publish(topic, payload, qos=1)
            except OverflowError:  # gmqtt: every packet id is in flight
                if self._drainer is None or self._drainer.done():
                    self._drainer = asyncio.get_running_loop().create_task(self._drain())
                return
            self._outbox.popleft()

    async def _drain(self) -> None:
        while self._outbox:
            await asyncio.sleep(0.005)
            # While disconnected gmqtt resends what is in flight; the rest waits for the link.
            if self.connected:
                self._send_outbox()

    def measures(self) -> Iterator[Measure]:
        yield Measure(
            "fieldlink_commands_publish_refused",
            "Control messages refused by the publisher (broker link down or outbox full)",
            "counter",
            self.refused,
        )
