"""The Socket.IO endpoint (docs/socketio.md) through python-socketio's real clients
(``socketio.AsyncClient`` and the threaded ``socketio.Client``) against hubs the tests start:
live device data on every transport, counted for duplicates and gaps; commands answered through
the ack for every outcome; refusals (token, tenant, origin); malformed Engine.IO and Socket.IO
input that must not disturb a healthy client; the display throttle; and two instances sharing
one broker, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import jwt
import paho.mqtt.client as mqtt
import pytest
import socketio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.test_commands import fleet
from tests.integration.test_security import claims, hub_secret, two_tenants
from tests.support.clients import paho_client, publish

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
Predicate = Callable[[Any], bool]


# ---- helpers ----------------------------------------------------------------------------


class Inbox:
    """Every event a client received, in order, with awaiting by name and predicate. Events
    may be added from another thread (the sync client's) through ``add_threadsafe``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._loop = asyncio.get_running_loop()
        self._waiters: list[tuple[str, Predicate, asyncio.Future[Any]]] = []

    def add(self, name: str, data: Any) -> None:
        self.events.append((name, data))
        for waiter in list(self._waiters):
            wanted, predicate, future = waiter
            if wanted == name and not future.done() and predicate(data):
                future.set_result(data)
                self._waiters.remove(waiter)

    def add_threadsafe(self, name: str, data: Any) -> None:
        self._loop.call_soon_threadsafe(self.add, name, data)

    def of(self, name: str) -> list[Any]:
        return [data for event, data in self.events if event == name]

    async def wait_for(self, name: str, predicate: Predicate = lambda _: True,
                       within: float = 10.0) -> Any:
        """The first event ``name`` (received before or after this call) matching."""
        for event, data in self.events:
            if event == name and predicate(data):
                return data
        future: asyncio.Future[Any] = self._loop.create_future()
        waiter = (name, predicate, future)
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            recent = [event for event, _ in self.events[-10:]]
            raise AssertionError(f"no matching {name!r} within {within} s; "
                                 f"{len(self.events)} events, last: {recent}") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


class Sio:
    """One python-socketio client, async (``socketio.AsyncClient``) or sync
    (``socketio.Client``, its blocking calls run in threads), with an ``Inbox``."""

    def __init__(self, kind: str = "async") -> None:
        self.kind = kind
        self.inbox = Inbox()
        self.connect_errors: list[Any] = []
        if kind == "async":
            self.client: Any = socketio.AsyncClient(reconnection=False)

            async def on_any(event: str, *args: Any) -> None:
                self.inbox.add(event, args[0] if len(args) == 1 else list(args))

            async def on_connect_error(data: Any = None) -> None:
                self.connect_errors.append(data)
        else:
            self.client = socketio.Client(reconnection=False)

            def on_any(event: str, *args: Any) -> None:  # type: ignore[misc]
                self.inbox.add_threadsafe(event, args[0] if len(args) == 1 else list(args))

            def on_connect_error(data: Any = None) -> None:  # type: ignore[misc]
                self.connect_errors.append(data)

        self.client.on("*", on_any)
        self.client.on("connect_error", on_connect_error)

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self.client, method)
        if self.kind == "async":
            return await bound(*args, **kwargs)
        return await asyncio.to_thread(bound, *args, **kwargs)

    async def connect(self, url: str, *, auth: dict[str, Any] | None = None,
                      transports: list[str] | None = None,
                      headers: dict[str, str] | None = None) -> None:
        await self._run("connect", url, auth=auth, transports=transports, headers=headers or {},
                        wait_timeout=10)

    async def call(self, event: str, data: Any = None, within: float = 10.0) -> Any:
        return await self._run("call", event, data, timeout=within)

    async def emit(self, event: str, data: Any = None) -> None:
        await self._run("emit", event, data)

    async def disconnect(self) -> None:
        """Idempotent; also after a refused connect (it releases the HTTP session)."""
        await self._run("disconnect")

    @property
    def sid(self) -> str | None:
        return self.client.get_sid("/")  # type: ignore[no-any-return]

    @property
    def transport(self) -> str:
        return self.client.transport()  # type: ignore[no-any-return]


