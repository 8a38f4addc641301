"""The VPP's agents on three instances sharing mosquitto, Redis and PostgreSQL: exactly one
instance leads them, a demand-response event becomes exactly one proposal whichever instance
it was posted on, an approval executes it once (also when two instances approve at the same
time), and when the leader stops another instance takes over within the lease."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_alerts import inbox
from tests.integration.test_vpp import FAST, proposal_of, publish_nodes
from tests.support.clients import wait_until

LEASE_S = 15.0  # AgentService's default lease_ttl_ms; Settings has no option for it


async def leaders(rest: list[httpx.AsyncClient]) -> list[bool]:
    return [(await http.get("/api/vpp/agents")).json()["leader"] for http in rest]


async def leader_gauges(rest: list[httpx.AsyncClient]) -> list[str]:
    """Each instance's ``fieldlink_vpp_agent_leader`` line from /metrics."""
    found = []
    for http in rest:
        text = (await http.get("/metrics")).text
        found.append(next(line for line in text.splitlines()
                          if line.startswith("fieldlink_vpp_agent_leader ")))
    return found


async def dispatches_of(http: httpx.AsyncClient, proposal_id: str) -> list[dict[str, Any]]:
    listed = (await http.get("/api/vpp/dispatches", params={"limit": 1000})).json()
    return [d for d in listed["dispatches"] if d["proposal_id"] == proposal_id]


async def proposals_for(http: httpx.AsyncClient, event_id: str) -> list[dict[str, Any]]:
    """Every proposal that names the DR event (whatever its id)."""
    listed = (await http.get("/api/vpp/proposals", params={"limit": 1000})).json()
    return [p for p in listed["proposals"] if event_id in p["reason"] or event_id in p["id"]]


