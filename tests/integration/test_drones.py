"""The drone fleet seed (scenario 002) end to end: its Python detector and its JavaScript-style
browser client, as python-socketio clients at ``/ws/events``, against three hub instances
sharing mosquitto, Redis and PostgreSQL. Registry changes made over REST on any instance reach
every subscribed client once, in order, named as the seed names them (``drone:event``), and a
client subscribed to one drone sees only that drone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import socketio

from tests.support.clients import wait_until

PATH = "/ws/events"  # the seed's Socket.IO path (Settings: "/ws/events/")
SIO_PATHS = ("/socket.io/", "/ws/events/")
REGISTER = {  # the seed's curl body
    "deviceSerialNumber": "DRONE123",
    "deviceName": "Test Drone",
    "deviceCategory": "Surveillance",
    "streamIsOn": False,
}


class DroneClient:
    """The seed's client: ``socketio.AsyncClient`` connected with the path and a token, which
    subscribes in its ``connected`` handler, as the seed does, and keeps every ``drone:event``
    in arrival order."""

    def __init__(self, subscription: dict[str, Any]) -> None:
        self.subscription = subscription
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[dict[str, Any]] = []
        self.errors: list[Any] = []
        self.hello: dict[str, Any] | None = None
        loop = asyncio.get_running_loop()
        self.ack: asyncio.Future[Any] = loop.create_future()
        self._arrived = asyncio.Event()

        @self.sio.event
        async def connected(data: dict[str, Any]) -> None:
            self.hello = data

            def on_ack(answer: Any = None) -> None:
                if not self.ack.done():
                    self.ack.set_result(answer)

            await self.sio.emit("subscribe", self.subscription, callback=on_ack)

        @self.sio.on("drone:event")
        async def on_drone_event(event: dict[str, Any]) -> None:
            self.events.append(event)
            self._arrived.set()

        @self.sio.on("fieldlink:error")
        async def on_error(error: Any) -> None:
            self.errors.append(error)

    async def connect(self, hub: Any, transports: list[str] | None = None) -> None:
        """Connect and wait for the subscription's ack (until then nothing is subscribed)."""
        await self.sio.connect(hub.http_url, socketio_path=PATH, auth={"token": hub.token},
                               transports=transports, wait_timeout=10)
        answer = await asyncio.wait_for(self.ack, 10)
        assert answer == {"ok": True}, answer
        assert self.hello == {"clientId": self.sio.get_sid("/")}

    def names(self) -> list[tuple[str, str]]:
        """(event, droneSerial) of every drone:event received, in order."""
        return [(e["event"], e["data"]["droneSerial"]) for e in self.events]

    async def wait_count(self, n: int, within: float = 10.0) -> dict[str, Any]:
        """The ``n``-th drone:event (1-based), waiting for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.events) < n:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{len(self.events)} drone events within {within} s, "
                                     f"wanted {n}: {self.names()}")
            self._arrived.clear()
            if len(self.events) < n:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.events[n - 1]


@asynccontextmanager
async def drone_client(hub: Any, subscription: dict[str, Any],
                       transports: list[str] | None = None) -> AsyncIterator[DroneClient]:
    client = DroneClient(subscription)
    try:
        await client.connect(hub, transports)
        yield client
    finally:
        await client.sio.disconnect()


async def test_drone_events_reach_every_instance_once_in_order(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        hubs = [
            await stack.enter_async_context(make_hub(
                mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                mqtt_shared_group="drones", socketio_paths=SIO_PATHS,
                data_dir=tmp_path / f"hub{i}"))
            for i in (1, 2, 3)
        ]
        a = await stack.enter_async_context(drone_client(hubs[0], {"droneSerial": "DRONE123"}))
        b = await stack.enter_async_context(drone_client(hubs[1], {"all": True}))
        c = await stack.enter_async_context(drone_client(hubs[2], {"all": True}))
        rest = [await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth)) for hub in hubs]
        step = 0

        def http() -> httpx.AsyncClient:
            """REST on the next instance in turn: every change is made on one instance and
            must reach the clients of the others through Redis."""
            nonlocal step
            step += 1
            return rest[(step - 1) % 3]

        async def arrived(clients: list[DroneClient]) -> list[dict[str, Any]]:
            """Each client's next drone:event (the one after what it had so far)."""
            return [await client.wait_count(counts[id(client)] + 1) for client in clients]

        counts: dict[int, int] = {}

        def mark(*clients: DroneClient) -> None:
            for client in clients:
                counts[id(client)] = len(client.events)

        # 1. Register with the seed's body (instance 1).
        mark(a, b, c)
        made = await http().post("/api/v1/drones/register", json=REGISTER)
        assert made.status_code == 201, made.text
        body = made.json()
        assert (body["device_id"], body["kind"], body["tenant"]) == ("DRONE123", "drone", "default")
        meta = {"name": "Test Drone", "category": "Surveillance", "streamIsOn": False}
        assert body["meta"] == meta
        for event in await arrived([a, b, c]):
            assert event == {"event": "drone.created", "data": {
                "droneSerial": "DRONE123",
                "full": {"droneSerial": "DRONE123", "kind": "drone", **meta}}}

        # 2. Two plain fields (instance 2): one drone.updated with exactly those two.
        mark(a, b, c)
        patched = await http().patch("/api/devices/DRONE123", json={
            "name": "Falcon", "attributes": {"category": "Inspection"}})
        assert patched.status_code == 200, patched.text
        two = {"name": {"old": "Test Drone", "new": "Falcon"},
               "category": {"old": "Surveillance", "new": "Inspection"}}
        assert patched.json()["changes"] == two
        for event in await arrived([a, b, c]):
            assert event == {"event": "drone.updated",
                             "data": {"droneSerial": "DRONE123", "changes": two}}

        # 3. The stream (instance 3): drone.stream.status with the new value, no drone.updated.
        mark(a, b, c)
        stream = await http().patch("/api/devices/DRONE123",
                                    json={"attributes": {"streamIsOn": True}})
        assert stream.json()["changes"] == {"streamIsOn": {"old": False, "new": True}}
        for event in await arrived([a, b, c]):
            assert event["event"] == "drone.stream.status"
            assert event["data"] == {"droneSerial": "DRONE123", "streamIsOn": True,
                                     "changes": {"streamIsOn": {"old": False, "new": True}}}

        # 4. AI detection (instance 1), 5. detection classes (instance 2).
        mark(a, b, c)
        toggled = await http().patch("/api/devices/DRONE123",
                                     json={"attributes": {"aiDetection": True}})
        assert toggled.json()["changes"] == {"aiDetection": {"old": None, "new": True}}
        for event in await arrived([a, b, c]):
            assert event["event"] == "drone.ai.detection.toggled"
            assert (event["data"]["droneSerial"], event["data"]["aiDetection"]) == (
                "DRONE123", True)
        mark(a, b, c)
        classes = ["person", "vehicle"]
        changed = await http().patch("/api/devices/DRONE123",
                                     json={"attributes": {"detectionClasses": classes}})
        assert changed.json()["changes"] == {"detectionClasses": {"old": None, "new": classes}}
        for event in await arrived([a, b, c]):
            assert event["event"] == "drone.detection.classes.changed"
            assert (event["data"]["droneSerial"], event["data"]["detectionClasses"]) == (
                "DRONE123", classes)

        # 6. A second drone (instance 3): the all-drones clients get it; A (one drone) must
        # not (its next event, below, is DRONE123's deletion).
        mark(a, b, c)
        other = await http().post("/api/v1/drones/register", json={
            "deviceSerialNumber": "OTHER1", "deviceName": "Other", "deviceCategory": "Inspection",
            "streamIsOn": True})
        assert other.status_code == 201, other.text
        for event in await arrived([b, c]):
            assert event["event"] == "drone.created"
            assert event["data"]["full"] == {"droneSerial": "OTHER1", "kind": "drone",
                                             "name": "Other", "category": "Inspection",
                                             "streamIsOn": True}

        # 7. Delete (instance 1).
        mark(a, b, c)
        deleted = await http().delete("/api/devices/DRONE123")
        assert deleted.json() == {"device_id": "DRONE123", "deleted": True, "purged_records": 0}
        for event in await arrived([a, b, c]):
            assert event == {"event": "drone.deleted", "data": {"droneSerial": "DRONE123"}}

        # 8. The marker (instance 2): DRONE123 registered again. Whatever else was on its way
        # to a client (a duplicate, OTHER1 for A) arrived before it.
        mark(a, b, c)
        again = await http().post("/api/v1/drones/register", json=REGISTER)
        assert again.status_code == 201, again.text
        for event in await arrived([a, b, c]):
            assert (event["event"], event["data"]["droneSerial"]) == ("drone.created", "DRONE123")

        one_drone = [("drone.created", "DRONE123"), ("drone.updated", "DRONE123"),
                     ("drone.stream.status", "DRONE123"),
                     ("drone.ai.detection.toggled", "DRONE123"),
                     ("drone.detection.classes.changed", "DRONE123")]
        after = [("drone.deleted", "DRONE123"), ("drone.created", "DRONE123")]
        assert a.names() == one_drone + after
        assert b.names() == one_drone + [("drone.created", "OTHER1")] + after
        assert c.names() == b.names()
        for client in (a, b, c):
            assert client.errors == []
        # The changes were made on every instance in turn, and each instance's registry
        # agrees: OTHER1 and DRONE123 (again, as registered).
        for http_client in rest:
            listed = (await http_client.get("/api/devices", params={"kind": "drone"})).json()
            assert [(d["device_id"], d["meta"]) for d in listed["devices"]] == [
                ("DRONE123", meta),
                ("OTHER1", {"name": "Other", "category": "Inspection", "streamIsOn": True})]


