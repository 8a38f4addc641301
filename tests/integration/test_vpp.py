"""The virtual power plant (issue 12) on one hub with real clients: the fleet aggregate
against what the store holds for a randomized fleet, a 40 kW discharge over ten simulated MQTT
nodes from request to completion, the re-allocation of a share whose node never answers,
proposals decided over both WebSocket protocols and by the auto policy, and bad input over
REST. Nodes report every 0.5 s and commands time out after 3 s, to keep the file short."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.integration.test_alerts import Inbox, add_users, inbox
from tests.integration.test_security import bearer
from tests.integration.test_socketio import connected
from tests.support.clients import paho_client, publish, wait_until, ws_client
from tests.support.vpp import (
    NodeSpec,
    discharge_headroom_kw,
    energy_room_kwh,
    poll_dispatch,
    reporting_fleet,
    setpoints,
)

FAST = {
    "command_timeout_s": 3.0,
    "vpp_agent_interval_s": 0.5,
    "vpp_sample_s": 0.5,
    "vpp_aggregate_hz": 4.0,
}


@asynccontextmanager
async def vpp_hub(make_hub: Any, **overrides: Any) -> AsyncIterator[Any]:
    async with make_hub(**{**FAST, **overrides}) as hub:
        yield hub


def totals(state: dict[str, Any]) -> dict[str, Any]:
    """An aggregate without its timestamp."""
    return {k: v for k, v in state.items() if k != "ts"}


# ---- the aggregate against the store ------------------------------------------------------


def expected_aggregate(devices: list[dict[str, Any]], latest: dict[str, dict[str, Any] | None],
                       now_ms: int, max_age_ms: int) -> dict[str, Any]:
    """The fleet totals summed from each device's registry entry (meta, status) and latest
    record as REST returns them."""
    capacity = sum(d["meta"]["capacity_kw"] for d in devices)
    with_soc = [d for d in devices if latest[d["device_id"]] is not None]
    energy = sum(latest[d["device_id"]]["soc"] / 100 * d["meta"]["battery_kwh"]  # type: ignore[index]
                 for d in with_soc)
    energy_capacity = sum(d["meta"]["battery_kwh"] for d in with_soc)
    fresh = sum(d["meta"]["capacity_kw"] for d in with_soc
                if now_ms - latest[d["device_id"]]["ts"] <= max_age_ms)  # type: ignore[index]
    online = [d for d in devices if d["status"] == "online"]
    return {
        "power_kw": round(sum(latest[d["device_id"]]["power_kw"]  # type: ignore[index]
                              for d in with_soc), 3),
        "capacity_total_kw": round(capacity, 3),
        "capacity_online_kw": round(sum(d["meta"]["capacity_kw"] for d in online), 3),
        "energy_kwh": round(energy, 3),
        "energy_capacity_kwh": round(energy_capacity, 3),
        "soc": round(100 * energy / energy_capacity, 2),
        "nodes_total": len(devices),
        "nodes_online": len(online),
        "coverage": round(fresh / capacity, 4),
    }


@pytest.mark.parametrize("seed", [12, 13, 14])
async def test_aggregate_equals_the_sum_of_the_latest_records(make_hub, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Eight nodes of random size and state over MQTT (two of them, at random, with readings
    older than the freshness limit, one gone offline after reporting) and one registered over
    REST that never reported: the totals of GET /api/vpp/state, of the native ``aggregate``
    event and of the Socket.IO ``aggregate`` event all equal the sums over the latest records
    REST returns, and coverage leaves out the stale and silent nodes' capacity."""
    rng = random.Random(seed)
    max_age_s = 30.0
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(vpp_hub(make_hub, vpp_max_age_s=max_age_s))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        native = await stack.enter_async_context(inbox(hub, "aggregate"))
        sio = await stack.enter_async_context(connected(hub))
        assert await sio.call("subscribe", {"channel": "aggregate"}) == {"ok": True}
        mqtt = await stack.enter_async_context(paho_client(hub.mqtt_port))

        ids = [f"agg-{i}" for i in range(1, 9)]
        stale = set(rng.sample(ids, 2))
        offline, silent = rng.choice(sorted(set(ids) - stale)), "agg-9"
        now_ms = int(time.time() * 1000)
        for seq, device_id in enumerate(ids, start=1):
            capacity = rng.choice((5.0, 10.0, 25.0, 50.0, round(rng.uniform(1, 60), 2)))
            record = {
                "seq": seq,
                "ts": now_ms - 120_000 if device_id in stale else now_ms,
                "power_kw": round(rng.uniform(-capacity, capacity), 3),
                "soc": round(rng.uniform(5.0, 100.0), 2),
                "meta": {"capacity_kw": capacity,
                         "battery_kwh": round(capacity * rng.choice((1.0, 2.0, 4.0)), 1),
                         "site": rng.choice(("north", "south"))},
            }
            await publish(mqtt, f"edge/{device_id}/telemetry", record)
        made = await http.post("/api/devices", json={
            "id": silent, "kind": "edge",
            "attributes": {"capacity_kw": 20.0, "battery_kwh": 40.0, "site": "north"}})
        assert made.status_code == 201, made.text
        await wait_until(lambda: all(hub.runtime.registry.get(d) for d in ids),
                         what="nodes registered")
        await publish(mqtt, f"edge/{offline}/status", "offline")
        await wait_until(lambda: str(hub.runtime.presence.status(offline)) == "offline",
                         what="the node offline")

        devices = [(await http.get(f"/api/devices/{d}")).json() for d in [*ids, silent]]
        latest: dict[str, dict[str, Any] | None] = {}
        for device_id in [*ids, silent]:
            answer = await http.get(f"/api/devices/{device_id}/telemetry/latest")
            latest[device_id] = answer.json()["latest"] if answer.status_code == 200 else None
        assert latest[silent] is None and all(latest[d] is not None for d in ids)
        assert {d["device_id"] for d in devices if d["status"] == "online"} == (
            set(ids) - {offline})
        state = (await http.get("/api/vpp/state")).json()
        want = expected_aggregate(devices, latest, state["total"]["ts"], int(max_age_s * 1000))
        assert totals(state["total"]) == want
        # coverage: what is left when the stale nodes and the silent one are taken out
        left_out = sum(d["meta"]["capacity_kw"] for d in devices
                       if d["device_id"] in stale | {silent})
        assert want["coverage"] == round(1 - left_out / want["capacity_total_kw"], 4)
        assert 0 < want["coverage"] < 1 and want["nodes_online"] == 7
        assert set(state["groups"]) == {d["meta"]["site"] for d in devices}
        for site in state["groups"]:
            members = [d for d in devices if d["meta"]["site"] == site]
            assert totals(state["groups"][site]) == expected_aggregate(
                members, latest, state["total"]["ts"], int(max_age_s * 1000))
        assert state["max_age_s"] == max_age_s

        # the live events carry the same numbers
        event = await native.next(lambda m: m.get("type") == "aggregate"
                                  and totals(m["data"]["total"]) == want, within=10)
        assert event["channel"] == "aggregate:default"
        assert {k: totals(v) for k, v in event["data"]["groups"].items()} == {
            k: totals(v) for k, v in state["groups"].items()}
        pushed = await sio.inbox.wait_for("aggregate",
                                          lambda s: totals(s["total"]) == want, within=10)
        assert pushed["tenant"] == "default"
        # at most vpp_aggregate_hz events a second reach a client
        times = [m["data"]["total"]["ts"] for m in native.of("aggregate")]
        assert len(times) >= 1
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= 1000 / FAST["vpp_aggregate_hz"] - 50 for gap in gaps), gaps


