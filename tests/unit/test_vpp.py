"""The virtual power plant's pure core (core/vpp.py): how a dispatch is split across nodes and
how the fleet aggregate is summed. Property tests over seeded random fleets (hypothesis is not
installed here): each case is generated from ``random.Random(case)``, so a failure names the
case that reproduces it, and the bounds are computed here from the nodes' own numbers, not
with the module's helpers."""

from __future__ import annotations

import math
import random

import pytest

from fieldlink.core.vpp import Node, SocLimits, aggregate, allocate

NOW_MS = 1_764_000_000_000
CASES = 600
ROUNDING_KW = 0.0005  # shares are rounded to 3 decimals: one share may be this much above


def random_node(rng: random.Random, index: int, *, readings: bool = True) -> Node:
    """A node of random size and state; about one in eight offline, one in ten without a
    SoC reading, some with an empty battery record (0 kWh) or outside the SoC limits."""
    capacity = rng.choice((0.5, 3.0, 5.0, 10.0, 25.0, 50.0, rng.uniform(0.1, 100.0)))
    battery = rng.choice((0.0, capacity, capacity * 2, capacity * 4, rng.uniform(0.1, 400.0)))
    soc = rng.choice((rng.uniform(0.0, 100.0), rng.uniform(9.0, 12.0), rng.uniform(93.0, 97.0)))
    has_soc = readings and rng.random() > 0.1
    return Node(
        device_id=f"n{index:03d}",
        capacity_kw=capacity,
        battery_kwh=battery,
        power_kw=rng.uniform(-capacity, capacity) if readings else None,
        soc=soc if has_soc else None,
        ts_ms=NOW_MS - rng.randint(0, 120_000) if readings else None,
        online=rng.random() > 0.125,
        group=rng.choice(("", "north", "south")),
    )


def random_fleet(rng: random.Random) -> list[Node]:
    return [random_node(rng, i) for i in range(rng.randint(0, 25))]


def own_headroom(node: Node, discharge: bool, duration_s: float, limits: SocLimits) -> float:
    """What a node can give, from first principles: its capacity, and the energy between its
    SoC and the limit in the dispatch's direction spread over the duration."""
    if not node.online or node.soc is None or node.battery_kwh <= 0:
        return 0.0
    pct = node.soc - limits.min_pct if discharge else limits.max_pct - node.soc
    energy_kwh = pct / 100.0 * node.battery_kwh
    return max(0.0, min(node.capacity_kw, energy_kwh * 3600.0 / duration_s))


def energy_room_kwh(node: Node, discharge: bool, limits: SocLimits) -> float:
    assert node.soc is not None
    pct = node.soc - limits.min_pct if discharge else limits.max_pct - node.soc
    return pct / 100.0 * node.battery_kwh


def check_allocation(
    case: int,
    nodes: list[Node],
    target_kw: float,
    duration_s: float,
    limits: SocLimits,
    exclude: set[str],
    reserved: dict[str, float],
) -> None:
    discharge = target_kw > 0
    plan = allocate(target_kw, duration_s, nodes, limits, exclude=exclude, reserved=reserved)
    by_id = {n.device_id: n for n in nodes}
    room = {
        n.device_id: own_headroom(n, discharge, duration_s, limits) - reserved.get(n.device_id, 0)
        for n in nodes
        if n.device_id not in exclude
    }
    available = sum(v for v in room.values() if v > 0)
    where = f"case {case}: target {target_kw} for {duration_s} s"
    for device_id, share in plan.setpoints.items():
        node = by_id[device_id]
        assert device_id not in exclude, f"{where}: excluded {device_id} got {share}"
        assert node.online and node.soc is not None, f"{where}: {node} got {share}"
        assert share > 0, f"{where}: {device_id} listed with {share}"
        # never above its capacity, less what it already gives (reserved)
        taken = reserved.get(device_id, 0.0)
        assert share + taken <= node.capacity_kw + ROUNDING_KW, f"{where}: {node} {share}"
        # never past its SoC limit over the duration (charge: soc_max, discharge: soc_min)
        energy = (share + taken) * duration_s / 3600.0
        limit = energy_room_kwh(node, discharge, limits)
        assert energy <= limit + ROUNDING_KW * duration_s / 3600.0 + 1e-9, (
            f"{where}: {node} asked for {share} kW (+{taken} reserved) = {energy} kWh, "
            f"has {limit} kWh before its limit"
        )
    wanted = abs(target_kw)
    expected = min(wanted, available)
    participants = {k for k, v in room.items() if v > 0}
    # each node's share is rounded to watts, and one that rounds to nothing is left out
    slack = ROUNDING_KW * max(1, len(participants)) + 1e-9
    assert math.isclose(sum(plan.setpoints.values()), expected, abs_tol=slack), (
        f"{where}: shares sum to {sum(plan.setpoints.values())}, expected {expected}"
    )
    assert math.isclose(plan.allocated_kw, sum(plan.setpoints.values()), abs_tol=1e-9)
    # the shortfall is what the headroom cannot give (the shares' rounding to watts is not one)
    assert math.isclose(plan.shortfall_kw, max(0.0, wanted - available), abs_tol=1e-9)
    # every node with room takes part, in proportion to its room
    if expected > 0:
        ratio = min(1.0, wanted / available)
        for device_id in participants:
            share = plan.setpoints.get(device_id, 0.0)
            assert math.isclose(share, room[device_id] * ratio, abs_tol=ROUNDING_KW + 1e-9), (
                f"{where}: {device_id} got {share}, its room is {room[device_id]}"
            )