@asynccontextmanager
async def sio_client(kind: str = "async") -> AsyncIterator[Sio]:
    sio = Sio(kind)
    try:
        yield sio
    finally:
        await sio.disconnect()


@asynccontextmanager
async def connected(hub: Any, token: str | None = None, *, kind: str = "async",
                    transports: list[str] | None = None,
                    **auth: Any) -> AsyncIterator[Sio]:
    """A client connected with ``auth={"token": ..., **auth}`` that got its ``connected``."""
    async with sio_client(kind) as sio:
        await sio.connect(hub.http_url, auth={"token": token or hub.token, **auth},
                          transports=transports)
        hello = await sio.inbox.wait_for("connected")
        assert hello == {"clientId": sio.sid}
        yield sio


def seqs(events: list[Any], device: str) -> list[int]:
    """The ``seq`` of every ``device:data``/``device:telemetry`` payload of ``device``."""
    return [e["data"]["seq"] for e in events if e["deviceId"] == device]


def of_seq(device: str, seq: int) -> Predicate:
    return lambda e: e["deviceId"] == device and e["data"].get("seq") == seq


async def metrics_text(hub: Any) -> str:
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        return (await http.get("/metrics")).text


# ---- 1, 2: live device data on every transport ----------------------------------------------

TRANSPORTS = [
    pytest.param("async", None, "websocket", id="async-polling-then-upgrade"),
    pytest.param("async", ["websocket"], "websocket", id="async-websocket-only"),
    pytest.param("sync", None, "websocket", id="sync-polling-then-upgrade"),
    pytest.param("async", ["polling"], "polling", id="async-polling-only"),
]


@pytest.mark.parametrize(("kind", "transports", "ends_on"), TRANSPORTS)
async def test_subscribe_device_gets_the_snapshot_then_every_record_once(  # type: ignore[no-untyped-def]
    hub, kind: str, transports: list[str] | None, ends_on: str
) -> None:
    device = "sio-live"
    async with paho_client(hub.mqtt_port) as mqttc, \
            connected(hub, kind=kind, transports=transports) as sio:
        # The connection starts in the platform vocabulary: the first reading arrives as
        # device:telemetry through the tenant room, which shows it was ingested.
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": 0, "v": 0.0})
        await sio.inbox.wait_for("device:telemetry", of_seq(device, 0))

        assert await sio.call("subscribe:device", device) == {"ok": True}
        snapshot = await sio.inbox.wait_for("device:data", of_seq(device, 0), within=2)
        assert snapshot["data"]["v"] == 0.0

        for seq in range(1, 21):
            await publish(mqttc, f"edge/{device}/telemetry", {"seq": seq, "v": seq * 1.5})
        # seq 21 is the sentinel: whatever of 0..20 was to come (duplicates too) came before it.
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": 21, "v": 21 * 1.5})
        await sio.inbox.wait_for("device:data", of_seq(device, 21))
        transport = sio.transport

    data = sio.inbox.of("device:data")
    assert seqs(data, device) == list(range(22)), "the snapshot, then each record once, in order"
    for event in data:
        seq = event["data"]["seq"]
        assert event["deviceId"] == event["data"]["device_id"] == device
        assert event["data"]["v"] == seq * 1.5
        assert isinstance(event["data"]["ts"], int) and ISO_MS.match(event["timestamp"]), event
    # Once on the gas vocabulary the connection no longer gets the platform's names.
    assert seqs(sio.inbox.of("device:telemetry"), device) == [0]
    assert transport == ends_on
    engine = hub.runtime.engines["/socket.io/"]
    if transports is None:
        assert engine.stats.upgrades >= 1


# ---- 3: commands answered through the ack ----------------------------------------------------