# ---- dispatch end to end ------------------------------------------------------------------

# Ten nodes of different sizes and states of charge. Two are held back by their energy (a
# 30 s share may not take them below 10 %), one is below the limit already and takes no part.
FLEET = [
    NodeSpec("vpp-01", 10.0, 20.0, 80.0),
    NodeSpec("vpp-02", 5.0, 10.0, 60.0),
    NodeSpec("vpp-03", 8.0, 16.0, 45.0),
    NodeSpec("vpp-04", 6.0, 12.0, 30.0),
    NodeSpec("vpp-05", 4.0, 8.0, 90.0),
    NodeSpec("vpp-06", 12.0, 24.0, 10.1),  # 0.024 kWh above the limit: 2.88 kW for 30 s
    NodeSpec("vpp-07", 3.0, 6.0, 70.0),
    NodeSpec("vpp-08", 7.0, 14.0, 55.0),
    NodeSpec("vpp-09", 5.0, 10.0, 8.0),  # below soc_min: nothing to give
    NodeSpec("vpp-10", 10.0, 5.0, 10.5),  # 0.025 kWh above the limit: 3 kW for 30 s
]


def dispatch_events(box: Inbox, dispatch_id: str) -> list[str]:
    return [m["data"]["event"] for m in box.of("dispatch", "dispatch:default")
            if m["data"]["dispatch"]["id"] == dispatch_id]