def test_allocation_stays_within_capacity_and_soc_limits_on_random_fleets() -> None:
    splits = shortfalls = charges = 0
    for case in range(CASES):
        rng = random.Random(case)
        nodes = random_fleet(rng)
        limits = rng.choice((SocLimits(), SocLimits(20.0, 80.0), SocLimits(5.0, 100.0)))
        duration_s = rng.choice((1.0, 30.0, 900.0, 3600.0, 86_400.0, rng.uniform(1, 10_000)))
        sign = rng.choice((1.0, -1.0))
        target_kw = sign * rng.choice((0.001, rng.uniform(0.1, 50.0), rng.uniform(50, 2000)))
        check_allocation(case, nodes, target_kw, duration_s, limits, set(), {})
        plan = allocate(target_kw, duration_s, nodes, limits)
        splits += len(plan.setpoints) > 1
        shortfalls += plan.shortfall_kw > 0.01
        charges += target_kw < 0 and bool(plan.setpoints)
    # the generator reaches every regime the properties talk about
    assert splits > CASES // 3 and shortfalls > CASES // 10 and charges > CASES // 10


def test_exclusions_and_reservations_on_random_fleets() -> None:
    for case in range(CASES):
        rng = random.Random(10_000 + case)
        nodes = random_fleet(rng)
        limits = SocLimits()
        duration_s = rng.choice((30.0, 900.0, 3600.0))
        target_kw = rng.choice((1.0, -1.0)) * rng.uniform(0.1, 300.0)
        exclude = {n.device_id for n in nodes if rng.random() < 0.2}
        discharge = target_kw > 0
        reserved = {
            n.device_id: rng.uniform(0.0, 1.2) * own_headroom(n, discharge, duration_s, limits)
            for n in nodes
            if rng.random() < 0.4
        }
        check_allocation(case, nodes, target_kw, duration_s, limits, exclude, reserved)


def test_charge_respects_soc_max_and_discharge_soc_min() -> None:
    limits = SocLimits(10.0, 95.0)
    full = Node("full", 10.0, 20.0, 0.0, 95.0, NOW_MS, True)
    empty = Node("empty", 10.0, 20.0, 0.0, 10.0, NOW_MS, True)
    # 1 % of 20 kWh = 0.2 kWh: over one hour that is 0.2 kW
    nearly_full = Node("nearly_full", 10.0, 20.0, 0.0, 94.0, NOW_MS, True)
    nearly_empty = Node("nearly_empty", 10.0, 20.0, 0.0, 11.0, NOW_MS, True)
    fleet = [full, empty, nearly_full, nearly_empty]

    charge = allocate(-100.0, 3600.0, fleet, limits)
    assert charge.setpoints == {"empty": 10.0, "nearly_empty": 10.0, "nearly_full": 0.2}
    assert charge.shortfall_kw == pytest.approx(100.0 - 20.2)

    discharge = allocate(100.0, 3600.0, fleet, limits)
    assert discharge.setpoints == {"full": 10.0, "nearly_empty": 0.2, "nearly_full": 10.0}

    # a short dispatch: the energy allows more than the capacity, the capacity binds
    assert allocate(-100.0, 60.0, [nearly_full], limits).setpoints == {"nearly_full": 10.0}
    # the same node under stricter limits: past soc_max already, nothing to charge
    assert allocate(-5.0, 60.0, [nearly_full], SocLimits(10.0, 90.0)).setpoints == {}


def test_reserved_lowers_headroom_and_excluded_get_nothing() -> None:
    a = Node("a", 10.0, 100.0, 0.0, 50.0, NOW_MS, True)
    b = Node("b", 10.0, 100.0, 0.0, 50.0, NOW_MS, True)
    c = Node("c", 10.0, 100.0, 0.0, 50.0, NOW_MS, True)
    assert allocate(12.0, 60.0, [a, b, c]).setpoints == {"a": 4.0, "b": 4.0, "c": 4.0}
    # a already gives 8 of its 10 kW: it has 2 left, the others 10 each
    plan = allocate(11.0, 60.0, [a, b, c], reserved={"a": 8.0})
    assert plan.setpoints == {"a": 1.0, "b": 5.0, "c": 5.0}
    # fully reserved and excluded nodes take no part
    plan = allocate(30.0, 60.0, [a, b, c], exclude={"b"}, reserved={"a": 10.0})
    assert plan.setpoints == {"c": 10.0}
    assert plan.shortfall_kw == pytest.approx(20.0)
    # offline nodes and nodes without a SoC reading take no part either
    off = Node("off", 50.0, 100.0, 0.0, 50.0, NOW_MS, False)
    blind = Node("blind", 50.0, 100.0, 0.0, None, NOW_MS, True)
    assert allocate(5.0, 60.0, [off, blind, c]).setpoints == {"c": 5.0}


