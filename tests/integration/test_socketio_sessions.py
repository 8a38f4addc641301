"""Socket.IO sessions as the hub counts and closes them: the per-user cap holds for connects
that arrive together, `connected` is the first event a client sees, a disabled user's
sessions close at once, unknown events and a wrong vocabulary are refused, and a client's
events are rate-limited (python-socketio clients)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import socketio

from tests.support.clients import wait_until


async def connect(url: str, token: str, **kw: Any) -> tuple[socketio.AsyncClient, list[Any]]:
    """A connected client and the list of (event, data) it receives, in order."""
    sio = socketio.AsyncClient()
    seen: list[Any] = []
    sio.on("*", lambda event, data: seen.append((event, data)))
    await sio.connect(url, auth={"token": token, **kw}, transports=["websocket"], wait_timeout=5)
    return sio, seen


async def test_the_user_cap_holds_when_connects_arrive_together(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(ws_max_per_user=2) as hub:
        clients = [socketio.AsyncClient() for _ in range(6)]
        refused: list[Any] = []
        for c in clients:
            c.on("connect_error", refused.append)

        async def one(sio: socketio.AsyncClient) -> None:
            try:
                await sio.connect(hub.http_url, auth={"token": hub.token},
                                  transports=["websocket"], wait_timeout=5)
            except socketio.exceptions.ConnectionError:
                pass  # its connect_error carries the reason

        await asyncio.gather(*(one(c) for c in clients))
        try:
            assert sum(c.connected for c in clients) == 2
            assert len(refused) == 4, refused
            assert all(r["data"]["code"] == "too_many_connections" for r in refused), refused
            assert hub.runtime.hub.count_subject("service:admin") == 2
        finally:
            for c in clients:
                if c.connected:
                    await c.disconnect()


async def test_connected_comes_first_even_when_the_client_subscribes_on_connect(hub) -> None:  # type: ignore[no-untyped-def]
    sio = socketio.AsyncClient()
    order: list[str] = []
    acked: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def on_connect() -> None:  # like the gas seed: subscribe in the connect handler
        order.append("connect")
        acked.set_result(await sio.call("subscribe:device", "nobody-yet", timeout=5))

    sio.on("connect", on_connect)
    sio.on("connected", lambda data: order.append("connected"))
    sio.on("fieldlink:error", lambda data: order.append("error"))
    await sio.connect(hub.http_url, auth={"token": hub.token}, transports=["websocket"])
    try:
        # The system administrator may subscribe to any device, even one not yet registered.
        assert await asyncio.wait_for(acked, 5) == {"ok": True}
    finally:
        await sio.disconnect()
    assert order[:2] == ["connect", "connected"], order


async def test_disabling_a_user_closes_its_socketio_sessions(hub) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        assert (await admin.post("/api/users", json={"username": "dora", "password": "dora-pass-1",
                                                     "role": "viewer"})).status_code == 201
        token = (await admin.post("/api/auth/token", json={"username": "dora",
                                                          "password": "dora-pass-1"})).json()
        sio, _ = await connect(hub.http_url, token["access_token"])
        other, _ = await connect(hub.http_url, hub.token)
        try:
            disabled = await admin.post("/api/users/dora/disable")
            assert disabled.json()["sessions_closed"] == 1
            await wait_until(lambda: not sio.connected, what="dora's session closed")
            assert other.connected
        finally:
            for c in (sio, other):
                if c.connected:
                    await c.disconnect()


async def test_unknown_events_wrong_vocabulary_and_rate_limit_are_refused(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with make_hub(ws_messages_per_s=5.0) as hub:
        sio, seen = await connect(hub.http_url, hub.token, vocabulary="gas")
        try:
            unknown = await sio.call("dance", {}, timeout=5)
            assert unknown["code"] == "unknown_event", unknown
            wrong = await sio.call("subscribe", {"deviceId": "x1"}, timeout=5)
            assert wrong["code"] == "wrong_vocabulary", wrong
            await sio.emit("subscribe", {"all": True})  # no ack callback: an error event
            await wait_until(lambda: any(e == "fieldlink:error" for e, _ in seen))
            error = next(d for e, d in seen if e == "fieldlink:error")
            assert (error["code"], error["event"]) == ("wrong_vocabulary", "subscribe")
            answers = [await sio.call("unsubscribe:device", "x1", timeout=5) for _ in range(12)]
            limited = [a for a in answers if a.get("code") == "rate_limited"]
            assert limited and all("error" in a for a in limited), answers
            assert hub.runtime.hub.stats.rate_limited == len(limited)
        finally:
            await sio.disconnect()
