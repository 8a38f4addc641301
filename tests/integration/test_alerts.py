"""Alerts (issue 11) over real clients: rule CRUD and refusals over REST, the live lifecycle
(raise, escalate, hysteresis, clear, a new alert after a clear, acknowledge) seen by a native
WebSocket client while a device publishes over MQTT, the minimum duration (``for_s``) on record
time, the backtest (REST and CLI) against what the live path stored, and the offline reasons and
flap damping of device status."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.integration.test_security import bearer, two_tenants
from tests.support.clients import WsClient, paho_client, publish, wait_until, ws_client

Message = dict[str, Any]


class Inbox:
    """Every message of a native WebSocket client, kept in arrival order by a reader task, so
    a test can wait for one message and still count all of them (duplicates included)."""

    def __init__(self, ws: WsClient) -> None:
        self.ws = ws
        self.messages: list[Message] = []
        self._taken: set[int] = set()
        self._changed = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.ws.recv(timeout=3600)
            async with self._changed:
                self.messages.append(message)
                self._changed.notify_all()

    async def next(self, where: Callable[[Message], bool], within: float = 10.0) -> Message:
        """The earliest message matching ``where`` that ``next`` has not returned yet."""
        found: list[Message] = []

        def match() -> bool:
            for i, message in enumerate(self.messages):
                if i not in self._taken and where(message):
                    self._taken.add(i)
                    found.append(message)
                    return True
            return False

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(match), within)
            except TimeoutError:
                shown = [json.dumps(m)[:200] for m in self.messages]
                raise TimeoutError(f"no matching message within {within} s; got {shown}") from None
        return found[0]

    def of(self, type_: str, channel: str | None = None) -> list[Message]:
        return [m for m in self.messages
                if m.get("type") == type_ and channel in (None, m.get("channel"))]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@asynccontextmanager
async def inbox(hub: Any, *channels: str, headers: dict[str, str] | None = None
                ) -> AsyncIterator[Inbox]:
    """A native WebSocket client subscribed to ``channels`` (admin token unless ``headers``)."""
    async with ws_client(hub.ws_url, additional_headers=headers or hub.auth) as ws:
        for channel in channels:
            answer = await ws.subscribe(channel)
            assert answer["type"] == "subscribed", answer
        box = Inbox(ws)
        try:
            yield box
        finally:
            await box.close()


def alert_on(channel: str, **fields: Any) -> Callable[[Message], bool]:
    """An ``alert`` event on ``channel`` whose data has ``fields``."""
    return lambda m: (m.get("type") == "alert" and m.get("channel") == channel
                      and all(m["data"].get(k) == v for k, v in fields.items()))


def status_on(channel: str) -> Callable[[Message], bool]:
    return lambda m: m.get("type") == "status" and m.get("channel") == channel


def two_levels(scope: dict[str, Any], **over: Any) -> dict[str, Any]:
    """ch4 > 100 alarm_level_1, > 200 alarm_level_2, clears at 80 or below."""
    rule: dict[str, Any] = {
        "name": "methane", "metric": "ch4", "op": ">", "clear": 80,
        "levels": [{"name": "alarm_level_1", "threshold": 100},
                   {"name": "alarm_level_2", "threshold": 200}],
        "scope": scope,
    }
    rule.update(over)
    return rule


async def add_users(hub: Any, *users: tuple[str, str, str]) -> dict[str, str]:
    """Create (name, tenant, role) users and log them in; name -> access token."""
    tokens: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        for name, tenant, role in users:
            made = await admin.post("/api/users", json={
                "username": name, "password": f"{name}-pass-123", "role": role, "tenant": tenant})
            assert made.status_code == 201, made.text
    async with httpx.AsyncClient(base_url=hub.http_url) as http:
        for name, _, _ in users:
            login = await http.post("/api/auth/token",
                                    json={"username": name, "password": f"{name}-pass-123"})
            assert login.status_code == 200, login.text
            tokens[name] = login.json()["access_token"]
    return tokens


def refusal(answer: httpx.Response) -> tuple[int, str, str | None]:
    error = answer.json()["error"]
    return answer.status_code, error["code"], error.get("path")


# ---- rules over REST ----------------------------------------------------------------------


async def test_rule_crud_and_bad_rules_refused_with_code_and_path(hub) -> None:  # type: ignore[no-untyped-def]
    t = await two_tenants(hub)  # a-dev (acme) and b-dev (bolt) reported {"v": 1.0}
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        # A device of the default tenant that reports "temp" (anonymous HTTP from loopback).
        sent = await admin.post("/api/telemetry", json={"device_id": "r-dev", "seq": 1,
                                                        "temp": 21.5})
        assert sent.status_code == 200, sent.text
        scope = {"type": "device", "value": "r-dev"}
        body = two_levels(scope, metric="temp", for_s=1.5)
        created = await admin.post("/api/alert-rules", json=body)
        assert created.status_code == 201, created.text
        rule = created.json()
        rule_id = rule["id"]
        assert rule == {
            "id": rule_id, "tenant": "default", "name": "methane", "metric": "temp", "op": ">",
            "levels": [{"name": "alarm_level_1", "threshold": 100.0},
                       {"name": "alarm_level_2", "threshold": 200.0}],
            "clear": 80.0, "for_s": 1.5, "scope": scope,
        }
        listed = (await admin.get("/api/alert-rules")).json()["rules"]
        assert [r["id"] for r in listed] == [rule_id]
        assert (await admin.get(f"/api/alert-rules/{rule_id}")).json() == rule

        replaced = await admin.put(f"/api/alert-rules/{rule_id}", json=two_levels(
            scope, metric="temp", op=">=", clear=40,
            levels=[{"name": "warning", "threshold": 50}, {"name": "critical", "threshold": 90}]))
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["id"] == rule_id
        fetched = (await admin.get(f"/api/alert-rules/{rule_id}")).json()
        assert fetched == replaced.json()
        assert (fetched["op"], fetched["clear"], fetched["for_s"]) == (">=", 40.0, 0.0)
        assert [lv["name"] for lv in fetched["levels"]] == ["warning", "critical"]
        assert len((await admin.get("/api/alert-rules")).json()["rules"]) == 1  # replaced

        # Bad rules: each refused with its code and the path of the field at fault.
        bad = {
            "unknown level": (two_levels(scope, metric="temp", levels=[
                {"name": "alarm_level_one", "threshold": 100}]),
                ("unknown_level", "$.levels[0].name")),
            "inverted thresholds": (two_levels(scope, metric="temp", levels=[
                {"name": "alarm_level_1", "threshold": 100},
                {"name": "alarm_level_2", "threshold": 90}]),
                ("inverted_thresholds", "$.levels[1].threshold")),
            "clear on the wrong side": (two_levels(scope, metric="temp", clear=120),
                                        ("inverted_thresholds", "$.clear")),
            "clear on the wrong side of <": (two_levels(scope, metric="temp", op="<", clear=50,
                                                        levels=[{"name": "minor",
                                                                 "threshold": 60}]),
                                             ("inverted_thresholds", "$.clear")),
            "unknown metric": (two_levels(scope, metric="humidity"),
                               ("unknown_metric", "$.metric")),
            "bad op": (two_levels(scope, metric="temp", op="=>"), ("invalid_op", "$.op")),
        }
        for name, (rule_body, (code, path)) in bad.items():
            answer = await admin.post("/api/alert-rules", json=rule_body)
            assert refusal(answer) == (422, code, path), (name, answer.text)
            put = await admin.put(f"/api/alert-rules/{rule_id}", json=rule_body)
            assert refusal(put) == (422, code, path), (name, put.text)
        assert (await admin.get(f"/api/alert-rules/{rule_id}")).json() == fetched  # untouched
        # The REST backtest refuses a bad rule the same way, under $.rule.
        tried = await admin.post("/api/alert-rules/backtest",
                                 json={"rule": bad["unknown level"][0]})
        assert refusal(tried) == (422, "unknown_level", "$.rule.levels[0].name")

        deleted = await admin.delete(f"/api/alert-rules/{rule_id}")
        assert deleted.status_code == 200 and deleted.json() == {"id": rule_id, "deleted": True}
        gone = await admin.get(f"/api/alert-rules/{rule_id}")
        assert refusal(gone)[:2] == (404, "not_found")
        assert refusal(await admin.delete(f"/api/alert-rules/{rule_id}"))[:2] == (404, "not_found")
        assert (await admin.get("/api/alert-rules")).json()["rules"] == []

    # Tenants: alice (acme operator) writes acme's rules; carol (acme viewer) cannot; bob (bolt)
    # sees none of acme's.
    acme_scope = {"type": "tenant"}
    async with httpx.AsyncClient(base_url=hub.http_url, headers=bearer(t["alice"])) as alice, \
            httpx.AsyncClient(base_url=hub.http_url, headers=bearer(t["carol"])) as carol, \
            httpx.AsyncClient(base_url=hub.http_url, headers=bearer(t["bob"])) as bob:
        # acme's only device reports "v": "temp" is unknown there, "v" is fine.
        unknown = await alice.post("/api/alert-rules", json=two_levels(acme_scope, metric="temp"))
        assert refusal(unknown) == (422, "unknown_metric", "$.metric")
        made = await alice.post("/api/alert-rules", json=two_levels(acme_scope, metric="v"))
        assert made.status_code == 201, made.text
        acme_rule = made.json()
        assert acme_rule["tenant"] == "acme"

        viewer = await carol.post("/api/alert-rules", json=two_levels(acme_scope, metric="v"))
        assert refusal(viewer)[:2] == (403, "forbidden")
        viewer_put = await carol.put(f"/api/alert-rules/{acme_rule['id']}",
                                     json=two_levels(acme_scope, metric="v", clear=10))
        assert refusal(viewer_put)[:2] == (403, "forbidden")
        viewer_delete = await carol.delete(f"/api/alert-rules/{acme_rule['id']}")
        assert refusal(viewer_delete)[:2] == (403, "forbidden")
        assert (await carol.get(f"/api/alert-rules/{acme_rule['id']}")).json() == acme_rule

        for answer in (await bob.get(f"/api/alert-rules/{acme_rule['id']}"),
                       await bob.put(f"/api/alert-rules/{acme_rule['id']}",
                                     json=two_levels(acme_scope, metric="v")),
                       await bob.delete(f"/api/alert-rules/{acme_rule['id']}")):
            assert refusal(answer)[:2] == (404, "not_found"), answer.text
        assert (await bob.get("/api/alert-rules")).json()["rules"] == []
        assert [r["id"] for r in (await alice.get("/api/alert-rules")).json()["rules"]] == [
            acme_rule["id"]]
        # Still there, unchanged, after the refused writes.
        assert (await alice.get(f"/api/alert-rules/{acme_rule['id']}")).json() == acme_rule
        # Another tenant named in the body is refused to a tenant operator.
        foreign = await alice.post("/api/alert-rules",
                                   json={**two_levels(acme_scope, metric="v"), "tenant": "bolt"})
        assert foreign.status_code == 403
    async with httpx.AsyncClient(base_url=hub.http_url) as anonymous:
        assert (await anonymous.get("/api/alert-rules")).status_code == 401


# ---- the live lifecycle ---------------------------------------------------------------------


async def test_live_lifecycle_over_mqtt_reaches_the_websocket_and_rest_agrees(hub) -> None:  # type: ignore[no-untyped-def]
    device = "lv-1"
    users = await add_users(hub, ("vic", "default", "viewer"), ("alice", "acme", "operator"))
    base_ms = int(time.time() * 1000) - 60_000
    ts = {seq: base_ms + seq * 1000 for seq in range(1, 10)}
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        made = await admin.post("/api/alert-rules",
                                json=two_levels({"type": "device", "value": device}))
        assert made.status_code == 201, made.text
        rule_id = made.json()["id"]

        dev_ch, all_ch = f"device:{device}", "alerts"
        async with inbox(hub, "alerts", dev_ch) as box, paho_client(hub.mqtt_port) as mqtt:

            async def reading(seq: int, ch4: float) -> None:
                await publish(mqtt, f"edge/{device}/telemetry",
                              {"seq": seq, "ts": ts[seq], "ch4": ch4})

            async def alert_event(**fields: Any) -> Message:
                """The change on both channels; the data of the ``alerts`` one."""
                on_all = await box.next(alert_on(all_ch, **fields))
                on_device = await box.next(alert_on(dev_ch, **fields))
                assert on_device["data"] == on_all["data"]
                return on_all["data"]

            await reading(1, 50)  # below everything
            await reading(2, 120)  # level 1
            raised = await alert_event(state="active", version=1)
            first = raised["id"]
            assert raised == {
                "id": first, "tenant": "default", "device_id": device, "rule_id": rule_id,
                "metric": "ch4", "level": "alarm_level_1", "level_index": 0, "state": "active",
                "value": 120.0, "threshold": 100.0, "raised": ts[2], "updated": ts[2],
                "version": 1}

            await reading(3, 250)  # level 2: the same alert escalates
            escalated = await alert_event(id=first, version=2)
            assert (escalated["level"], escalated["level_index"], escalated["state"]) == (
                "alarm_level_2", 1, "active")
            assert (escalated["threshold"], escalated["raised"], escalated["updated"]) == (
                200.0, ts[2], ts[3])

            await reading(4, 90)  # between clear and level 1: hysteresis, nothing happens
            await reading(5, 85)
            await reading(6, 70)  # below clear: cleared
            cleared = await alert_event(id=first, state="cleared")
            # version 3: readings 4 and 5 changed nothing between the escalation and the clear
            assert (cleared["version"], cleared["value"], cleared["cleared"]) == (3, 70.0, ts[6])
            assert cleared["level"] == "alarm_level_2"  # it never de-escalated

            await reading(7, 130)  # a new crossing: a new alert
            again = await alert_event(device_id=device, state="active", version=1)
            second = again["id"]
            assert second != first
            assert (again["level"], again["raised"]) == ("alarm_level_1", ts[7])

            # REST agrees.
            active = (await admin.get("/api/alerts", params={"state": "active"})).json()["alerts"]
            assert active == [again]
            done = (await admin.get("/api/alerts", params={"state": "cleared"})).json()["alerts"]
            assert done == [cleared]
            per_device = (await admin.get(f"/api/devices/{device}/alerts")).json()
            assert per_device["device_id"] == device
            assert per_device["alerts"] == [again, cleared]  # newest first
            both = (await admin.get("/api/alerts",
                                    params={"state": "active,cleared"})).json()["alerts"]
            assert both == [again, cleared]
            bad_state = await admin.get("/api/alerts", params={"state": "open"})
            assert refusal(bad_state)[:2] == (422, "invalid_state")

            # The open alert is in the snapshot of a fresh `alerts` subscriber.
            async with ws_client(hub.ws_url, additional_headers=hub.auth) as late:
                snapshot = (await late.subscribe("alerts"))["snapshot"]
            assert snapshot == {"alerts": [again]}

            # Acknowledge with a note: the event reaches the WebSocket client.
            url = f"/api/devices/{device}/alerts/{second}/acknowledge"
            acked = await admin.post(url, json={"note": "on it"})
            assert acked.status_code == 200, acked.text
            ack = acked.json()
            assert (ack["id"], ack["state"], ack["acknowledged_by"], ack["note"],
                    ack["version"]) == (second, "acknowledged", "service:admin", "on it", 2)
            assert ack["acknowledged"] >= ack["raised"]
            heard = await alert_event(id=second, state="acknowledged")
            assert heard == ack
            # Twice is harmless: the same alert, unchanged, and no event (counted below).
            again_acked = await admin.post(url, json={"note": "again"})
            assert again_acked.status_code == 200 and again_acked.json() == ack

            refused = {
                "cleared": (await admin.post(
                    f"/api/devices/{device}/alerts/{first}/acknowledge", json={}),
                    (409, "alert_cleared")),
                "unknown alert": (await admin.post(
                    f"/api/devices/{device}/alerts/al-0000000000000000/acknowledge", json={}),
                    (404, "not_found")),
                "unknown device": (await admin.post(
                    f"/api/devices/no-such/alerts/{second}/acknowledge", json={}),
                    (404, "not_found")),
                "another tenant's": (await admin.post(url, json={}, headers=bearer(
                    users["alice"])), (404, "not_found")),
                "viewer": (await admin.post(url, json={}, headers=bearer(users["vic"])),
                           (403, "forbidden")),
                "bad note": (await admin.post(url, json={"note": 5}), (422, "invalid_note")),
            }
            for name, (answer, expected) in refused.items():
                assert refusal(answer)[:2] == expected, (name, answer.text)
            # The cross-tenant `alerts` channel is the system administrator's only.
            async with ws_client(hub.ws_url, additional_headers=bearer(users["alice"])) as ws:
                answer = await ws.subscribe("alerts")
                assert (answer["type"], answer["code"]) == ("error", "forbidden"), answer
            # alice's tenant has no alerts; her lists show none of default's.
            async with httpx.AsyncClient(base_url=hub.http_url,
                                         headers=bearer(users["alice"])) as alice:
                assert (await alice.get("/api/alerts")).json()["alerts"] == []
                assert refusal(await alice.get(f"/api/devices/{device}/alerts"))[:2] == (
                    404, "not_found")

            # Escalation after the acknowledgement: active again, same alert.
            await reading(8, 240)
            worse = await alert_event(id=second, version=3)
            assert (worse["state"], worse["level"]) == ("active", "alarm_level_2")
            assert worse["updated"] == ts[8]
            stored = (await admin.get(f"/api/devices/{device}/alerts",
                                      params={"state": "active"})).json()["alerts"]
            assert stored == [worse]

        # Every change once per channel, in order, nothing else (no event for readings 1, 4
        # and 5, for the second acknowledgement, or for any refused request).
        expected = [(first, 1), (first, 2), (first, 3), (second, 1), (second, 2), (second, 3)]
        for channel in (all_ch, dev_ch):
            got = [(m["data"]["id"], m["data"]["version"]) for m in box.of("alert", channel)]
            assert got == expected, (channel, got)
            seqs = [m["seq"] for m in box.of("alert", channel)]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # Telemetry reached the device channel once per reading.
        telemetry = Counter(m["data"]["seq"] for m in box.of("telemetry", dev_ch))
        assert telemetry == Counter(range(1, 9)), telemetry
        counters = hub.runtime.alerts.counters
        assert (counters.raised, counters.escalated, counters.cleared,
                counters.acknowledged) == (2, 2, 1, 1)


async def test_a_short_spike_raises_nothing_and_a_sustained_breach_one_alert(hub) -> None:  # type: ignore[no-untyped-def]
    device = "fs-1"
    base = int(time.time() * 1000) - 120_000
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        made = await admin.post("/api/alert-rules", json=two_levels(
            {"type": "device", "value": device}, for_s=2))
        assert made.status_code == 201, made.text
        async with inbox(hub, "alerts") as box, paho_client(hub.mqtt_port) as mqtt:
            readings = [
                (0, 50),
                (1000, 150),  # a spike over level 1 ...
                (1500, 50),  # ... gone 0.5 s later: nothing
                (2500, 150),  # over again, from here on
                (3500, 160),
                (4000, 170),  # 1.5 s: not yet
                (4500, 165),  # 2 s over: raised here
                (5500, 180),
                (6000, 10),  # cleared: every reading before it has been evaluated
            ]
            for seq, (offset, ch4) in enumerate(readings, 1):
                await publish(mqtt, f"edge/{device}/telemetry",
                              {"seq": seq, "ts": base + offset, "ch4": ch4})
            raised = await box.next(alert_on("alerts", device_id=device, state="active"))
            cleared = await box.next(alert_on("alerts", device_id=device, state="cleared"))
            stored = (await admin.get(f"/api/devices/{device}/alerts")).json()["alerts"]
    assert (raised["data"]["raised"], raised["data"]["value"]) == (base + 4500, 165.0)
    assert (raised["data"]["level"], raised["data"]["version"]) == ("alarm_level_1", 1)
    assert cleared["data"]["id"] == raised["data"]["id"]
    assert (cleared["data"]["cleared"], cleared["data"]["version"]) == (base + 6000, 2)
    assert stored == [cleared["data"]]  # one alert: the spike raised nothing
    assert [(m["data"]["id"], m["data"]["version"]) for m in box.of("alert")] == [
        (raised["data"]["id"], 1), (raised["data"]["id"], 2)]


# ---- backtest equals live -------------------------------------------------------------------

BACKTEST_RULE = {
    "metric": "ch4", "op": ">", "clear": 80, "for_s": 1, "scope": {"type": "tenant"},
    "levels": [{"name": "alarm_level_1", "threshold": 100},
               {"name": "alarm_level_2", "threshold": 200}],
}
# Per device: values every 500 ms of record time.
SERIES = {
    "bt-1": [50, 120, 130, 125,  # over level 1 for 1 s: raised at index 3
             210, 90,  # a level-2 breach broken off (still open: 90 is above clear)
             220, 230, 240,  # level 2 for 1 s: escalated at index 8
             85, 70,  # hysteresis, then cleared at index 10
             150, 50,  # a short breach: nothing
             150, 250, 260,  # over for 1 s (level 1 throughout): a new alert at index 15
             270, 280, 290],  # level 2 for 1 s: escalated at index 18, still open
    "bt-2": [300, 310, 320,  # level 2 for 1 s: raised at index 2 straight at level 2
             60],  # cleared at index 3
    "bt-3": [10, 500, 20, 30],  # one reading over: nothing
}


def expected_backtest(base: int) -> list[dict[str, Any]]:
    """The alerts of SERIES worked out by hand (not by the evaluator)."""
    at = lambda i: base + i * 500  # noqa: E731
    return [
        {"device_id": "bt-2", "level": "alarm_level_2", "raised": at(2), "cleared": at(3),
         "state": "cleared", "value": 60.0, "version": 2},
        {"device_id": "bt-1", "level": "alarm_level_2", "raised": at(3), "cleared": at(10),
         "state": "cleared", "value": 70.0, "version": 3},
        {"device_id": "bt-1", "level": "alarm_level_2", "raised": at(15), "cleared": None,
         "state": "active", "value": 290.0, "version": 2},
    ]


def essence(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("device_id", "level", "raised", "cleared", "state", "value", "version")
    return sorted(({k: a.get(k) for k in keys} for a in alerts),
                  key=lambda a: (a["raised"], a["device_id"]))


async def test_backtest_over_rest_and_cli_equals_what_the_live_path_stored(  # type: ignore[no-untyped-def]
    make_hub, tmp_path: Path
) -> None:
    base = int(time.time() * 1000) - 600_000
    data_dir = tmp_path / "hub"
    # One list of records, interleaved across the devices in time order.
    records = sorted(
        ({"device_id": device, "seq": i + 1, "ts": base + i * 500, "ch4": value}
         for device, values in SERIES.items() for i, value in enumerate(values)),
        key=lambda r: (r["ts"], r["device_id"]))
    async with make_hub(data_dir=data_dir) as hub, \
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        made = await admin.post("/api/alert-rules", json=BACKTEST_RULE)
        assert made.status_code == 201, made.text
        async with inbox(hub, "alerts") as box, paho_client(hub.mqtt_port) as mqtt:
            for record in records:
                device = record["device_id"]
                body = {k: v for k, v in record.items() if k != "device_id"}
                await publish(mqtt, f"edge/{device}/telemetry", body)
            # 3 raises, 2 escalations (bt-2 was raised at level 2 at once), 2 clears.
            for _ in range(7):
                await box.next(lambda m: m.get("type") == "alert", within=15)
        live = (await admin.get("/api/alerts")).json()["alerts"]
        assert len(live) == 3, live
        assert essence(live) == expected_backtest(base)
        assert len(box.of("alert")) == 7, box.of("alert")

        # Events go out before the batched store write; the backtest reads the store.
        await hub.runtime.ingestor.settled()
        answer = await admin.post("/api/alert-rules/backtest", json={
            "rule": BACKTEST_RULE, "start": base - 1, "end": base + 60_000})
        assert answer.status_code == 200, answer.text
        backtest = answer.json()
        assert backtest["devices"] == 3
        assert essence(backtest["alerts"]) == essence(live)
        assert sorted(a["id"] for a in backtest["alerts"]) == [
            "backtest-1", "backtest-1", "backtest-2"]  # numbered per device
        assert not {a["id"] for a in backtest["alerts"]} & {a["id"] for a in live}
        # A window that starts after the first two alerts holds only bt-1's second one.
        later = await admin.post("/api/alert-rules/backtest", json={
            "rule": BACKTEST_RULE, "start": base + 11 * 500, "end": base + 60_000})
        assert [a["raised"] for a in later.json()["alerts"]] == [base + 15 * 500]

    # The CLI on the same data, after the hub stopped.
    rule_file = tmp_path / "rule.toml"
    rule_file.write_text("\n".join([
        "[[rules]]", 'id = "ch4-backtest"', 'metric = "ch4"', 'op = ">"', "clear = 80",
        "for_s = 1", 'scope = { type = "tenant" }',
        "levels = [", '  { name = "alarm_level_1", threshold = 100 },',
        '  { name = "alarm_level_2", threshold = 200 },', "]", ""]))
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fieldlink.cli", "alerts", "backtest", "--rule", str(rule_file),
         "--since", "1d", "--data-dir", str(data_dir), "--json"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cli = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert essence(cli) == essence(live)
    assert {a["rule_id"] for a in cli} == {"ch4-backtest"}
    # The human-readable form counts the same alerts.
    text = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fieldlink.cli", "alerts", "backtest", "--rule", str(rule_file),
         "--since", "1d", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("3 alerts from rule ch4-backtest over the last 1d"), text.stdout


# ---- status reasons and flapping ------------------------------------------------------------


async def test_offline_reasons_reach_clients_and_rest(hub) -> None:  # type: ignore[no-untyped-def]
    cases = {  # device -> (its offline message, the reason clients see)
        "sr-will": ("offline", "last_will"),
        "sr-clean": ({"status": "offline", "reason": "clean_disconnect"}, "clean_disconnect"),
        "sr-json": ({"status": "offline"}, "status_message"),
    }
    async with inbox(hub, *(f"device:{d}" for d in cases)) as box, \
            paho_client(hub.mqtt_port) as mqtt:
        for device, (message, reason) in cases.items():
            await publish(mqtt, f"edge/{device}/status", "online")
            online = await box.next(status_on(f"device:{device}"))
            assert (online["data"]["status"], online["data"]["reason"]) == ("online", "reported")
            await publish(mqtt, f"edge/{device}/status", message)
            offline = await box.next(status_on(f"device:{device}"))
            assert (offline["data"]["device_id"], offline["data"]["status"],
                    offline["data"]["reason"]) == (device, "offline", reason), offline
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin:
        for device in cases:
            summary = (await admin.get(f"/api/devices/{device}")).json()
            assert summary["status"] == "offline", summary
            assert isinstance(summary["status_since"], int)
    for device in cases:
        assert len(box.of("status", f"device:{device}")) == 2


async def test_a_flapping_device_shows_one_pair_per_window_and_rest_stays_exact(make_hub) -> None:  # type: ignore[no-untyped-def]
    window_s = 1.0
    device = "flap-1"
    channel = f"device:{device}"
    async with make_hub(flap_window_s=window_s, status_sweep_s=0.05) as hub, \
            httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as admin, \
            inbox(hub, channel) as box, paho_client(hub.mqtt_port) as mqtt:
        topic = f"edge/{device}/status"
        presence = hub.runtime.presence

        async def current() -> str:
            status: str = (await admin.get(f"/api/devices/{device}")).json()["status"]
            return status

        await publish(mqtt, topic, "online")
        await box.next(status_on(channel))
        await publish(mqtt, topic, "offline")
        await box.next(status_on(channel))
        await publish(mqtt, topic, "online")  # the pair offline -> online is shown ...
        pair = await box.next(status_on(channel))
        assert pair["data"]["status"] == "online"
        # ... and the flips within the window are held back from clients.
        flips = ["offline", "online", "offline", "online", "offline"]
        for n, status in enumerate(flips, 1):
            await publish(mqtt, topic, status)
            await wait_until(lambda n=n: presence.counters.damped == n, what=f"flip {n} held")
            assert await current() == status  # REST is exact all along
        flipped_by_ms = time.time() * 1000
        # The premise: every flip happened inside the window after the pair.
        assert flipped_by_ms < pair["data"]["ts"] + window_s * 1000, "machine too slow"
        assert [m["data"]["status"] for m in box.of("status")] == ["online", "offline", "online"]

        released = await box.next(status_on(channel), within=10)
        released_ms = time.time() * 1000
        assert (released["data"]["status"], released["data"]["reason"]) == (
            "offline", "last_will")
        assert released_ms >= pair["data"]["ts"] + window_s * 1000  # not before the window
        assert await current() == "offline"
        statuses = [m["data"]["status"] for m in box.of("status")]
        assert statuses == ["online", "offline", "online", "offline"], statuses
        assert released["seq"] == pair["seq"] + 1  # nothing in between on the channel


async def test_a_replaced_rule_keeps_its_open_alert_and_a_deleted_one_clears_it(hub) -> None:  # type: ignore[no-untyped-def]
    """PUT of a rule while its alert is open: the alert still escalates and clears under the
    new rule (before the fix the evaluator forgot it). DELETE of a rule clears its open
    alerts, with an event (nothing would ever clear them otherwise)."""
    base = int(time.time() * 1000) - 60_000
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http, inbox(
        hub, "device:p-1"
    ) as box:
        rule_id = (await http.post("/api/alert-rules",
                                   json=two_levels({"type": "device", "value": "p-1"}))).json()["id"]

        async def send(seq: int, value: float) -> None:
            answer = await http.post("/api/telemetry", json={
                "device_id": "p-1", "seq": seq, "ts": base + seq * 1000, "ch4": value})
            assert answer.status_code == 200, answer.text

        await send(1, 150)
        raised = await box.next(alert_on("device:p-1", state="active", level="alarm_level_1"))
        renamed = await http.put(f"/api/alert-rules/{rule_id}",
                                 json=two_levels({"type": "device", "value": "p-1"}, name="renamed"))
        assert renamed.status_code == 200, renamed.text
        await send(2, 250)
        up = await box.next(alert_on("device:p-1", level="alarm_level_2"))
        assert up["data"]["id"] == raised["data"]["id"] and up["data"]["version"] == 2
        await send(3, 10)
        down = await box.next(alert_on("device:p-1", state="cleared"))
        assert down["data"]["id"] == raised["data"]["id"]
        assert hub.runtime.alerts.counters.store_conflicts == 0
        await send(4, 150)
        second = await box.next(alert_on("device:p-1", state="active"))
        assert second["data"]["id"] != raised["data"]["id"]
        assert (await http.delete(f"/api/alert-rules/{rule_id}")).status_code == 200
        gone = await box.next(alert_on("device:p-1", state="cleared", id=second["data"]["id"]))
        assert gone["data"]["rule_id"] == rule_id
        active = (await http.get("/api/alerts", params={"state": "active"})).json()["alerts"]
        assert [a for a in active if a["rule_id"] == rule_id] == []