async def test_the_seeds_browser_client_works_at_ws_events(make_hub) -> None:  # type: ignore[no-untyped-def]
    """The JavaScript client of the seed (``io(url, {path: '/ws/events'})``, subscribe to all
    drones in ``connected``, a switch over ``event.event``) as python-socketio with its default
    transports: HTTP long-polling first, then the upgrade to WebSocket."""
    async with make_hub(socketio_paths=SIO_PATHS) as hub, \
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http, \
            drone_client(hub, {"all": True}) as browser:
        engine = hub.runtime.engines["/ws/events/"]
        await wait_until(lambda: browser.sio.transport() == "websocket", timeout=10,
                         what="the upgrade to WebSocket")
        assert (engine.stats.opened, engine.stats.upgrades) == (1, 1)

        made = await http.post("/api/v1/drones/register", json={
            "deviceSerialNumber": "TEST123", "deviceName": "Test Drone",
            "deviceCategory": "Surveillance", "streamIsOn": False})
        assert made.status_code == 201, made.text
        created = await browser.wait_count(1)
        # case 'drone.created': console.log('New drone:', event.data.full)
        assert created["event"] == "drone.created"
        assert created["data"]["full"] == {"droneSerial": "TEST123", "kind": "drone",
                                           "name": "Test Drone", "category": "Surveillance",
                                           "streamIsOn": False}

        # The demo's curl: PATCH streamIsOn -> case 'drone.stream.status': event.data.streamIsOn
        await http.patch("/api/devices/TEST123", json={"attributes": {"streamIsOn": True}})
        stream = await browser.wait_count(2)
        assert (stream["event"], stream["data"]["streamIsOn"]) == ("drone.stream.status", True)

        # case 'drone.updated': event.data.changes
        await http.patch("/api/devices/TEST123", json={"name": "Renamed"})
        updated = await browser.wait_count(3)
        assert updated == {"event": "drone.updated", "data": {
            "droneSerial": "TEST123", "changes": {"name": {"old": "Test Drone", "new": "Renamed"}}}}

        # Telemetry of some device and a plain (non-drone) registry change are not drone
        # events: the client's next drone:event is the deletion.
        assert (await http.post("/api/telemetry", json={"device_id": "pump-9", "v": 1})).is_success
        assert (await http.post("/api/devices", json={"id": "edge-9"})).status_code == 201
        assert (await http.delete("/api/devices/TEST123")).status_code == 200
        deleted = await browser.wait_count(4)
        assert deleted == {"event": "drone.deleted", "data": {"droneSerial": "TEST123"}}
        assert browser.names() == [("drone.created", "TEST123"), ("drone.stream.status", "TEST123"),
                                   ("drone.updated", "TEST123"), ("drone.deleted", "TEST123")]
        assert browser.errors == []
        assert browser.sio.transport() == "websocket"