def expected_totals(nodes: list[Node], now_ms: int, max_age_ms: int) -> dict[str, float | None]:
    """The aggregate as plain sums over the nodes, written the obvious way."""
    with_power = [n for n in nodes if n.power_kw is not None]
    with_soc = [n for n in nodes if n.soc is not None]
    fresh = [n for n in nodes if n.ts_ms is not None and now_ms - n.ts_ms <= max_age_ms]
    capacity = sum(n.capacity_kw for n in nodes)
    energy_capacity = sum(n.battery_kwh for n in with_soc)
    energy = sum(n.soc / 100 * n.battery_kwh for n in with_soc)  # type: ignore[operator]
    return {
        "power_kw": sum(n.power_kw for n in with_power),  # type: ignore[misc]
        "capacity_total_kw": capacity,
        "capacity_online_kw": sum(n.capacity_kw for n in nodes if n.online),
        "energy_kwh": energy,
        "energy_capacity_kwh": energy_capacity,
        "soc": 100 * energy / energy_capacity if energy_capacity else None,
        "nodes_total": len(nodes),
        "nodes_online": sum(1 for n in nodes if n.online),
        "coverage": sum(n.capacity_kw for n in fresh) / capacity if capacity else 0.0,
    }


def test_aggregate_totals_are_plain_sums_on_random_fleets() -> None:
    partial = stale = 0
    for case in range(CASES):
        rng = random.Random(20_000 + case)
        nodes = [random_node(rng, i, readings=rng.random() > 0.15)
                 for i in range(rng.randint(0, 30))]
        max_age_ms = rng.choice((10_000, 60_000))
        got = aggregate(nodes, NOW_MS, max_age_ms)
        want = expected_totals(nodes, NOW_MS, max_age_ms)
        for name, value in want.items():
            actual = getattr(got, name)
            if value is None:
                assert actual is None, f"case {case}: {name} {actual}"
            else:
                assert math.isclose(actual, value, rel_tol=1e-9, abs_tol=1e-9), (
                    f"case {case}: {name} is {actual}, the sum is {value}"
                )
        assert 0.0 <= got.coverage <= 1.0
        assert got.ts_ms == NOW_MS
        shown = got.to_dict()
        assert shown["power_kw"] == round(want["power_kw"], 3)  # type: ignore[arg-type]
        assert shown["coverage"] == round(want["coverage"], 4)  # type: ignore[arg-type]
        assert shown["nodes_online"] == want["nodes_online"]
        partial += 0 < got.coverage < 1
        stale += any(n.ts_ms is not None and NOW_MS - n.ts_ms > max_age_ms for n in nodes)
    assert partial > CASES // 2 and stale > CASES // 2


def test_coverage_counts_fresh_capacity_only() -> None:
    fresh = Node("fresh", 30.0, 60.0, -10.0, 50.0, NOW_MS - 1_000, True)
    stale = Node("stale", 10.0, 20.0, -5.0, 40.0, NOW_MS - 61_000, True)
    never = Node("never", 10.0, 20.0, None, None, None, False)
    edge = Node("edge", 50.0, 100.0, 2.0, 60.0, NOW_MS - 60_000, True)  # exactly max age
    got = aggregate([fresh, stale, never, edge], NOW_MS, 60_000)
    assert got.coverage == pytest.approx((30.0 + 50.0) / 100.0)
    assert got.power_kw == pytest.approx(-13.0)  # a stale reading still counts in the sum
    assert (got.nodes_total, got.nodes_online) == (4, 3)
    assert got.capacity_online_kw == pytest.approx(90.0)
    assert aggregate([], NOW_MS, 60_000).coverage == 0.0


def test_no_node_is_listed_with_a_zero_share() -> None:
    """A node whose room rounds to 0.000 kW (SoC a hair above the limit) must not be part of
    the split: a listed node gets a setpoint command and a share in the dispatch log."""
    a = Node("a", 10.0, 100.0, 0.0, 50.0, NOW_MS, True)
    hair = Node("hair", 10.0, 1.0, 0.0, 10.00001, NOW_MS, True)  # 1e-7 kWh above soc_min
    plan = allocate(5.0, 3600.0, [a, hair])
    assert plan.setpoints == {"a": 5.0}
