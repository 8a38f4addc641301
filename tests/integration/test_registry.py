"""The device registry over REST (issue 11), watched by native WebSocket clients: create, change
and delete with exactly one ``device`` event per change carrying exactly what changed (none for
a change that changes nothing), history kept or purged on delete, open commands failed, and
every refusal (bad input, duplicates, unknown devices, viewers, other tenants) with its
answer."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_commands import fleet
from tests.integration.test_security import bearer, two_tenants
from tests.support.clients import WsClient, ws_client


def is_device(message: dict[str, Any]) -> bool:
    return message.get("type") == "device"


async def next_device_event(ws: WsClient, within: float = 5.0) -> dict[str, Any]:
    """The next ``device`` event this client receives, whatever device or channel it is about
    (other event types in between are skipped): a stray event shows up as the wrong one."""
    return await ws.recv_until(is_device, timeout=within)


async def device_events(ws: WsClient, n: int, within: float = 5.0) -> list[dict[str, Any]]:
    return [await next_device_event(ws, within) for _ in range(n)]


def changes(**fields: tuple[Any, Any]) -> dict[str, dict[str, Any]]:
    return {k: {"old": old, "new": new} for k, (old, new) in fields.items()}


async def subscribed(ws: WsClient, *names: str) -> None:
    for channel in names:
        answer = await ws.subscribe(channel)
        assert answer["type"] == "subscribed", (channel, answer)


# ---- create and change ------------------------------------------------------------------------


async def test_create_and_patch_publish_exactly_what_changed(hub) -> None:  # type: ignore[no-untyped-def]
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        watcher = await stack.enter_async_context(
            ws_client(hub.ws_url, additional_headers=hub.auth))
        pumps = await stack.enter_async_context(ws_client(hub.ws_url, additional_headers=hub.auth))
        await subscribed(watcher, "all")
        await subscribed(pumps, "kind:pump", "device:reg-pump")

        # Create an edge device (the default kind) and a pump.
        made = await http.post("/api/devices", json={
            "id": "reg-edge", "name": "Edge One",
            "attributes": {"site": "north", "floor": 2, "owner": "ops"}})
        assert made.status_code == 201, made.text
        edge_meta = {"name": "Edge One", "site": "north", "floor": 2, "owner": "ops"}
        body = made.json()
        assert (body["device_id"], body["kind"], body["tenant"], body["meta"]) == (
            "reg-edge", "edge", "default", edge_meta)
        created = await next_device_event(watcher)
        assert created["channel"] == "all"
        assert created["data"] == {"device_id": "reg-edge", "action": "created", "kind": "edge",
                                   "meta": edge_meta, "tenant": "default"}

        made = await http.post("/api/devices", json={"id": "reg-pump", "kind": "pump",
                                                     "attributes": {"rate_lpm": 40}})
        assert made.status_code == 201, made.text
        assert (made.json()["kind"], made.json()["meta"]) == ("pump", {"rate_lpm": 40})
        pump_created = {"device_id": "reg-pump", "action": "created", "kind": "pump",
                        "meta": {"rate_lpm": 40}, "tenant": "default"}
        assert (await next_device_event(watcher))["data"] == pump_created
        # The pump watcher's first device events are the pump's, once per channel it holds:
        # the edge device's creation never reached it.
        both = await device_events(pumps, 2)
        assert sorted(e["channel"] for e in both) == ["device:reg-pump", "kind:pump"]
        assert all(e["data"] == pump_created for e in both)

        # Two attributes and the name: one event with exactly those three, old -> new.
        patched = await http.patch("/api/devices/reg-edge", json={
            "name": "Edge 1", "attributes": {"site": "south", "floor": 3}})
        assert patched.status_code == 200, patched.text
        expected = changes(name=("Edge One", "Edge 1"), site=("north", "south"), floor=(2, 3))
        edge_meta = {"name": "Edge 1", "site": "south", "floor": 3, "owner": "ops"}
        assert patched.json()["changes"] == expected
        assert patched.json()["device"]["meta"] == edge_meta
        updated = await next_device_event(watcher)
        assert updated["data"] == {"device_id": "reg-edge", "action": "updated", "kind": "edge",
                                   "meta": edge_meta, "tenant": "default", "changes": expected}

        # Changes that change nothing: the same values, removing an attribute it does not
        # have, the same kind, an empty body. Each answers {} and publishes nothing ...
        for same in ({"name": "Edge 1", "attributes": {"site": "south", "floor": 3}},
                     {"attributes": {"ghost": None}}, {"kind": "edge"}, {}):
            unchanged = await http.patch("/api/devices/reg-edge", json=same)
            assert unchanged.status_code == 200, (same, unchanged.text)
            assert unchanged.json()["changes"] == {}, same
            assert unchanged.json()["device"]["meta"] == edge_meta, same
        # ... so the next event is the next real change: null removes an attribute.
        removed = await http.patch("/api/devices/reg-edge", json={"attributes": {"owner": None}})
        assert removed.json()["changes"] == changes(owner=("ops", None))
        edge_meta = {"name": "Edge 1", "site": "south", "floor": 3}
        event = await next_device_event(watcher)
        assert (event["data"]["action"], event["data"]["changes"], event["data"]["meta"]) == (
            "updated", changes(owner=("ops", None)), edge_meta)
        assert removed.json()["device"]["meta"] == edge_meta

        # A kind change is a change like any other; the device now shows on kind:pump.
        moved = await http.patch("/api/devices/reg-edge", json={"kind": "pump"})
        assert moved.json()["changes"] == changes(kind=("edge", "pump"))
        assert moved.json()["device"]["kind"] == "pump"
        event = await next_device_event(watcher)
        assert event["data"] == {"device_id": "reg-edge", "action": "updated", "kind": "pump",
                                 "meta": edge_meta, "tenant": "default",
                                 "changes": changes(kind=("edge", "pump"))}
        # The pump watcher's next device event is this one, on kind:pump: no update of the
        # edge device reached it while it was an edge device.
        event = await next_device_event(pumps)
        assert (event["channel"], event["data"]["device_id"], event["data"]["changes"]) == (
            "kind:pump", "reg-edge", changes(kind=("edge", "pump")))

        # The pump itself, changed: once per channel the pump watcher holds, once on all.
        rate = await http.patch("/api/devices/reg-pump", json={"attributes": {"rate_lpm": 55}})
        assert rate.json()["changes"] == changes(rate_lpm=(40, 55))
        both = await device_events(pumps, 2)
        assert sorted(e["channel"] for e in both) == ["device:reg-pump", "kind:pump"]
        assert all(e["data"]["changes"] == changes(rate_lpm=(40, 55)) for e in both)
        event = await next_device_event(watcher)
        assert (event["data"]["device_id"], event["data"]["changes"]) == (
            "reg-pump", changes(rate_lpm=(40, 55)))

        listed = (await http.get("/api/devices", params={"kind": "pump"})).json()["devices"]
        assert [(d["device_id"], d["kind"]) for d in listed] == [
            ("reg-edge", "pump"), ("reg-pump", "pump")]
        assert (await http.get("/api/devices", params={"kind": "edge"})).json() == {"devices": []}
        detail = (await http.get("/api/devices/reg-edge")).json()
        assert (detail["kind"], detail["meta"]) == ("pump", edge_meta)

        # Exactly one event per change reached `all`: the marker is the next one.
        marker = await http.post("/api/devices", json={"id": "reg-marker"})
        assert marker.status_code == 201
        event = await next_device_event(watcher)
        assert (event["data"]["device_id"], event["data"]["action"]) == ("reg-marker", "created")


# ---- delete -------------------------------------------------------------------------------------


async def test_delete_keeps_history_unless_purged_and_fails_open_commands(hub) -> None:  # type: ignore[no-untyped-def]
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        watcher = await stack.enter_async_context(
            ws_client(hub.ws_url, additional_headers=hub.auth))
        (silent,) = await stack.enter_async_context(fleet(1, hub, command_behavior="ignore"))
        async with fleet(1, hub, first=2) as (away,):
            pass  # connected, registered, stopped: it is offline now

        for device_id, kind in (("keep-1", "pump"), ("purge-1", "pump"), ("plain-1", "edge")):
            made = await http.post("/api/devices", json={"id": device_id, "kind": kind})
            assert made.status_code == 201, made.text
            sent = await http.post("/api/telemetry", json=[
                {"device_id": device_id, "seq": seq, "v": seq * 1.5} for seq in (1, 2, 3)])
            assert sent.status_code == 200, sent.text
        listed = (await http.get("/api/devices", params={"kind": "pump"})).json()["devices"]
        assert [d["device_id"] for d in listed] == ["keep-1", "purge-1"]

        # Two open commands: one sent to a device that never answers, one queued for an
        # offline device.
        sent = await http.post(f"/api/devices/{silent.id}/commands",
                               json={"id": "open-sent", "action": "idle", "timeout_ms": 60_000})
        assert sent.json()["status"] == "sent", sent.text
        queued = await http.post(f"/api/devices/{away.id}/commands", json={
            "id": "open-queued", "action": "idle", "queue": True, "queue_ms": 60_000})
        assert (queued.status_code, queued.json()["status"]) == (202, "pending"), queued.text
        await subscribed(watcher, "all")

        for device_id, command_id in ((silent.id, "open-sent"), (away.id, "open-queued")):
            deleted = await http.delete(f"/api/devices/{device_id}")
            assert deleted.json() == {"device_id": device_id, "deleted": True,
                                      "purged_records": 0}
            event = await next_device_event(watcher)
            assert (event["data"]["device_id"], event["data"]["action"]) == (device_id, "deleted")
            failed = await watcher.recv_until(lambda m, c=command_id: m.get("type") == "command"
                                              and m.get("id") == c
                                              and m.get("status") not in ("pending", "sent"),
                                              timeout=10)
            assert (failed["status"], failed["reason"]) == ("failed", "device_deleted"), failed
            assert failed["error"] == "the device was deleted"
            assert (await http.get(f"/api/devices/{device_id}")).status_code == 404
        # The command log outlives the device: once the devices are back (they send again and
        # register themselves), it shows each command failed once, for the deletion.
        back = await http.post("/api/telemetry", json=[
            {"device_id": silent.id, "v": 1}, {"device_id": away.id, "v": 1}])
        assert back.status_code == 200, back.text
        for command_id in ("open-sent", "open-queued"):
            logged = (await http.get(f"/api/commands/{command_id}")).json()
            assert (logged["status"], logged["reason"]) == ("failed", "device_deleted"), logged
            assert "failed" in logged["stages"]
            assert set(logged["stages"]) & {"acked", "timeout", "rejected", "expired"} == set()
        for _ in range(2):  # their re-registrations
            assert (await next_device_event(watcher))["data"]["action"] == "created"

        # History kept by default, purged on request.
        kept = await http.delete("/api/devices/keep-1")
        assert kept.json() == {"device_id": "keep-1", "deleted": True, "purged_records": 0}
        event = await next_device_event(watcher)
        assert event["data"] == {"device_id": "keep-1", "action": "deleted", "kind": "pump",
                                 "meta": {}, "tenant": "default"}
        purged = await http.delete("/api/devices/purge-1", params={"purge": "true"})
        assert purged.json() == {"device_id": "purge-1", "deleted": True, "purged_records": 3}
        event = await next_device_event(watcher)
        assert (event["data"]["device_id"], event["data"]["action"]) == ("purge-1", "deleted")
        for gone in ("keep-1", "purge-1"):
            assert (await http.get(f"/api/devices/{gone}")).status_code == 404
            again = await http.delete(f"/api/devices/{gone}")
            assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
        listed = (await http.get("/api/devices", params={"kind": "pump"})).json()["devices"]
        assert listed == []

        # Both devices send again and register themselves again: the kept one's history has
        # its old records and the new one, the purged one's only the new one.
        resent = await http.post("/api/telemetry", json=[
            {"device_id": "keep-1", "seq": 4, "v": 6.0},
            {"device_id": "purge-1", "seq": 4, "v": 9.0}])
        assert resent.status_code == 200, resent.text
        assert (resent.json()["stored"], resent.json()["duplicates"]) == (2, 0), resent.text
        keep_points = (await http.get("/api/devices/keep-1/telemetry")).json()["points"]
        assert [(p["seq"], p["v"]) for p in keep_points] == [(1, 1.5), (2, 3.0), (3, 4.5), (4, 6.0)]
        purge_points = (await http.get("/api/devices/purge-1/telemetry")).json()["points"]
        assert [(p["seq"], p["v"]) for p in purge_points] == [(4, 9.0)]
        plain_points = (await http.get("/api/devices/plain-1/telemetry")).json()["points"]
        assert [p["seq"] for p in plain_points] == [1, 2, 3]


async def test_history_and_commands_of_a_deleted_device_stay_readable(hub) -> None:  # type: ignore[no-untyped-def]
    """The spec: DELETE keeps history by default, "GET /api/devices/{id}/telemetry still has
    the records published before", and the open command "ends as failed with reason
    device_deleted (GET /api/commands/{id})": right after the delete, without the device
    sending again."""
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http, \
            ws_client(hub.ws_url, additional_headers=hub.auth) as watcher:
        assert (await http.post("/api/devices", json={"id": "hist-1"})).status_code == 201
        sent = await http.post("/api/telemetry", json=[
            {"device_id": "hist-1", "seq": seq, "v": seq} for seq in (1, 2)])
        assert sent.status_code == 200
        # A registered device that never connected: the command goes out and stays open.
        command = await http.post("/api/devices/hist-1/commands",
                                  json={"id": "hist-cmd", "action": "idle", "timeout_ms": 60_000})
        assert command.json()["status"] == "sent", command.text
        await subscribed(watcher, "device:hist-1")
        assert (await http.delete("/api/devices/hist-1")).json()["purged_records"] == 0
        failed = await watcher.recv_until(lambda m: m.get("type") == "command"
                                          and m.get("status") == "failed", timeout=10)
        assert failed["reason"] == "device_deleted"
        history = await http.get("/api/devices/hist-1/telemetry")
        logged = await http.get("/api/commands/hist-cmd")
    assert (history.status_code, logged.status_code) == (200, 200), (history.text, logged.text)
    assert [p["seq"] for p in history.json()["points"]] == [1, 2]
    assert (logged.json()["status"], logged.json()["reason"]) == ("failed", "device_deleted")


# ---- refusals -----------------------------------------------------------------------------------


async def test_bad_input_is_refused_with_its_path(hub) -> None:  # type: ignore[no-untyped-def]
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, "invalid_device_id", "$.id"),
        ({"id": ""}, "invalid_device_id", "$.id"),
        ({"id": "has space"}, "invalid_device_id", "$.id"),
        ({"id": "x" * 129}, "invalid_device_id", "$.id"),
        ({"id": 42}, "invalid_device_id", "$.id"),
        ({"id": "ok-1", "kind": "no/slash"}, "invalid_kind", "$.kind"),
        ({"id": "ok-1", "kind": ""}, "invalid_kind", "$.kind"),
        ({"id": "ok-1", "kind": 7}, "invalid_kind", "$.kind"),
        ({"id": "ok-1", "attributes": [1, 2]}, "invalid_attributes", "$.attributes"),
        ({"id": "ok-1", "attributes": "site=north"}, "invalid_attributes", "$.attributes"),
        ({"id": "ok-1", "attributes": None}, "invalid_attributes", "$.attributes"),
        ({"id": "ok-1", "attributes": {"note": "x" * 2000}}, "invalid_value", "$.attributes.note"),
        ({"id": "ok-1", "name": 5}, "invalid_name", "$.name"),
        ({"id": "ok-1", "name": "n" * 201}, "invalid_name", "$.name"),
    ]
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http, \
            ws_client(hub.ws_url, additional_headers=hub.auth) as watcher:
        await subscribed(watcher, "all")
        for body, code, path in cases:
            answer = await http.post("/api/devices", json=body)
            assert answer.status_code == 422, (body, answer.text)
            error = answer.json()["error"]
            assert (error["code"], error["path"]) == (code, path), (body, error)
        not_object = await http.post("/api/devices", json=["id", "ok-1"])
        assert not_object.status_code == 422
        assert not_object.json()["error"]["code"] == "invalid_body"
        drone = await http.post("/api/v1/drones/register", json={"deviceSerialNumber": "no way"})
        assert drone.status_code == 422 and drone.json()["error"]["path"] == "$.deviceSerialNumber"
        assert (await http.get("/api/devices/ok-1")).status_code == 404

        assert (await http.post("/api/devices", json={"id": "dup-1"})).status_code == 201
        dup = await http.post("/api/devices", json={"id": "dup-1", "kind": "pump"})
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "device_exists"
        # A device that registered itself by sending is taken too.
        assert (await http.post("/api/telemetry", json={"device_id": "self-1", "v": 1})).is_success
        taken = await http.post("/api/devices", json={"id": "self-1"})
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "device_exists"
        assert (await http.get("/api/devices/dup-1")).json()["kind"] == "edge"

        for bad, code, path in (({"attributes": [1]}, "invalid_attributes", "$.attributes"),
                                ({"kind": "a b"}, "invalid_kind", "$.kind"),
                                ({"name": ["x"]}, "invalid_name", "$.name")):
            answer = await http.patch("/api/devices/dup-1", json=bad)
            assert answer.status_code == 422, (bad, answer.text)
            assert (answer.json()["error"]["code"], answer.json()["error"]["path"]) == (code, path)
        for answer in (await http.patch("/api/devices/ghost-1", json={"name": "x"}),
                       await http.delete("/api/devices/ghost-1")):
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"

        # None of the refusals published anything: the device events `all` got are the two
        # creations, then the marker.
        assert (await http.post("/api/devices", json={"id": "bad-marker"})).status_code == 201
        seen = await device_events(watcher, 3)
        assert [(e["data"]["device_id"], e["data"]["action"]) for e in seen] == [
            ("dup-1", "created"), ("self-1", "created"), ("bad-marker", "created")]


async def test_viewers_and_other_tenants_cannot_change_the_registry(hub) -> None:  # type: ignore[no-untyped-def]
    t = await two_tenants(hub)  # acme: alice (operator), carol (viewer), a-dev; bolt: bob, b-dev
    async with AsyncExitStack() as stack:
        alice = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=bearer(t["alice"])))
        carol = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=bearer(t["carol"])))
        bob = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=bearer(t["bob"])))
        alice_ws = await stack.enter_async_context(
            ws_client(hub.ws_url, additional_headers=bearer(t["alice"])))
        for channel in ("kind:pump", "kind:edge", "all", "tenant:bolt", "device:b-dev"):
            answer = await alice_ws.subscribe(channel)
            assert (answer["type"], answer.get("code")) == ("error", "forbidden"), (channel, answer)
        await subscribed(alice_ws, "tenant:acme")

        # The viewer: 403 for every write, and nothing changed.
        refused = [await carol.post("/api/devices", json={"id": "carol-1"}),
                   await carol.patch("/api/devices/a-dev", json={"name": "mine"}),
                   await carol.delete("/api/devices/a-dev")]
        for answer in refused:
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "forbidden"
        viewed = await carol.get("/api/devices/a-dev")
        assert viewed.status_code == 200 and "name" not in viewed.json()["meta"]
        assert (await carol.get("/api/devices/carol-1")).status_code == 404

        # Another tenant's device is unknown to alice; a device she creates is acme's.
        for answer in (await alice.patch("/api/devices/b-dev", json={"name": "mine"}),
                       await alice.delete("/api/devices/b-dev"),
                       await alice.get("/api/devices/b-dev")):
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
        foreign = await alice.post("/api/devices", json={"id": "alice-x", "tenant": "bolt"})
        assert foreign.status_code == 403, foreign.text

        # bob changes bolt's registry meanwhile: alice's socket gets none of it.
        made = await bob.post("/api/devices", json={"id": "bolt-pump", "kind": "pump"})
        assert (made.status_code, made.json()["tenant"]) == (201, "bolt")
        assert (await bob.patch("/api/devices/b-dev", json={"name": "Bolt B"})).json()[
            "changes"] == changes(name=(None, "Bolt B"))
        assert (await bob.delete("/api/devices/bolt-pump")).status_code == 200
        assert (await bob.patch("/api/devices/a-dev", json={"name": "x"})).status_code == 404

        mine = await alice.post("/api/devices", json={"id": "acme-pump", "kind": "pump",
                                                      "name": "Acme pump"})
        assert (mine.status_code, mine.json()["tenant"]) == (201, "acme")
        renamed = await alice.patch("/api/devices/a-dev", json={"name": "Acme A"})
        assert renamed.json()["changes"] == changes(name=(None, "Acme A"))
        seen = await device_events(alice_ws, 2)
        assert [(e["channel"], e["data"]["device_id"], e["data"]["action"], e["data"]["tenant"])
                for e in seen] == [("tenant:acme", "acme-pump", "created", "acme"),
                                   ("tenant:acme", "a-dev", "updated", "acme")]
        listed = (await alice.get("/api/devices", params={"kind": "pump"})).json()["devices"]
        assert [d["device_id"] for d in listed] == ["acme-pump"]

    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        b_dev = (await admin.get("/api/devices/b-dev")).json()
        a_dev = (await admin.get("/api/devices/a-dev")).json()
    assert (b_dev["tenant"], b_dev["meta"]) == ("bolt", {"name": "Bolt B"})
    assert (a_dev["tenant"], a_dev["meta"]) == ("acme", {"name": "Acme A"})


async def test_a_quickly_deleted_device_stays_deleted_after_a_restart_on_postgresql(  # type: ignore[no-untyped-def]
    make_hub, pg_url: str, tmp_path: Path
) -> None:
    """Device rows are upserted by the PostgreSQL writer in batches; a DELETE right after a
    create must not be overtaken by that upsert (before the fix, 7 of 30 came back)."""
    ids = [f"race-{i}" for i in range(30)]
    async with make_hub(database_url=pg_url, data_dir=tmp_path / "pg-hub") as hub:
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            for device_id in ids:
                assert (await http.post("/api/devices", json={"id": device_id})).status_code == 201
                assert (await http.delete(f"/api/devices/{device_id}")).status_code == 200
    async with make_hub(database_url=pg_url, data_dir=tmp_path / "pg-hub") as hub:
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            listed = [d["device_id"] for d in (await http.get("/api/devices")).json()["devices"]]
    assert [d for d in listed if d.startswith("race-")] == []