async def test_send_command_answers_through_the_ack_for_every_outcome(hub) -> None:  # type: ignore[no-untyped-def]
    async with AsyncExitStack() as stack:
        (acker,) = await stack.enter_async_context(fleet(1, hub))
        (failer,) = await stack.enter_async_context(fleet(1, hub, first=2, command_behavior="fail"))
        (silent,) = await stack.enter_async_context(
            fleet(1, hub, first=3, command_behavior="ignore"))
        sio = await stack.enter_async_context(connected(hub))
        async with fleet(1, hub, first=4) as (gone,):
            pass  # connected, registered, stopped: it published "offline"

        async def timed(event: str, data: Any, within: float = 10.0) -> tuple[Any, float]:
            started = time.monotonic()
            answer = await sio.call(event, data, within=within)
            return answer, time.monotonic() - started

        # The silent device's command runs into the default 10 s deadline meanwhile.
        silent_call = asyncio.create_task(timed(
            "send:command", {"deviceId": silent.id, "action": "idle", "params": {}}, within=20))

        acked, _ = await timed("send:command", {"deviceId": acker.id, "action": "charge",
                                                "params": {"setpoint_kw": 2.5}})
        assert acked == {"success": True, "commandId": acked["commandId"], "deviceId": acker.id,
                         "action": "charge", "status": "acked",
                         "result": {"mode": "charge", "setpoint_kw": 2.5}}
        assert acker.model.battery.mode == "charge"

        failed, _ = await timed("send:command",
                                {"deviceId": failer.id, "action": "idle", "params": {}})
        assert failed["error"] == "simulated failure", failed
        assert (failed["status"], failed["reason"]) == ("failed", "device_error")
        assert "success" not in failed and "timeout" not in failed

        await sio.inbox.wait_for("device:status", lambda e: e["deviceId"] == gone.id
                                 and e["status"] == "offline")
        offline, offline_s = await timed("send:command",
                                         {"deviceId": gone.id, "action": "idle", "params": {}})
        assert offline["error"] == "the device is offline", offline
        assert (offline["status"], offline["reason"]) == ("failed", "offline")
        assert offline_s < 2.0

        unknown, unknown_s = await timed("send:command",
                                         {"deviceId": "no-such-device", "action": "idle"})
        # An admin may command any device id: the command is logged and rejected at once.
        assert unknown["error"] and unknown["deviceId"] == "no-such-device", unknown
        assert (unknown["status"], unknown["reason"]) == ("rejected", "unknown_device")
        assert "success" not in unknown and "timeout" not in unknown
        assert unknown_s < 2.0
        invalid, _ = await timed("send:command", {"deviceId": acker.id, "action": "1nope"})
        assert invalid["code"] == "invalid_action", invalid

        timed_out, waited_s = await silent_call
        print(f"send:command to a silent device answered after {waited_s:.3f} s")
        assert {k: timed_out.get(k) for k in ("timeout", "error")} == {
            "timeout": True, "error": "Device is not responding"}
        assert (timed_out["status"], timed_out["deviceId"]) == ("timeout", silent.id)
        assert "success" not in timed_out
        assert 10.0 <= waited_s < 13.0
        assert len(silent.commands_received) == 1 and silent.acks_sent == 0

        # The platform vocabulary also tells the tenant room each terminal state, once.
        ids = {acked["commandId"]: "acked", failed["commandId"]: "failed",
               offline["commandId"]: "failed", timed_out["commandId"]: "timeout"}
        for command_id in ids:
            await sio.inbox.wait_for("command:ack", lambda e, c=command_id: e["commandId"] == c)
        acks = [e for e in sio.inbox.of("command:ack") if e["commandId"] in ids]
        assert sorted((e["commandId"], e["status"]) for e in acks) == sorted(ids.items())


# ---- 4: refusals -------------------------------------------------------------------------------


async def refused_connect(hub: Any, auth: dict[str, Any] | None,
                          transports: list[str] | None = None) -> Any:
    """The CONNECT_ERROR data a client gets (connect raises); the hub stays up."""
    async with sio_client() as sio:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(hub.http_url, auth=auth, transports=transports)
        assert len(sio.connect_errors) == 1, sio.connect_errors
        assert not sio.inbox.of("connected")
        return sio.connect_errors[0]


