"""One contract suite for every Store implementation: memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fieldlink.backends.aggregate import aggregate_records, fleet_records
from fieldlink.backends.memory import MemoryStore
from fieldlink.backends.postgres import PostgresStore
from fieldlink.backends.sqlite import SqliteStore
from fieldlink.core.alerts import Alert
from fieldlink.core.errors import DependencyDown
from fieldlink.core.model import Device, Record
from fieldlink.ports import Store, WriteResult
from tests.conftest import fresh_database

T0 = 1_764_000_000_000


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "h.db")
    else:
        s = PostgresStore(await fresh_database(request.getfixturevalue("postgres")))
    await s.start()
    yield s
    await s.close()


def rec(device: str, ts: int, seq: int | None = None, **metrics: object) -> Record:
    return Record(device, ts, dict(metrics) or {"v": ts}, seq)


async def test_range_is_half_open_ordered_and_limited(store: Store) -> None:
    await store.write([rec("d", T0 + i * 1000, v=i) for i in (3, 1, 2, 0, 4)])
    rows = await store.query_range("d", T0 + 1000, T0 + 4000, 100)
    assert [r.metrics["v"] for r in rows] == [1, 2, 3]
    newest = await store.query_range("d", T0, T0 + 10_000, 2, newest_first=True)
    assert [r.metrics["v"] for r in newest] == [4, 3]
    assert [r.metrics["v"] for r in await store.query_range("d", T0, T0 + 10_000, 2)] == [0, 1]
    assert await store.query_range("other", T0, T0 + 10_000, 10) == []


async def test_dedupe_on_device_and_seq(store: Store) -> None:
    first = await store.write([rec("d", T0, 1), rec("d", T0 + 1, 1), rec("e", T0, 1)])
    assert first == WriteResult(stored=2, duplicates=1)
    second = await store.write([rec("d", T0 + 5, 1), rec("d", T0 + 6, 2)])
    assert second == WriteResult(stored=1, duplicates=1)
    no_seq = await store.write([rec("d", T0 + 7), rec("d", T0 + 7)])
    assert no_seq == WriteResult(stored=2, duplicates=0)
    rows = await store.query_range("d", T0, T0 + 100, 100)
    assert [(r.ts_ms - T0, r.seq) for r in rows] == [(0, 1), (6, 2), (7, None), (7, None)]


async def test_devices_upsert_keeps_created(store: Store) -> None:
    store.save_device(Device("d", "edge", {"a": 1}, created_ms=T0, last_seen_ms=T0))
    store.save_device(Device("d", "gas", {"a": 2}, created_ms=T0 + 99, last_seen_ms=T0 + 5))
    store.save_device(Device("c", "edge", {}, created_ms=T0))
    await store.write([rec("d", T0)])  # devices commit with the next batch
    device = await store.get_device("d")
    assert device is not None
    assert (device.kind, device.meta, device.created_ms) == ("gas", {"a": 2}, T0)
    assert [d.id for d in await store.list_devices()] == ["c", "d"]
    assert await store.get_device("missing") is None


async def test_latest(store: Store) -> None:
    assert await store.latest("d") is None
    await store.write([rec("d", T0 + 5, v=5), rec("d", T0, v=0)])
    latest = await store.latest("d")
    assert latest is not None and latest.metrics == {"v": 5}


@pytest.mark.parametrize("agg", ["avg", "min", "max", "last", "count"])
async def test_buckets_match_the_reference(store: Store, agg: str) -> None:
    records = [Record("d", T0 + i * 7_000, {"x": float(i % 5), "y": i, "flag": True, "s": "txt"})
               for i in range(40)]
    await store.write(records)
    got = await store.query_buckets("d", T0, T0 + 40 * 7_000, 60_000, agg)
    assert got == aggregate_records(records, 60_000, agg)
    assert all("flag" not in row and "s" not in row for row in got)
    assert got[0]["ts"] == (T0 // 60_000) * 60_000


def assert_rows(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    """Same buckets and metrics; values equal up to float summation order."""
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want, strict=True):
        assert g == {k: pytest.approx(v) for k, v in w.items()}


@pytest.mark.parametrize("agg", ["avg", "sum", "min", "max", "count"])
async def test_fleet_buckets_match_the_reference(store: Store, agg: str) -> None:
    """Several devices, several writes (the rollup is folded per write), duplicates that must
    not count, a huge value the rollup leaves out, a range in whole minutes."""
    start = (T0 // 60_000) * 60_000
    records = [Record(f"d{i % 4}", start + i * 5_000, {"p": float(i % 7), "q": i, "on": True},
                      i) for i in range(120)]
    for chunk in (records[:50], records[50:], records[10:20]):  # the last one is duplicates
        await store.write(chunk)
    await store.write([Record("d9", start + 1_000, {"p": 1e305}, 1)])
    got = await store.query_fleet(start, start + 10 * 60_000, 120_000, agg)
    reference = aggregate_records(fleet_records(records), 120_000, agg)
    assert_rows(got, reference)
    assert len(got) == 5 and all("on" not in row for row in got)
    only_p = await store.query_fleet(start, start + 10 * 60_000, 60_000, agg, ("p",))
    assert_rows(only_p, aggregate_records(fleet_records(records, ("p",)), 60_000, agg))
    assert await store.query_fleet(start + 3_600_000, start + 7_200_000, 60_000, agg) == []


async def test_sqlite_survives_reopen_and_refuses_writes_after_close(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    s = SqliteStore(path)
    await s.start()
    await s.write([rec("d", T0, 1, v=1)])
    await s.close()
    reopened = SqliteStore(path)
    await reopened.start()
    try:
        assert [r.seq for r in await reopened.query_range("d", 0, 2**62, 10)] == [1]
        assert (await reopened.write([rec("d", T0 + 1, 1)])).duplicates == 1
    finally:
        await reopened.close()
    with pytest.raises(DependencyDown):
        await reopened.write([rec("d", T0 + 2)])


async def test_command_log_is_compare_and_set(store: Store) -> None:
    from fieldlink.core.commands import Status, expire, new_command, parse_request, transition

    def make(command_id: str, device: str, at: int, timeout_ms: int = 1000) -> object:
        request = parse_request({"device": device, "action": "idle", "timeout_ms": timeout_ms})
        return new_command(request, command_id, at)

    first = make("c1", "d", T0)
    assert await store.insert_command(first) is True  # type: ignore[arg-type]
    assert await store.insert_command(make("c1", "d", T0 + 1)) is False  # type: ignore[arg-type]
    await store.insert_command(make("c2", "d", T0 + 5, timeout_ms=60_000))  # type: ignore[arg-type]
    await store.insert_command(make("c3", "e", T0 + 9))  # type: ignore[arg-type]
    sent = transition(first, Status.SENT, T0 + 10)  # type: ignore[arg-type]
    assert await store.replace_command(sent, Status.PENDING) is True
    # A second writer that still believes it is pending loses.
    assert await store.replace_command(sent, Status.PENDING) is False
    timed_out = expire(sent, T0 + 2000)
    assert await store.replace_command(timed_out, Status.SENT) is True
    got = await store.get_command("c1")
    assert got == timed_out and await store.get_command("nope") is None
    assert [c.id for c in await store.list_commands("d", 10)] == ["c2", "c1"]
    assert [c.id for c in await store.list_commands("d", 1)] == ["c2"]
    assert [c.id for c in await store.due_commands(T0 + 5000, 10)] == ["c3"]
    assert [c.id for c in await store.pending_commands("d")] == ["c2"]
    assert [c.id for c in await store.pending_commands(None)] == ["c2", "c3"]


async def test_latest_since_gives_each_devices_newest_record(store: Store) -> None:
    await store.write([rec("a", T0, 1, v=1), rec("a", T0 + 10, 2, v=2), rec("b", T0 + 5, 1, v=3),
                       rec("c", T0 - 1000, 1, v=4)])
    newest = sorted(await store.latest_since(T0), key=lambda r: r.device_id)
    assert [(r.device_id, r.ts_ms, r.seq, r.metrics) for r in newest] == [
        ("a", T0 + 10, 2, {"v": 2}), ("b", T0 + 5, 1, {"v": 3})]


async def test_fleet_chart_per_tenant(store: Store) -> None:
    start = (T0 // 60_000) * 60_000
    acme = [Record("a1", start + i * 1000, {"p": 1.0}, i, tenant_id="acme") for i in range(10)]
    bolt = [Record("b1", start + i * 1000, {"p": 5.0}, i, tenant_id="bolt") for i in range(10)]
    await store.write(acme + bolt)
    window = (start, start + 60_000, 60_000, "sum")
    assert await store.query_fleet(*window, (), "acme") == [{"ts": start, "p": 10.0}]
    assert await store.query_fleet(*window, (), "bolt") == [{"ts": start, "p": 50.0}]
    assert await store.query_fleet(*window, (), "nobody") == []
    assert await store.query_fleet(*window) == [{"ts": start, "p": 60.0}]


# ---- alerts, leases, deleting devices ------------------------------------------------------

def alert(alert_id: str, rule: str = "r1", device: str = "d1", **over: object) -> Alert:
    from fieldlink.core.alerts import AlertState

    base = dict(id=alert_id, tenant_id="t1", device_id=device, rule_id=rule, metric="gas_ppm",
                level="alarm_level_1", level_index=0, state=AlertState.ACTIVE, value=450.0,
                threshold=400.0, raised_ms=T0, updated_ms=T0)
    base.update(over)
    return Alert(**base)  # type: ignore[arg-type]


async def test_one_open_alert_per_rule_and_device(store: Store) -> None:
    from dataclasses import replace

    from fieldlink.core.alerts import AlertState

    assert await store.insert_alert(alert("a1"))
    assert not await store.insert_alert(alert("a2"))  # the same crossing, raised twice
    assert await store.insert_alert(alert("a3", rule="r2"))
    assert await store.insert_alert(alert("a4", device="d2"))
    done = replace(alert("a1"), state=AlertState.CLEARED, version=2, updated_ms=T0 + 5)
    assert await store.replace_alert(done, expected_version=1)
    assert not await store.replace_alert(done, expected_version=1)  # lost the race
    assert await store.insert_alert(alert("a5", updated_ms=T0 + 9))  # a new crossing after clear
    assert await store.get_alert("a1") == done
    assert {a.id for a in await store.open_alerts()} == {"a3", "a4", "a5"}
    newest = await store.list_alerts(tenant_id="t1")
    assert [a.id for a in newest][:2] == ["a5", "a1"]
    assert [a.id for a in await store.list_alerts(states=["cleared"])] == ["a1"]
    assert [a.id for a in await store.list_alerts(device_id="d2")] == ["a4"]
    assert [a.id for a in await store.list_alerts(since_ms=T0 + 1)] == ["a5", "a1"]
    assert await store.list_alerts(tenant_id="t2") == []
    assert len(await store.list_alerts(limit=2)) == 2


async def test_a_lease_has_one_holder_until_it_expires(store: Store) -> None:
    assert await store.acquire_lease("alerts", "i1", 1000, T0)
    assert not await store.acquire_lease("alerts", "i2", 1000, T0 + 500)
    assert await store.acquire_lease("alerts", "i1", 1000, T0 + 600)  # renewed to T0 + 1600
    assert not await store.acquire_lease("alerts", "i2", 1000, T0 + 1500)
    assert await store.acquire_lease("alerts", "i2", 1000, T0 + 1600)  # expired: taken over
    assert not await store.acquire_lease("alerts", "i1", 1000, T0 + 1700)
    assert await store.acquire_lease("agents", "i1", 1000, T0 + 1700)  # another name


async def test_deleting_a_device_keeps_or_purges_its_history(store: Store) -> None:
    for device in ("keep", "purge"):
        store.save_device(Device(device, "edge", {}, T0, T0, "t1"))
        await store.write([rec(device, T0 + i, i) for i in range(3)])
    assert await store.delete_device("keep", purge=False) == 0
    assert await store.delete_device("purge", purge=True) == 3
    assert await store.get_device("keep") is None and await store.get_device("purge") is None
    assert len(await store.query_range("keep", T0, T0 + 10, 10)) == 3
    assert await store.query_range("purge", T0, T0 + 10, 10) == []


# ---- documents: compare-and-set on "version" -----------------------------------------------

async def test_swap_doc_is_compare_and_set_on_the_version(store: Store) -> None:
    first = {"version": 1, "name": "first"}
    assert await store.swap_doc("tenant", "t1", first, None)  # absent: the creator wins
    assert not await store.swap_doc("tenant", "t1", {"version": 1, "name": "again"}, None)
    assert await store.get_doc("tenant", "t1") == first
    # A wrong version loses and writes nothing.
    assert not await store.swap_doc("tenant", "t1", {"version": 3, "name": "skip"}, 2)
    assert not await store.swap_doc("tenant", "t1", {"version": 1, "name": "same"}, 0)
    assert await store.get_doc("tenant", "t1") == first
    # The right version wins once; the loser of that race, still holding version 1, loses.
    second = {"version": 2, "name": "second"}
    assert await store.swap_doc("tenant", "t1", second, 1)
    assert not await store.swap_doc("tenant", "t1", {"version": 2, "name": "late"}, 1)
    assert await store.get_doc("tenant", "t1") == second
    # Absent with a version to expect: nothing to swap, nothing written.
    assert not await store.swap_doc("tenant", "missing", {"version": 1}, 0)
    assert await store.get_doc("tenant", "missing") is None
    # The same key of another kind is another document.
    assert await store.swap_doc("user", "t1", {"version": 7}, None)
    assert await store.list_docs("tenant") == [("t1", second)]


async def test_swap_doc_only_matches_a_numeric_version(store: Store) -> None:
    await store.put_doc("tenant", "none", {"name": "no version"})
    await store.put_doc("tenant", "bool", {"version": True})
    await store.put_doc("tenant", "text", {"version": "1"})
    await store.put_doc("tenant", "float", {"version": 1.0})
    assert not await store.swap_doc("tenant", "none", {"version": 1}, 0)
    assert not await store.swap_doc("tenant", "bool", {"version": 2}, 1)
    assert not await store.swap_doc("tenant", "text", {"version": 2}, 1)
    assert await store.swap_doc("tenant", "float", {"version": 2}, 1)  # JSON: 1.0 is 1
    assert await store.get_doc("tenant", "bool") == {"version": True}
    assert await store.get_doc("tenant", "text") == {"version": "1"}
    assert await store.get_doc("tenant", "float") == {"version": 2}


async def test_concurrent_swaps_of_two_postgres_instances_have_one_winner(pg_url: str) -> None:
    """Two stores on one database (two instances) race 24 swaps from the same version, five
    rounds (the first from absent): each round exactly one wins, and its document is stored."""
    stores = [PostgresStore(pg_url, pool_size=8), PostgresStore(pg_url, pool_size=8)]
    for s in stores:
        await s.start()
    try:
        for round_ in range(5):
            expected = None if round_ == 0 else round_
            attempts = [
                stores[i % 2].swap_doc("tenant", "t", {"version": round_ + 1, "by": i}, expected)
                for i in range(24)
            ]
            won = await asyncio.gather(*attempts)
            assert sum(won) == 1, f"round {round_}: {sum(won)} winners"
            stored = await stores[1].get_doc("tenant", "t")
            assert stored is not None and stored["version"] == round_ + 1
            assert won[stored["by"]]
    finally:
        for s in stores:
            await s.close()
