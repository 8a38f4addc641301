"""`fieldlink up --demo vpp` as a newcomer plays it: the banner names the DR event; the
demand-response proposal for it is waiting (manual approval); 20 nodes of mixed sizes in two
sites report; approving the proposal over REST executes it once, as a dispatch of the event's
40 kW that starts with the event."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from fieldlink.mqtt.broker import free_port
from tests.integration.test_cli import start_up, stop
from tests.integration.test_demo_tenants import read_until


async def eventually(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll an async check (REST state has no event here) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := await check()):
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.2)
    return result


async def test_the_vpp_demo_shows_a_proposal_to_approve(tmp_path: Path) -> None:
    http_port = free_port()
    process = start_up(tmp_path, "--demo", "vpp", "--http-port", str(http_port),
                       "--mqtt-port", str(free_port()))
    try:
        text = await asyncio.to_thread(read_until, process, "docs/vpp.md")
        event_id = re.search(r"DR event (dr-\S+): reduce 40 kW", text)
        assert event_id is not None, text
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        base = f"http://127.0.0.1:{http_port}"
        async with httpx.AsyncClient(base_url=base,
                                     headers={"Authorization": f"Bearer {token}"}) as http:
            async def state() -> dict:  # type: ignore[type-arg]
                return (await http.get("/api/vpp/state")).json()  # type: ignore[no-any-return]

            async def twenty_nodes() -> bool:
                return (await state())["total"]["nodes_online"] == 20

            await eventually(twenty_nodes, 20, "20 nodes online")
            fleet = await state()
            assert set(fleet["groups"]) == {"north", "south"}
            assert fleet["groups"]["north"]["nodes_total"] == 10
            assert len({d["meta"]["capacity_kw"] for d in (await http.get("/api/devices"))
                        .json()["devices"]}) > 1  # mixed sizes

            async def pending() -> list[dict]:  # type: ignore[type-arg]
                found = (await http.get("/api/vpp/proposals",
                                        params={"state": "pending"})).json()["proposals"]
                return found  # type: ignore[no-any-return]

            proposals = await eventually(pending, 15, "the DR proposal")
            assert len(proposals) == 1 and proposals[0]["agent"] == "demand_response"
            assert event_id.group(1) in proposals[0]["reason"]
            assert (await http.get("/api/vpp/policy")).json()["approval"] == "manual"
            approved = await http.post(f"/api/vpp/proposals/{proposals[0]['id']}/approve")
            assert approved.status_code == 200, approved.text
            assert approved.json()["state"] == "executed"
            dispatch_id = approved.json()["result"]["dispatch_id"]
            dispatch = (await http.get(f"/api/vpp/dispatches/{dispatch_id}")).json()
            assert dispatch["target_kw"] == 40.0 and dispatch["state"] == "scheduled"
            assert dispatch["source"] == "agent:demand_response"
            events = (await http.get("/api/vpp/dr-events")).json()["events"]
            assert dispatch["start"] == events[0]["start"]
            again = await http.post(f"/api/vpp/proposals/{proposals[0]['id']}/approve")
            assert again.status_code == 409
    finally:
        stop(process)