async def test_connect_without_a_token_or_with_a_forged_one_is_refused(hub) -> None:  # type: ignore[no-untyped-def]
    missing = await refused_connect(hub, None)
    assert missing == {"message": "authentication required: connect with auth: {token}",
                       "data": {"code": "missing_token"}}
    missing_ws = await refused_connect(hub, {}, transports=["websocket"])
    assert missing_ws == missing

    forged = jwt.encode(claims(), b"another secret" * 4, algorithm="HS256")
    bad = await refused_connect(hub, {"token": forged})
    assert bad["data"] == {"code": "invalid_token"} and bad["message"], bad
    now = int(time.time())
    expired = jwt.encode(claims(iat=now - 900, exp=now - 60), hub_secret(hub), algorithm="HS256")
    old = await refused_connect(hub, {"token": expired}, transports=["websocket"])
    assert old["data"] == {"code": "expired_token"}, old

    # A token signed with the hub's own secret is accepted (the refusals are not vacuous).
    good = jwt.encode(claims(), hub_secret(hub), algorithm="HS256")
    async with connected(hub, good) as sio:
        assert await sio.call("subscribe:device", "anything") == {"ok": True}  # an admin
    metrics = await metrics_text(hub)
    for reason, n in (("missing_token", 2), ("invalid_token", 1), ("expired_token", 1)):
        line = f'fieldlink_socketio_connects_refused_total{{reason="{reason}"}} {float(n)}'
        assert line in metrics, line
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        assert (await http.get("/health")).status_code == 200


async def test_a_tenant_user_cannot_subscribe_to_or_see_another_tenants_device(hub) -> None:  # type: ignore[no-untyped-def]
    t = await two_tenants(hub)  # alice@acme (a-dev), bob@bolt (b-dev); each device sent seq 1
    async with connected(hub, t["alice"]) as alice, connected(hub, t["alice"]) as alice_room, \
            connected(hub, t["bob"]) as bob:
        for device in ("b-dev", "no-such-device"):
            refused = await alice.call("subscribe:device", device)
            assert refused == {"error": "not allowed to subscribe to this channel",
                               "code": "forbidden", "event": "subscribe:device"}, device
        refused = await alice.call("subscribe", {"deviceId": "b-dev"})
        assert (refused["code"], refused["event"]) == ("forbidden", "subscribe")
        await alice.emit("subscribe:device", "b-dev")  # no ack callback: an error event
        error = await alice.inbox.wait_for("fieldlink:error")
        assert (error["code"], error["event"]) == ("forbidden", "subscribe:device")
        command = await alice.call("send:command", {"deviceId": "b-dev", "action": "idle"})
        assert command["code"] == "unknown_device", command

        assert await alice.call("subscribe:device", "a-dev") == {"ok": True}
        assert await bob.call("subscribe:device", "b-dev") == {"ok": True}
        await alice.inbox.wait_for("device:data", of_seq("a-dev", 1))  # the snapshot
        await bob.inbox.wait_for("device:data", of_seq("b-dev", 1))

        async with httpx.AsyncClient(base_url=hub.http_url) as http:
            for device in ("b-dev", "a-dev"):  # bolt's first: a leak would arrive before acme's
                sent = await http.post("/api/telemetry", json={"seq": 2, "v": 2.0},
                                       auth=(device, t[device]))
                assert sent.status_code == 200, sent.text
        await bob.inbox.wait_for("device:data", of_seq("b-dev", 2))
        await alice.inbox.wait_for("device:data", of_seq("a-dev", 2))
        await alice_room.inbox.wait_for("device:telemetry", of_seq("a-dev", 2))

    for sio in (alice, alice_room):
        for _, payload in sio.inbox.events:
            assert "b-dev" not in json.dumps(payload), payload
    assert seqs(alice.inbox.of("device:data"), "a-dev") == [1, 2]
    assert seqs(bob.inbox.of("device:data"), "b-dev") == [1, 2]
    assert hub.runtime.hub.stats.forbidden >= 4


