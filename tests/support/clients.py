"""Helpers around real third-party clients (paho-mqtt, websockets) for integration tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as mqtt
from websockets.asyncio.client import ClientConnection, connect


@asynccontextmanager
async def paho_client(port: int, **kwargs: Any) -> AsyncIterator[mqtt.Client]:
    """A connected paho client (network loop in its thread); disconnected on exit."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    connected = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        loop.call_soon_threadsafe(lambda: connected.done() or connected.set_result(rc))

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        await asyncio.wait_for(connected, 5)
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


async def publish(client: mqtt.Client, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
    """Publish and wait for the broker's PUBACK (QoS 1)."""
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    info = client.publish(topic, body, qos=qos, retain=retain)
    await asyncio.to_thread(info.wait_for_publish, 5)


class WsClient:
    """A websockets client that flattens batched frames (JSON arrays) into single messages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._buffer: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while not self._buffer:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            self._buffer.extend(frame if isinstance(frame, list) else [frame])
        return self._buffer.pop(0)

    async def recv_until(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first message matching ``predicate``; earlier ones are discarded."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("no matching message")
            message = await self.recv(remaining)
            if predicate(message):
                return message

    async def subscribe(self, channel: str) -> dict[str, Any]:
        return await self.subscribe_raw({"type": "subscribe", "channel": channel})

    async def subscribe_raw(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a subscribe message as given; its answer (``subscribed`` or ``error``)."""
        await self.send(message)
        return await self.recv_until(lambda m: m["type"] in ("subscribed", "error"))


@asynccontextmanager
async def ws_client(url: str, **kwargs: Any) -> AsyncIterator[WsClient]:
    async with connect(url, **kwargs) as ws:
        client = WsClient(ws)
        hello = await client.recv()
        assert hello["type"] == "connected", hello
        yield client


async def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll a condition with a deadline, for state that has no event to await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)