async def test_a_40_kw_discharge_over_ten_nodes(make_hub) -> None:  # type: ignore[no-untyped-def]
    target_kw, duration_s = 40.0, 30.0
    by_id = {s.device_id: s for s in FLEET}
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(vpp_hub(make_hub))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        devices = await stack.enter_async_context(reporting_fleet(hub, FLEET))
        native = await stack.enter_async_context(inbox(hub, "dispatch"))
        sio = await stack.enter_async_context(connected(hub))
        assert await sio.call("subscribe", {"channel": "dispatch"}) == {"ok": True}

        asked = time.monotonic()
        answer = await http.post("/api/vpp/dispatch",
                                 json={"target_kw": target_kw, "duration_s": duration_s})
        assert answer.status_code == 202, answer.text
        created = answer.json()
        dispatch_id = created["id"]
        assert (created["target_kw"], created["duration_s"], created["direction"]) == (
            target_kw, duration_s, "discharge")
        assert created["requested_by"] and created["source"] == "operator"

        # achieved within 10 % of the target, timed from the request
        reached = await poll_dispatch(
            http, dispatch_id,
            lambda d: d["achieved_kw"] is not None
            and abs(d["achieved_kw"] - target_kw) <= 0.1 * target_kw,
            within=15, what="achieved within 10 % of 40 kW")
        took_s = time.monotonic() - asked
        print(f"achieved {reached['achieved_kw']} kW of {target_kw} after {took_s:.2f} s")
        assert took_s <= 15

        # the allocation: within capacity and SoC limits, proportional, summing to 40 kW
        allocation = reached["allocation"]
        room = {s.device_id: discharge_headroom_kw(s, duration_s) for s in FLEET}
        assert set(allocation) == {d for d, kw in room.items() if kw > 0}
        assert "vpp-09" not in allocation
        assert sum(allocation.values()) == pytest.approx(target_kw, abs=0.01)
        for device_id, kw in allocation.items():
            spec = by_id[device_id]
            assert 0 < kw <= spec.capacity_kw
            assert kw * duration_s / 3600 <= energy_room_kwh(spec)
            # in proportion to its room (the hub counts the duration from the allocation, a
            # few ms short of 30 s, which gives the energy-bound nodes a hair more room)
            assert kw == pytest.approx(room[device_id] * target_kw / sum(room.values()),
                                       abs=0.01)
        assert allocation["vpp-06"] < 2.88 and allocation["vpp-10"] < 3.0
        # every share acked, once, and no re-allocation (the control for the next test)
        shares = reached["shares"]
        assert sorted(s["device_id"] for s in shares) == sorted(allocation)
        assert all(s["round"] == 0 for s in shares), shares
        commands = {s["device_id"]: s["command_id"] for s in shares}
        for device in devices:
            kw = allocation.get(device.id)
            assert setpoints(device) == ([] if kw is None else [-kw]), device.id
            if kw is not None:
                assert device.commands_received[0]["id"] == commands[device.id]
        acked = await poll_dispatch(
            http, dispatch_id, lambda d: all(s["status"] != "pending" for s in d["shares"]),
            within=5, what="every share settled")
        assert [s["status"] for s in acked["shares"]] == ["succeeded"] * len(allocation)
        for device_id, command_id in commands.items():
            logged = (await http.get(f"/api/commands/{command_id}")).json()
            assert (logged["status"], logged["device_id"]) == ("acked", device_id), logged
            assert logged["params"] == {"kw": -allocation[device_id], "dispatch": dispatch_id}

        # the end: completed, every node with a share sent back to 0
        ended = await poll_dispatch(http, dispatch_id, lambda d: d["state"] == "completed",
                                    within=duration_s + 10, what="completed")
        await wait_until(lambda: all(setpoints(d)[-1:] == [0.0] for d in devices
                                     if d.id in allocation), timeout=5, what="setpoints 0")
        for device in devices:
            assert setpoints(device) == ([] if device.id not in allocation
                                         else [-allocation[device.id], 0.0]), device.id
        assert ended["ended"] >= ended["end"] and ended["shortfall_kw"] == 0
        samples = ended["achieved"]
        assert len(samples) >= duration_s / FAST["vpp_sample_s"] / 2
        assert all(created["start"] <= t <= ended["ended"] for t, _ in samples)
        assert [t for t, _ in samples] == sorted(t for t, _ in samples)
        settled = [kw for t, kw in samples if t >= reached["updated"]]
        assert settled and all(abs(kw - target_kw) <= 0.1 * target_kw for kw in settled), samples
        listed = (await http.get("/api/vpp/dispatches")).json()["dispatches"]
        assert [d["id"] for d in listed] == [dispatch_id]

        # the live events, on both protocols
        await native.next(lambda m: m.get("type") == "dispatch"
                          and m["data"]["event"] == "dispatch.ended", within=5)
        seen = Counter(dispatch_events(native, dispatch_id))
        assert seen["dispatch.created"] == 1 and seen["dispatch.started"] == 1
        assert seen["dispatch.command"] == len(allocation)
        assert seen["dispatch.progress"] >= 5 and seen["dispatch.ended"] == 1
        assert seen.keys() == {"dispatch.created", "dispatch.started", "dispatch.command",
                               "dispatch.progress", "dispatch.ended"}
        ended_sio = await sio.inbox.wait_for(
            "dispatch", lambda e: e["event"] == "dispatch.ended", within=5)
        assert ended_sio["dispatch"]["id"] == dispatch_id
        assert Counter(e["event"] for e in sio.inbox.of("dispatch")) == seen