async def dr_event(http: httpx.AsyncClient) -> str:
    now_ms = int(time.time() * 1000)
    answer = await http.post("/api/vpp/dr-events", json={
        "start": now_ms + 300_000, "end": now_ms + 900_000, "reduce_kw": 4.0})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_one_leader_one_proposal_per_event_one_execution(  # type: ignore[no-untyped-def]
    make_hub, mosquitto, redis_server, pg_url: str, tmp_path: Path
) -> None:
    stacks = [AsyncExitStack() for _ in range(3)]
    async with AsyncExitStack() as outer:
        for stack in stacks:
            outer.push_async_callback(stack.aclose)  # idempotent: the stopped one is closed
        hubs = [
            await stacks[i].enter_async_context(make_hub(
                mqtt_url=mosquitto.url, database_url=pg_url, redis_url=redis_server.url,
                mqtt_shared_group="vpp", data_dir=tmp_path / f"hub{i + 1}", **FAST))
            for i in range(3)
        ]
        rest = [await stacks[i].enter_async_context(
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth))
            for i, hub in enumerate(hubs)]
        third = await stacks[2].enter_async_context(inbox(hubs[2], "dispatch"))
        await publish_nodes(hubs[0], ("so-1", 10.0, 60.0), ("so-2", 5.0, 70.0))
        for hub in hubs:
            await wait_until(lambda hub=hub: len(hub.runtime.aggregate.nodes("default")) == 2,
                             timeout=10, what="every instance knows the nodes")

        # exactly one leader, on REST and in /metrics
        for _ in range(20):
            if sum(await leaders(rest)) == 1:
                break
            await asyncio.sleep(0.25)
        led = await leaders(rest)
        assert sum(led) == 1, led
        lead = led.index(True)
        gauges = await leader_gauges(rest)
        assert sorted(gauges) == ["fieldlink_vpp_agent_leader 0.0"] * 2 + [
            "fieldlink_vpp_agent_leader 1.0"], gauges
        assert gauges[lead].endswith(" 1.0")
        assert [hub.runtime.agents.leader for hub in hubs] == led

        # a DR event posted on instance 1: one proposal, seen everywhere
        event_id = await dr_event(rest[0])
        proposal_id = f"p-{event_id}"
        await third.next(proposal_of(proposal_id, "pending"), within=10)
        agents = hubs[lead].runtime.agents
        ticks = agents.ticks
        await wait_until(lambda: agents.ticks >= ticks + 4, timeout=10,
                         what="four more agent rounds")  # room for a second proposal to show
        for http in rest:
            found = await proposals_for(http, event_id)
            assert [(p["id"], p["state"]) for p in found] == [(proposal_id, "pending")], found
        about = [m["data"] for m in third.of("proposal") if event_id in m["data"]["reason"]]
        assert [(p["id"], p["state"]) for p in about] == [(proposal_id, "pending")], about

        # approved on instance 2: executed once
        approved = await rest[1].post(f"/api/vpp/proposals/{proposal_id}/approve", json={})
        assert approved.status_code == 200, approved.text
        body = approved.json()
        assert body["state"] == "executed" and body["error"] is None, body
        dispatch_id = body["result"]["dispatch_id"]
        for http in rest:
            assert [d["id"] for d in await dispatches_of(http, proposal_id)] == [dispatch_id]
            stored = (await http.get(f"/api/vpp/proposals/{proposal_id}")).json()
            assert (stored["state"], stored["result"]) == ("executed", {"dispatch_id": dispatch_id})
        again = await rest[2].post(f"/api/vpp/proposals/{proposal_id}/approve", json={})
        assert (again.status_code, again.json()["error"]["code"]) == (409, "proposal_decided")
        await third.next(proposal_of(proposal_id, "executed"), within=10)
        states = [(m["data"]["id"], m["data"]["state"]) for m in third.of("proposal")
                  if event_id in m["data"]["reason"]]
        assert states == [(proposal_id, s) for s in ("pending", "approved", "executed")], states

        # two instances approve the next one at the same time: one wins, one 409
        second_event = await dr_event(rest[2])
        second_id = f"p-{second_event}"
        await third.next(proposal_of(second_id, "pending"), within=10)
        answers = await asyncio.gather(
            rest[0].post(f"/api/vpp/proposals/{second_id}/approve", json={}),
            rest[1].post(f"/api/vpp/proposals/{second_id}/approve", json={}))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409], [a.text for a in answers]
        loser = next(a for a in answers if a.status_code == 409)
        assert loser.json()["error"]["code"] == "proposal_decided"
        winner = next(a for a in answers if a.status_code == 200).json()
        for http in rest:
            assert [d["id"] for d in await dispatches_of(http, second_id)] == [
                winner["result"]["dispatch_id"]]
        executions = sum(hub.runtime.proposals.executed for hub in hubs)
        assert executions == 2, executions
        # control: the count above sees a second dispatch for a proposal when there is one
        for _ in range(2):
            await hubs[0].runtime.dispatches.request(
                tenant_id="default", target_kw=1.0, duration_s=60, requested_by="test",
                start_ms=int(time.time() * 1000) + 3_600_000, proposal_id="p-control")
        assert len(await dispatches_of(rest[2], "p-control")) == 2

        # still one leader, the same, after all that
        assert await leaders(rest) == led

        # failover: stop the leader; another instance leads within the lease
        stopped = time.monotonic()
        await stacks[lead].aclose()
        alive = [http for i, http in enumerate(rest) if i != lead]
        while sum(await leaders(alive)) != 1:
            assert time.monotonic() - stopped < LEASE_S + 5, "no new leader"
            await asyncio.sleep(0.2)
        took_s = time.monotonic() - stopped
        print(f"a new leader after {took_s:.1f} s (lease {LEASE_S:.0f} s)")
        assert took_s <= LEASE_S + 2
        gauges = await leader_gauges(alive)
        assert sorted(gauges) == ["fieldlink_vpp_agent_leader 0.0",
                                  "fieldlink_vpp_agent_leader 1.0"], gauges