async def test_a_foreign_origin_is_refused_and_an_allowed_pattern_works(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(allowed_origins=("https://*.vercel.app",)) as hub:
        handshake = "/socket.io/?EIO=4&transport=polling"
        allowed = "https://fieldlink-demo.vercel.app"
        async with httpx.AsyncClient(base_url=hub.http_url) as http:
            evil = await http.get(handshake, headers={"Origin": "http://evil.example"})
            lookalike = await http.get(handshake,
                                       headers={"Origin": "https://vercel.app.evil.example"})
            pattern = await http.get(handshake, headers={"Origin": allowed})
            own = await http.get(handshake, headers={"Origin": hub.http_url})
        assert evil.status_code == 403
        assert evil.json() == {"code": 4, "message": evil.json()["message"]}
        assert lookalike.status_code == 403
        for answer in (pattern, own):
            assert answer.status_code == 200, answer.text
            assert json.loads(answer.text[1:])["sid"] and answer.text.startswith("0")
        assert pattern.headers["access-control-allow-origin"] == allowed

        ws_url = f"ws://127.0.0.1:{hub.http_port}/socket.io/?EIO=4&transport=websocket"
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert caught.value.response.status_code == 403

        # Real clients: the allowed pattern connects on both transports, the foreign one not.
        for transports in (None, ["websocket"]):
            async with sio_client() as sio:
                await sio.connect(hub.http_url, auth={"token": hub.token},
                                  transports=transports, headers={"Origin": allowed})
                await sio.inbox.wait_for("connected")
            async with sio_client() as sio:
                with pytest.raises(socketio.exceptions.ConnectionError):
                    await sio.connect(hub.http_url, auth={"token": hub.token},
                                      transports=transports,
                                      headers={"Origin": "http://evil.example"})


# ---- 5: malformed input keeps the hub serving others ---------------------------------------


async def test_malformed_input_closes_only_its_own_session(hub) -> None:  # type: ignore[no-untyped-def]
    device = "sio-healthy"
    base = "/socket.io/?EIO=4&transport=polling"
    ws_base = f"ws://127.0.0.1:{hub.http_port}/socket.io/?EIO=4&transport=websocket"
    async with paho_client(hub.mqtt_port) as mqttc, connected(hub) as healthy, \
            httpx.AsyncClient(base_url=hub.http_url, timeout=10) as http:
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": 0, "v": 0})
        await healthy.inbox.wait_for("device:telemetry", of_seq(device, 0))
        assert await healthy.call("subscribe:device", device) == {"ok": True}

        stop = asyncio.Event()
        published: list[int] = []

        async def stream() -> None:  # paced: 20 records/s while the bad input goes in
            seq = 0
            while not stop.is_set():
                seq += 1
                await publish(mqttc, f"edge/{device}/telemetry", {"seq": seq, "v": seq})
                published.append(seq)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

        streaming = asyncio.create_task(stream())
        try:
            async def open_polling() -> str:
                opened = await http.get(base)
                assert opened.status_code == 200 and opened.text.startswith("0"), opened.text
                return str(json.loads(opened.text[1:])["sid"])

            # A bad Engine.IO packet type in a polling POST: 400, and the session is gone.
            sid = await open_polling()
            bad_type = await http.post(f"{base}&sid={sid}", content=b"9garbage")
            assert bad_type.status_code == 400
            assert bad_type.json() == {"code": 3, "message": "Bad request"}
            after = await http.get(f"{base}&sid={sid}")
            assert after.status_code == 400 and after.json()["code"] == 1

            # A truncated JSON event over a raw WebSocket: that connection is closed.
            async with connect(ws_base) as raw:
                assert str(await asyncio.wait_for(raw.recv(), 5)).startswith("0{")
                await raw.send("40" + json.dumps({"token": hub.token}))
                assert str(await asyncio.wait_for(raw.recv(), 5)).startswith("40{")
                while '"connected"' not in str(await asyncio.wait_for(raw.recv(), 5)):
                    pass  # the stream's events may come first (the tenant room)
                await raw.send('42["x"')
                with pytest.raises(ConnectionClosed):
                    while True:  # anything still queued, then the close
                        await asyncio.wait_for(raw.recv(), 5)

            # Bad EIO version, unknown transport, POST handshake, made-up sid: 400 each.
            version = await http.get("/socket.io/?EIO=3&transport=polling")
            assert version.status_code == 400
            assert version.json() == {"code": 5, "message": "Unsupported protocol version"}
            transport = await http.get("/socket.io/?EIO=4&transport=carrier-pigeon")
            assert transport.status_code == 400 and transport.json()["code"] == 0
            handshake_post = await http.post(base, content=b"40")
            assert handshake_post.status_code == 400 and handshake_post.json()["code"] == 2
            made_up = await http.get(f"{base}&sid=made-up-session-id")
            assert made_up.status_code == 400
            assert made_up.json() == {"code": 1, "message": "Session ID unknown"}

            # An oversize polling POST body: refused, the hub reads no further.
            sid = await open_polling()
            oversize = await http.post(f"{base}&sid={sid}", content=b"4" + b"x" * 1_000_500)
            assert oversize.status_code in (413, 400), oversize.status_code

            # A raw WebSocket with a sid that does not exist: accepted and closed at once.
            async with connect(f"{ws_base}&sid=made-up-session-id") as ghost:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ghost.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

            # The healthy client keeps receiving: the next records arrive, in order, once.
            mark = published[-1] if published else 0
            await healthy.inbox.wait_for("device:data", of_seq(device, mark + 3))
        finally:
            stop.set()
            await streaming
        last = published[-1]
        await healthy.inbox.wait_for("device:data", of_seq(device, last))
        health = await http.get("/health")
    assert health.status_code == 200
    assert seqs(healthy.inbox.of("device:data"), device) == list(range(last + 1))
    engine = hub.runtime.engines["/socket.io/"]
    assert engine.stats.malformed >= 1  # the bad packet type
    assert engine.app.stats.malformed >= 1  # the truncated JSON event
    assert healthy.transport == "websocket"


# ---- the upgrade as socket.io-client does it: CONNECT on polling, then the WebSocket --------
# python-socketio upgrades before it sends CONNECT; socket.io-client (browsers) joins the
# namespace on polling first and upgrades afterwards, while the session already receives
# events. These steps are that order, spoken with httpx and websockets.

POLLING = "/socket.io/?EIO=4&transport=polling"


async def polling_session(http: httpx.AsyncClient, auth: dict[str, Any]) -> str:
    """A polling session that joined ``/`` with ``auth`` and got ``connected``; its sid."""
    opened = await http.get(POLLING)
    assert opened.status_code == 200, opened.text
    sid = str(json.loads(opened.text[1:])["sid"])
    posted = await http.post(f"{POLLING}&sid={sid}", content=("40" + json.dumps(auth)).encode())
    assert posted.status_code == 200, posted.text
    received = ""
    while '"connected"' not in received:
        poll = await http.get(f"{POLLING}&sid={sid}")
        assert poll.status_code == 200, poll.text
        received += poll.text
    return sid


def masked_text_frame(text: bytes) -> bytes:
    """A client WebSocket text frame (short, masked), to write in one synchronous step."""
    key = bytes((0x1F, 0x2E, 0x3D, 0x4C))
    assert len(text) < 126
    return bytes((0x81, 0x80 | len(text))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(text))


async def next_event(ws: Any, predicate: Predicate, within: float = 5.0) -> list[Any]:
    """The first Socket.IO EVENT ``[name, payload]`` on a raw Engine.IO WebSocket matching."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
        except ConnectionClosed as exc:
            raise AssertionError(f"the upgraded WebSocket was closed: {exc!r}") from None
        except TimeoutError:
            raise AssertionError(f"no matching event within {within} s") from None
        if isinstance(message, str) and message.startswith("42"):
            event = json.loads(message[2:])
            if predicate(event):
                return list(event)


async def test_upgrade_with_an_event_in_flight_keeps_the_websocket_valid(hub) -> None:  # type: ignore[no-untyped-def]
    """A record is ingested in the same loop turn in which the client's upgrade packet (``5``)
    is read (what a busy hub does when MQTT and the WebSocket are read together). The client
    must get the record as a WebSocket message on the upgraded session."""
    device = "sio-race"
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=10) as http, \
            paho_client(hub.mqtt_port) as mqttc:
        sid = await polling_session(http, {"token": hub.token})  # platform: the tenant room
        url = f"ws://127.0.0.1:{hub.http_port}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        async with connect(url) as ws:
            await ws.send("2probe")
            assert await asyncio.wait_for(ws.recv(), 5) == "3probe"
            # The record is routed first in the next loop turn, the "5" is read in the same
            # turn: the same order as an MQTT read and a WebSocket read that arrive together.
            route = hub.runtime.listener._route
            asyncio.get_running_loop().call_soon(
                route, f"edge/{device}/telemetry", json.dumps({"seq": 1, "v": 1}).encode())
            ws.transport.write(masked_text_frame(b"5"))
            first = await next_event(ws, lambda e: e[0] == "device:telemetry")
            await publish(mqttc, f"edge/{device}/telemetry", {"seq": 2, "v": 2})
            second = await next_event(ws, lambda e: e[0] == "device:telemetry")
    assert (first[1]["deviceId"], first[1]["data"]["seq"]) == (device, 1)
    assert (second[1]["deviceId"], second[1]["data"]["seq"]) == (device, 2)


async def test_upgrade_keeps_a_throttled_value_that_was_held_back(hub) -> None:  # type: ignore[no-untyped-def]
    """CONNECT auth throttleMs 2000 on polling; a record arrives and is held for the interval;
    the session upgrades meanwhile. The held record is the device's last value: it must still
    arrive (docs/socketio.md: "the last value it sees is the device's last value")."""
    device = "sio-held"
    async with httpx.AsyncClient(base_url=hub.http_url, timeout=10) as http, \
            paho_client(hub.mqtt_port) as mqttc, connected(hub) as control:
        sid = await polling_session(http, {"token": hub.token, "throttleMs": 2000})
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": 1, "v": 1})
        await control.inbox.wait_for("device:telemetry", of_seq(device, 1))  # the hub has it
        url = f"ws://127.0.0.1:{hub.http_port}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        async with connect(url) as ws:
            await ws.send("2probe")
            assert await asyncio.wait_for(ws.recv(), 5) == "3probe"
            await ws.send("5")
            held = await next_event(ws, lambda e: e[0] == "device:telemetry", within=8)
    assert (held[1]["deviceId"], held[1]["data"]["seq"]) == (device, 1)


# ---- 6: display throttle ---------------------------------------------------------------------


async def paced_stream(mqttc: mqtt.Client, device: str, rate: float, duration_s: float) -> float:
    """Publish ``seq`` 1..rate*duration at QoS 0, paced; returns the seconds it took."""
    n = int(rate * duration_s)
    loop = asyncio.get_running_loop()
    started = next_at = loop.time()
    for seq in range(1, n + 1):
        mqttc.publish(f"edge/{device}/telemetry", json.dumps({"seq": seq, "v": seq}), qos=0)
        next_at += 1 / rate
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the publisher, not synchronization
    return loop.time() - started


async def test_display_throttle_limits_updates_and_keeps_the_last_value(hub) -> None:  # type: ignore[no-untyped-def]
    device, rate, duration_s = "sio-fast", 50, 2.0
    total = int(rate * duration_s)
    async with AsyncExitStack() as stack:
        mqttc = await stack.enter_async_context(paho_client(hub.mqtt_port))
        control = await stack.enter_async_context(connected(hub))  # platform, unthrottled
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": 0, "v": 0})
        await control.inbox.wait_for("device:telemetry", of_seq(device, 0))
        # CONNECT auth throttleMs: for subscribe:device (gas), and for the tenant room (platform)
        gas = await stack.enter_async_context(connected(hub, throttleMs=200))
        assert await gas.call("subscribe:device", device) == {"ok": True}
        await gas.inbox.wait_for("device:data", of_seq(device, 0))  # the snapshot
        room = await stack.enter_async_context(connected(hub, throttleMs=200))

        loop = asyncio.get_running_loop()
        started = loop.time()
        took = await paced_stream(mqttc, device, rate, duration_s)
        last_gas = await gas.inbox.wait_for("device:data", of_seq(device, total))
        gas_window_s = loop.time() - started
        last_room = await room.inbox.wait_for("device:telemetry", of_seq(device, total))
        room_window_s = loop.time() - started
        await control.inbox.wait_for("device:telemetry", of_seq(device, total))

    for name, client, event, window_s, last in (
        ("gas", gas, "device:data", gas_window_s, last_gas),
        ("platform", room, "device:telemetry", room_window_s, last_room),
    ):
        received = [s for s in seqs(client.inbox.of(event), device) if s > 0]
        print(f"{name} client, throttleMs 200: {len(received)} of {total} in {window_s:.2f} s "
              f"(published in {took:.2f} s): {received}")
        assert last["data"]["v"] == total, name
        assert received[-1] == total and received == sorted(set(received)), name
        assert 3 <= len(received) <= window_s * 5 + 2, name
    # The control: every record reaches the unthrottled client, each once.
    assert seqs(control.inbox.of("device:telemetry"), device) == list(range(total + 1))
    assert hub.runtime.hub.stats.throttled >= total


async def test_platform_subscribe_with_throttle_ms_limits_updates(hub) -> None:  # type: ignore[no-untyped-def]
    """docs/socketio.md: ``subscribe {deviceId, throttleMs}`` on the platform vocabulary gets
    the device's telemetry at most once per interval, the last value last."""
    device, rate, duration_s = "sio-fast-p", 50, 2.0
    total = int(rate * duration_s)
    async with AsyncExitStack() as stack:
        mqttc = await stack.enter_async_context(paho_client(hub.mqtt_port))
        control = await stack.enter_async_context(connected(hub))  # platform, unthrottled
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": 0, "v": 0})
        await control.inbox.wait_for("device:telemetry", of_seq(device, 0))
        platform = await stack.enter_async_context(connected(hub))
        answer = await platform.call("subscribe", {"deviceId": device, "throttleMs": 200})
        assert answer == {"ok": True}

        loop = asyncio.get_running_loop()
        started = loop.time()
        await paced_stream(mqttc, device, rate, duration_s)
        last = await platform.inbox.wait_for("device:telemetry", of_seq(device, total))
        window_s = loop.time() - started
        await control.inbox.wait_for("device:telemetry", of_seq(device, total))

    received = [s for s in seqs(platform.inbox.of("device:telemetry"), device) if s > 0]
    print(f"platform throttled client: {len(received)} of {total} in {window_s:.2f} s")
    assert last["data"]["v"] == total
    assert seqs(control.inbox.of("device:telemetry"), device) == list(range(total + 1))
    assert received[-1] == total and received == sorted(set(received))
    assert 3 <= len(received) <= window_s * 5 + 2, (
        f"{len(received)} telemetry events in {window_s:.2f} s under throttleMs 200")


# ---- 7: two instances ------------------------------------------------------------------------


async def test_a_client_on_one_instance_gets_records_ingested_by_the_other(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    device, n = "sio-shared", 40
    common = dict(mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                  mqtt_shared_group="hubs")
    async with make_hub(**common, data_dir=tmp_path / "one") as one, \
            make_hub(**common, data_dir=tmp_path / "two") as two, \
            paho_client(mosquitto.port) as mqttc, connected(two) as sio:
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": 0, "v": 0})
        await sio.inbox.wait_for("device:telemetry", of_seq(device, 0))  # via the tenant room
        assert await sio.call("subscribe:device", device) == {"ok": True}
        await sio.inbox.wait_for("device:data", of_seq(device, 0))  # the snapshot
        for seq in range(1, n + 1):
            await publish(mqttc, f"edge/{device}/telemetry", {"seq": seq, "v": seq})
        await sio.inbox.wait_for("device:data", of_seq(device, n), within=15)
        # A sentinel through the same path: any late duplicate of 1..n came before it.
        await publish(mqttc, f"edge/{device}/telemetry", {"seq": n + 1, "v": n + 1})
        await sio.inbox.wait_for("device:data", of_seq(device, n + 1), within=15)
        taken = (one.runtime.ingestor.counters.received, two.runtime.ingestor.counters.received)
        # A polling request that a load balancer sends to the wrong instance: the protocol's
        # "Session ID unknown", and both instances keep serving.
        async with httpx.AsyncClient(timeout=5) as http:
            opened = await http.get(f"{one.http_url}/socket.io/?EIO=4&transport=polling")
            sid = json.loads(opened.text[1:])["sid"]
            elsewhere = await http.get(f"{two.http_url}/socket.io/?EIO=4&transport=polling&sid={sid}")
            assert elsewhere.status_code == 400
            assert elsewhere.json() == {"code": 1, "message": "Session ID unknown"}
            home = await http.post(f"{one.http_url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                   content=b"1")  # close it cleanly where it lives
            assert home.status_code == 200
            for hub in (one, two):
                assert (await http.get(f"{hub.http_url}/health")).status_code == 200

    print(f"records ingested by instance one/two: {taken}")
    assert sum(taken) == n + 2
    assert taken[0] > 0 and taken[1] > 0, f"the shared subscription split the records: {taken}"
    got = seqs(sio.inbox.of("device:data"), device)
    assert sorted(got) == list(range(n + 2)) and len(got) == len(set(got)), got