async def test_a_node_that_never_answers_has_its_share_reallocated_once(make_hub) -> None:  # type: ignore[no-untyped-def]
    """One node takes its setpoint and never acks: after the 3 s command timeout its share
    goes, once, to the others (round-1 shares, a note in the log), and the fleet still
    reaches the target. The previous test, where every node acks, is the control: no round-1
    share there."""
    target_kw, duration_s = 20.0, 25.0
    fleet = [NodeSpec("re-1", 10.0, 40.0, 60.0), NodeSpec("re-2", 10.0, 40.0, 60.0),
             NodeSpec("re-3", 8.0, 32.0, 50.0), NodeSpec("re-4", 6.0, 24.0, 70.0),
             NodeSpec("re-x", 10.0, 40.0, 60.0, behavior="ignore")]
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(vpp_hub(make_hub))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        devices = await stack.enter_async_context(reporting_fleet(hub, fleet))
        by_id = {d.id: d for d in devices}
        native = await stack.enter_async_context(inbox(hub, "dispatch"))

        asked = time.monotonic()
        answer = await http.post("/api/vpp/dispatch",
                                 json={"target_kw": target_kw, "duration_s": duration_s})
        assert answer.status_code == 202, answer.text
        dispatch_id = answer.json()["id"]
        event = await native.next(lambda m: m.get("type") == "dispatch"
                                  and m["data"]["event"] == "dispatch.reallocated", within=10)
        waited_s = time.monotonic() - asked
        assert 2.5 <= waited_s <= 6, waited_s  # after the command timeout, not before
        moved = event["data"]["dispatch"]
        first = {s["device_id"]: s for s in moved["shares"] if s["round"] == 0}
        assert set(first) == {s.device_id for s in fleet}
        assert first["re-x"]["status"] == "timeout"
        lost_kw = first["re-x"]["kw"]
        assert lost_kw > 0

        reached = await poll_dispatch(
            http, dispatch_id,
            lambda d: all(s["status"] != "pending" for s in d["shares"])
            and d["achieved_kw"] is not None
            and abs(d["achieved_kw"] - target_kw) <= 0.1 * target_kw,
            within=12, what="the target reached after the re-allocation")
        print(f"re-allocated after {waited_s:.2f} s; achieved {reached['achieved_kw']} kW "
              f"after {time.monotonic() - asked:.2f} s")
        second = [s for s in reached["shares"] if s["round"] == 1]
        assert sorted(s["device_id"] for s in second) == ["re-1", "re-2", "re-3", "re-4"]
        assert [s["round"] for s in reached["shares"]].count(1) == 4  # once, not per sample
        assert all(s["status"] == "succeeded" for s in second), second
        assert max(s["round"] for s in reached["shares"]) == 1
        # a round-1 share is the node's new total: its first share plus its part of the lost
        for share in second:
            assert share["kw"] > first[share["device_id"]]["kw"]
            spec = next(s for s in fleet if s.device_id == share["device_id"])
            assert share["kw"] <= spec.capacity_kw
        assert sum(s["kw"] for s in second) == pytest.approx(target_kw, abs=0.01)
        assert reached["allocation"] == {s["device_id"]: s["kw"] for s in second}
        notes = [n for n in reached["notes"] if "re-allocated" in n]
        assert len(notes) == 1 and "re-x" in notes[0] and f"{lost_kw:.1f} kW" in notes[0], notes
        assert hub.runtime.dispatches.reallocations == 1
        # the silent node got one command; the others their first and their new setpoint
        assert setpoints(by_id["re-x"]) == [-lost_kw]
        for share in second:
            device_id = share["device_id"]
            assert setpoints(by_id[device_id]) == [-first[device_id]["kw"], -share["kw"]]

        # cancel: the nodes go back to 0 (the silent one is told too)
        cancelled = await http.post(f"/api/vpp/dispatches/{dispatch_id}/cancel",
                                    json={"reason": "test over"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        await wait_until(lambda: all(setpoints(d)[-1:] == [0.0] for d in devices),
                         timeout=5, what="setpoints 0 after the cancel")
        again = await http.post(f"/api/vpp/dispatches/{dispatch_id}/cancel", json={})
        assert (again.status_code, again.json()["error"]["code"]) == (409, "dispatch_ended")


# ---- proposals over WebSocket and the auto policy ------------------------------------------


async def publish_nodes(hub: Any, *nodes: tuple[str, float, float]) -> None:
    """(id, capacity_kw, soc) nodes, one fresh report each over MQTT; waits until the
    aggregate knows them as online."""
    async with paho_client(hub.mqtt_port) as mqtt:
        for device_id, capacity, soc in nodes:
            await publish(mqtt, f"edge/{device_id}/telemetry", {
                "seq": 1, "power_kw": 0.0, "soc": soc,
                "meta": {"capacity_kw": capacity, "battery_kwh": capacity * 4}})
    ids = {n[0] for n in nodes}
    await wait_until(lambda: {n.device_id for n in hub.runtime.aggregate.nodes("default")
                              if n.online} >= ids, what="nodes online")


async def dr_event(http: httpx.AsyncClient, reduce_kw: float = 5.0,
                   start_in_s: float = 120.0) -> str:
    """A demand-response event starting ``start_in_s`` from now, for ten minutes; its id."""
    now_ms = int(time.time() * 1000)
    answer = await http.post("/api/vpp/dr-events", json={
        "start": now_ms + int(start_in_s * 1000), "end": now_ms + int(start_in_s * 1000) + 600_000,
        "reduce_kw": reduce_kw})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def proposal_of(proposal_id: str, state: str) -> Any:
    return lambda m: (m.get("type") == "proposal" and m["data"]["id"] == proposal_id
                      and m["data"]["state"] == state)


async def test_proposals_decided_over_both_websockets_and_by_the_auto_policy(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(vpp_hub(make_hub))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        box = await stack.enter_async_context(inbox(hub, "dispatch"))
        ws = box.ws
        sio = await stack.enter_async_context(connected(hub))
        assert await sio.call("subscribe", {"channel": "dispatch"}) == {"ok": True}
        me = (await http.get("/api/me")).json()["subject"]
        await publish_nodes(hub, ("wsn-1", 10.0, 60.0), ("wsn-2", 10.0, 60.0))
        assert (await http.get("/api/vpp/policy")).json()["approval"] == "manual"

        # a native client rejects one
        rejected_id = "p-" + await dr_event(http)
        pending = await box.next(proposal_of(rejected_id, "pending"))
        assert pending["channel"] == "dispatch:default"
        assert pending["data"]["agent"] == "demand_response" and pending["data"]["reason"]
        assert pending["data"]["action"]["type"] == "dispatch"
        assert pending["data"]["action"]["target_kw"] == 5.0
        await ws.send({"type": "decide", "proposal": rejected_id, "decision": "reject",
                       "id": "d1"})
        answer = await box.next(lambda m: m.get("id") == "d1")
        assert answer["type"] == "decided", answer
        assert (answer["proposal"]["id"], answer["proposal"]["state"],
                answer["proposal"]["decided_by"]) == (rejected_id, "rejected", me)
        assert (await http.get(f"/api/vpp/proposals/{rejected_id}")).json()["state"] == "rejected"

        # a Socket.IO client approves one; it is executed: a scheduled dispatch
        approved_id = "p-" + await dr_event(http)
        await sio.inbox.wait_for("proposal", lambda p: p["id"] == approved_id
                                 and p["state"] == "pending")
        acked = await sio.call("proposal:approve", {"proposalId": approved_id})
        proposal = acked["proposal"]
        assert (proposal["id"], proposal["state"], proposal["decided_by"]) == (
            approved_id, "executed", me), acked
        dispatch = (await http.get(f"/api/vpp/dispatches/{proposal['result']['dispatch_id']}")
                    ).json()
        assert (dispatch["proposal_id"], dispatch["state"], dispatch["target_kw"]) == (
            approved_id, "scheduled", 5.0)
        assert dispatch["source"] == "agent:demand_response"

        # deciding a decided one: refused on both, and over REST, with proposal_decided
        await ws.send({"type": "decide", "proposal": rejected_id, "decision": "approve",
                       "id": "d2"})
        again = await box.next(lambda m: m.get("id") == "d2")
        assert (again["type"], again["code"]) == ("error", "proposal_decided"), again
        twice = await sio.call("proposal:approve", {"proposalId": approved_id})
        assert twice["code"] == "proposal_decided" and "proposal" not in twice, twice
        rest = await http.post(f"/api/vpp/proposals/{approved_id}/reject", json={})
        assert (rest.status_code, rest.json()["error"]["code"]) == (409, "proposal_decided")
        unknown = await sio.call("proposal:reject", {"proposalId": "p-none"})
        assert unknown["code"] == "not_found", unknown
        # the events tell the same story, each state once
        for proposal_id, states in ((rejected_id, ["pending", "rejected"]),
                                    (approved_id, ["pending", "approved", "executed"])):
            await box.next(proposal_of(proposal_id, states[-1]))
            seen = [m["data"]["state"] for m in box.of("proposal")
                    if m["data"]["id"] == proposal_id]
            assert seen == states, (proposal_id, seen)

        # the auto policy: the next event's proposal is executed without an operator
        policy = await http.put("/api/vpp/policy", json={"approval": "auto"})
        assert policy.status_code == 200 and policy.json()["approval"] == "auto", policy.text
        auto_id = "p-" + await dr_event(http)
        executed = await box.next(proposal_of(auto_id, "executed"))
        assert executed["data"]["decided_by"] == "policy:auto"
        stored = (await http.get(f"/api/vpp/proposals/{auto_id}")).json()
        assert (stored["state"], stored["decided_by"]) == ("executed", "policy:auto")
        dispatches = (await http.get("/api/vpp/dispatches")).json()["dispatches"]
        assert Counter(d["proposal_id"] for d in dispatches) == {approved_id: 1, auto_id: 1}


# ---- bad input ----------------------------------------------------------------------------


def refusal(answer: httpx.Response) -> tuple[int, str | None]:
    body = answer.json()
    return answer.status_code, body.get("error", {}).get("path")


async def test_bad_input_is_refused_with_its_field_and_nothing_crashes(make_hub) -> None:  # type: ignore[no-untyped-def]
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(vpp_hub(make_hub))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
        now_ms = int(time.time() * 1000)
        good = {"target_kw": 5.0, "duration_s": 60}
        for body, path in (
            ({**good, "target_kw": 0}, "$.target_kw"),
            ({**good, "target_kw": "x"}, "$.target_kw"),
            ({**good, "target_kw": 1e9}, "$.target_kw"),
            ({**good, "target_kw": None}, "$.target_kw"),
            ({**good, "target_kw": True}, "$.target_kw"),
            ({"duration_s": 60}, "$.target_kw"),
            ({**good, "duration_s": 0}, "$.duration_s"),
            ({**good, "duration_s": 8 * 86_400}, "$.duration_s"),
            ({**good, "duration_s": "soon"}, "$.duration_s"),
            ({**good, "start": now_ms - 120_000}, "$.start"),
            ({**good, "start": now_ms + 8 * 86_400_000}, "$.start"),
            ({**good, "start": "yesterday"}, "$.start"),
            ({**good, "mode": "other"}, "$.mode"),
        ):
            answer = await http.post("/api/vpp/dispatch", json=body)
            assert refusal(answer) == (422, path), (body, answer.text)
        not_object = await http.post("/api/vpp/dispatch", json=[1, 2])
        assert refusal(not_object) == (422, "$")
        assert (await http.get("/api/vpp/dispatches")).json()["dispatches"] == []

        window = {"start": now_ms + 60_000, "end": now_ms + 660_000, "reduce_kw": 5}
        for body, path in (
            ({**window, "end": now_ms + 30_000}, "$.end"),
            ({k: v for k, v in window.items() if k != "start"}, "$.start"),
            ({k: v for k, v in window.items() if k != "end"}, "$.end"),
            ({**window, "reduce_kw": -1}, "$.reduce_kw"),
            ({**window, "reduce_kw": "5"}, "$.reduce_kw"),
            ({**window, "start": now_ms - 7_200_000, "end": now_ms - 3_600_000}, "$.start"),
            ({**window, "end": now_ms + 2 * 86_400_000}, "$.end"),
        ):
            answer = await http.post("/api/vpp/dr-events", json=body)
            assert refusal(answer) == (422, path), (body, answer.text)
        assert (await http.get("/api/vpp/dr-events")).json()["events"] == []

        for body, path in (({"approval": "sometimes"}, "$.approval"),
                           ({"approval": "auto", "expire_s": 1}, "$.expire_s"),
                           ({"approval": "auto", "expire_s": 10.5}, "$.expire_s")):
            answer = await http.put("/api/vpp/policy", json=body)
            assert refusal(answer) == (422, path), (body, answer.text)
        assert (await http.get("/api/vpp/policy")).json()["approval"] == "manual"
        bad_state = await http.get("/api/vpp/proposals", params={"state": "maybe"})
        assert bad_state.status_code == 422

        # roles and tenants: a viewer may read but not dispatch or decide; another tenant's
        # dispatch and an unknown proposal do not exist
        users = await add_users(hub, ("vic", "default", "viewer"), ("otto", "acme", "operator"))
        mine = await http.post("/api/vpp/dispatch", json=good)  # no nodes: it fails at once
        assert mine.status_code == 202, mine.text
        dispatch_id = mine.json()["id"]
        proposal = await hub.runtime.proposals.propose(
            tenant_id="default", agent="monitor", action={"type": "stop",
                                                          "dispatch_id": dispatch_id},
            reason="test", expected={})
        assert proposal is not None
        viewer = bearer(users["vic"])
        assert (await http.get("/api/vpp/state", headers=viewer)).status_code == 200
        for answer in (
            await http.post("/api/vpp/dispatch", json=good, headers=viewer),
            await http.post(f"/api/vpp/proposals/{proposal['id']}/approve", headers=viewer),
            await http.post(f"/api/vpp/proposals/{proposal['id']}/reject", headers=viewer),
            await http.post(f"/api/vpp/dispatches/{dispatch_id}/cancel", headers=viewer),
            await http.post("/api/vpp/dr-events", json=window, headers=viewer),
            await http.put("/api/vpp/policy", json={"approval": "auto"}, headers=viewer),
        ):
            assert (answer.status_code, answer.json()["error"]["code"]) == (403, "forbidden"), (
                answer.request.url, answer.text)
        async with ws_client(hub.ws_url, additional_headers=viewer) as ws:
            await ws.send({"type": "decide", "proposal": proposal["id"], "decision": "approve"})
            refused = await ws.recv_until(lambda m: m["type"] in ("error", "decided"))
            assert (refused["type"], refused["code"]) == ("error", "forbidden"), refused
        assert (await http.get(f"/api/vpp/proposals/{proposal['id']}")).json()["state"] == (
            "pending")
        other = bearer(users["otto"])
        for answer in (
            await http.get(f"/api/vpp/dispatches/{dispatch_id}", headers=other),
            await http.post(f"/api/vpp/dispatches/{dispatch_id}/cancel", headers=other),
            await http.get(f"/api/vpp/proposals/{proposal['id']}", headers=other),
            await http.post(f"/api/vpp/proposals/{proposal['id']}/approve", headers=other),
            await http.get("/api/vpp/dispatches/d-0000000000000-000000"),
            await http.get("/api/vpp/proposals/p-unknown"),
            await http.post("/api/vpp/proposals/p-unknown/approve", json={}),
        ):
            assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found"), (
                answer.request.url, answer.text)
        assert (await http.get("/api/vpp/dispatches", headers=other)).json()["dispatches"] == []

        # nothing crashed: the hub answers, and the failed dispatch says why
        assert (await http.get("/health")).status_code == 200
        failed = await poll_dispatch(http, dispatch_id, lambda d: d["state"] == "failed",
                                     within=5, what="failed")
        assert failed["notes"] == ["no online node has headroom for this dispatch"]


async def test_a_start_that_is_not_a_finite_number_is_refused_not_a_crash(make_hub) -> None:  # type: ignore[no-untyped-def]
    """``start`` "nan", "inf" or "1e400" parses as a float that is no time: a 422 on the field,
    as for any other bad time, not a 500 (api/common.py ``parse_time`` converts it with int()).
    The same parser reads the history queries' ``start``/``end``."""
    async with vpp_hub(make_hub) as hub, \
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        for value in ("nan", "inf", "-inf", "1e400"):
            answer = await http.post("/api/vpp/dispatch",
                                     json={"target_kw": 5.0, "duration_s": 60, "start": value})
            assert refusal(answer) == (422, "$.start"), (value, answer.text)
            history = await http.get("/api/vpp/history", params={"start": value})
            assert history.status_code == 422, (value, history.text)
            now_ms = int(time.time() * 1000)
            event = await http.post("/api/vpp/dr-events", json={
                "start": value, "end": now_ms + 600_000, "reduce_kw": 5})
            assert refusal(event) == (422, "$.start"), (value, event.text)
        assert (await http.get("/health")).status_code == 200
