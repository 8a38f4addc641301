"""Runs simulated edge nodes against a hub: MQTT first, HTTP as the fallback.

Transport policy (SPEC §1 "Edge node"): each report is published at QoS 1 on
``{prefix}/{id}/telemetry`` and counts as delivered when the broker's PUBACK arrives within
``puback_timeout_s``. A report that fails (not connected, refused, or no PUBACK in time) is kept
in a bounded backlog, so nothing is dropped silently; after ``failures_to_fallback`` (3)
consecutive failures the device switches to ``POST /api/telemetry`` and sends the backlog with
the new report (a 2xx means stored). The MQTT client keeps reconnecting in the background;
when it is connected again the device returns to MQTT. A report may reach the hub twice (paho
resends unacknowledged QoS 1 messages after reconnecting); the hub stores it once, by ``seq``.

The MQTT client sets a retained last will ``offline`` on ``{prefix}/{id}/status`` and publishes a
retained ``online`` on every connect; ``stop`` publishes ``offline`` itself (a clean disconnect
does not fire the will).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
import orjson
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from fieldlink.mqtt.connection import parse_mqtt_url
from fieldlink.simulator.model import NodeModel, device_id

log = logging.getLogger("fieldlink.simulator")

Transport = Literal["mqtt", "http"]
# How a simulated device answers commands: carry them out and ack, report a failure, stay
# silent, or ack after ``late_ack_s`` (for tests and demos of each outcome).
CommandBehavior = Literal["ack", "fail", "ignore", "late"]
BACKLOG_MAX = 1000


class HostStats:
    """psutil readings shared by every simulated node, refreshed at most once a second."""

    def __init__(self) -> None:
        self._at = 0.0
        self._value: dict[str, float] = {}
        psutil.cpu_percent(interval=None)  # prime: the first call always returns 0.0

    def read(self) -> dict[str, float]:
        now = time.monotonic()
        if now - self._at >= 1.0:
            self._value = {
                "cpu": psutil.cpu_percent(interval=None),
                "ram": psutil.virtual_memory().percent,
                "disk": psutil.disk_usage("/").percent,
            }
            self._at = now
        return self._value


class SimulatedDevice:
    def __init__(
        self,
        model: NodeModel,
        *,
        mqtt_url: str,
        http: httpx.AsyncClient,
        prefix: str = "edge",
        host_stats: HostStats | None = None,
        executor: ThreadPoolExecutor | None = None,
        puback_timeout_s: float = 2.0,
        failures_to_fallback: int = 3,
        keepalive_s: int = 10,
        command_behavior: CommandBehavior = "ack",
        ack_delay_s: float = 0.0,
        late_ack_s: float = 15.0,
    ) -> None:
        self.model = model
        self.id = model.device_id
        self.host, self.port = parse_mqtt_url(mqtt_url)
        self.http = http
        self.prefix = prefix
        self.host_stats = host_stats or HostStats()
        self.executor = executor
        self.puback_timeout_s = puback_timeout_s
        self.failures_to_fallback = failures_to_fallback
        self.keepalive_s = keepalive_s
        self.transport: Transport = "mqtt"
        self.transitions: list[Transport] = ["mqtt"]
        self.sent_mqtt = 0
        self.sent_http = 0
        self.mqtt_failures = 0
        self.http_failures = 0
        self.consecutive_failures = 0
        self.delivered: list[int] = []  # seqs acknowledged by the broker or stored over HTTP
        self.backlog: deque[dict[str, Any]] = deque(maxlen=BACKLOG_MAX)
        self.mqtt_connected = False
        self._last_ts = 0.0
        # A persistent session: commands (QoS 1 on the control topic) sent while the device is
        # reconnecting are kept by the broker and delivered when it is back.
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fieldlink-{self.id}", clean_session=False
        )
        self.client.will_set(self._topic("status"), "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.message_callback_add(self._topic("control"), self._on_control)
        self.command_behavior: CommandBehavior = command_behavior
        self.ack_delay_s = ack_delay_s
        self.late_ack_s = late_ack_s
        self.commands_received: list[dict[str, Any]] = []
        self.acks_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _topic(self, leaf: str) -> str:
        return f"{self.prefix}/{self.id}/{leaf}"

    # paho callbacks run on paho's network thread; they only set flags and publish.
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        if not rc.is_failure:
            self.mqtt_connected = True
            sock = client.socket()
            if isinstance(sock, socket.socket):
                # The ack follows our PUBACK of the command at once: without this, Nagle holds
                # it until the broker's delayed ACK (40 ms).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.subscribe(self._topic("control"), qos=1)
            client.publish(self._topic("status"), "online", qos=1, retain=True)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        self.mqtt_connected = False

    def _on_control(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """A command (paho's thread): hand it to the event loop."""
        try:
            command = orjson.loads(message.payload)
            if not isinstance(command, dict) or not isinstance(command.get("id"), str):
                raise ValueError("not a command")
        except ValueError as exc:
            log.warning("%s: ignored a bad control message: %s", self.id, exc)
            return
        self.commands_received.append(command)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                lambda: self._loop.create_task(self._answer(command))  # type: ignore[union-attr]
            )

    async def _answer(self, command: dict[str, Any]) -> None:
        behavior = self.command_behavior
        if behavior == "ignore":
            return
        await asyncio.sleep(self.late_ack_s if behavior == "late" else self.ack_delay_s)
        ack: dict[str, Any] = {"id": command["id"]}
        if behavior == "fail":
            ack.update(ok=False, error="simulated failure")
        else:
            params = command.get("params")
            ok, outcome = self.model.execute(
                str(command.get("action")), params if isinstance(params, dict) else {}
            )
            ack.update(ok=ok, **({"result": outcome} if ok else {"error": outcome}))
        self.client.publish(self._topic("ack"), orjson.dumps(ack), qos=1)
        self.acks_sent += 1

    def start(self) -> None:
        """Connect in the background; a broker that is down now is retried by paho."""
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self.client.loop_start()

    async def stop(self) -> None:
        if self.mqtt_connected:
            # Going away on purpose: say so (a plain "offline" is the last will's).
            info = self.client.publish(
                self._topic("status"),
                b'{"status":"offline","reason":"clean_disconnect"}',
                qos=1,
                retain=True,
            )
            with contextlib.suppress(Exception):
                await self._wait_puback(info)
        self.client.disconnect()
        await asyncio.get_running_loop().run_in_executor(self.executor, self.client.loop_stop)

    async def _wait_puback(self, info: mqtt.MQTTMessageInfo) -> bool:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, info.wait_for_publish, self.puback_timeout_s)
        return info.is_published()

    def next_record(self) -> dict[str, Any]:
        now = time.time()
        dt_s = now - self._last_ts if self._last_ts else 5.0
        self._last_ts = now
        return self.model.step(dt_s, self.host_stats.read(), int(now * 1000))

    async def tick(self) -> bool:
        """Make one report and deliver it (and any backlog). True if it was delivered."""
        return await self.deliver(self.next_record())

    async def deliver(self, record: dict[str, Any]) -> bool:
        if self.transport == "http" and self.mqtt_connected:
            self._switch("mqtt")
        if self.transport == "mqtt":
            if await self._send_mqtt([*self.backlog, record]):
                self.backlog.clear()
                self.consecutive_failures = 0
                return True
            self.mqtt_failures += 1
            self.consecutive_failures += 1
            self.backlog.append(record)
            if self.consecutive_failures >= self.failures_to_fallback:
                self._switch("http")
                return await self._deliver_backlog_http()
            return False
        self.backlog.append(record)
        return await self._deliver_backlog_http()

    def _switch(self, transport: Transport) -> None:
        log.info("%s: switching to %s", self.id, transport)
        self.transport = transport
        self.transitions.append(transport)
        self.consecutive_failures = 0

    async def _send_mqtt(self, records: list[dict[str, Any]]) -> bool:
        if not self.mqtt_connected:
            return False
        infos = []
        for record in records:
            info = self.client.publish(self._topic("telemetry"), orjson.dumps(record), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            infos.append((record, info))
        for record, info in infos:
            try:
                if not await self._wait_puback(info):
                    return False
            except (RuntimeError, ValueError):
                return False
            self.sent_mqtt += 1
            self.delivered.append(record["seq"])
        return True

    async def _deliver_backlog_http(self) -> bool:
        records = list(self.backlog)
        body = [{"device_id": self.id, **r} for r in records]
        try:
            response = await self.http.post(
                "/api/telemetry",
                content=orjson.dumps(body),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            log.warning("%s: HTTP fallback failed: %s", self.id, exc)
            self.http_failures += 1
            return False
        if response.status_code // 100 != 2:
            log.warning("%s: HTTP fallback answered %d", self.id, response.status_code)
            self.http_failures += 1
            return False
        self.backlog.clear()
        self.sent_http += len(records)
        self.delivered.extend(r["seq"] for r in records)
        return True


async def run_fleet(
    *,
    count: int,
    mqtt_url: str,
    http_url: str,
    interval_s: float = 5.0,
    seed: int = 1,
    prefix: str = "edge",
    id_prefix: str = "sim",
    command_behavior: CommandBehavior = "ack",
    ack_delay_s: float = 0.0,
) -> None:
    """Run ``count`` simulated nodes until cancelled, each reporting every ``interval_s``
    (starts staggered over the first interval)."""
    host_stats = HostStats()
    executor = ThreadPoolExecutor(
        max_workers=min(64, max(4, count * 2)), thread_name_prefix="sim-puback"
    )
    async with httpx.AsyncClient(base_url=http_url, timeout=5.0) as http:
        devices = [
            SimulatedDevice(
                NodeModel.create(device_id(i + 1, id_prefix), seed),
                mqtt_url=mqtt_url,
                http=http,
                prefix=prefix,
                host_stats=host_stats,
                executor=executor,
                command_behavior=command_behavior,
                ack_delay_s=ack_delay_s,
            )
            for i in range(count)
        ]
        for device in devices:
            device.start()

        async def report(device: SimulatedDevice, offset_s: float) -> None:
            await asyncio.sleep(offset_s)
            next_at = time.monotonic()
            while True:
                await device.tick()
                next_at += interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        tasks = [
            asyncio.create_task(report(d, interval_s * i / count)) for i, d in enumerate(devices)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(d.stop() for d in devices), return_exceptions=True)
            executor.shutdown(wait=False)
