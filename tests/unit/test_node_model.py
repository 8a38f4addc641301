"""The edge node is honest: its power ramps, its state of charge stays within its limits (with
partial power at a limit), commands hold and ``auto`` resumes the daily routine, and the same
seed gives the same values."""

from __future__ import annotations

import random

from fieldlink.simulator.model import (
    DAY_MS,
    HOUR_MS,
    Battery,
    NodeModel,
    device_id,
    simulated_history,
)

HOST = {"cpu": 10.0, "ram": 20.0, "disk": 30.0}
MIDNIGHT_MS = 1_764_028_800_000  # 2025-11-25 00:00 UTC
ROUNDING_KW = 0.0005  # reported power is rounded to 3 decimals


def node(soc: float = 50.0, ramp_kw_per_s: float | None = None) -> NodeModel:
    """A 10 kW / 20 kWh node, commanded by the test (not in auto mode)."""
    battery = Battery(capacity_kw=10.0, battery_kwh=20.0, soc=soc, ramp_kw_per_s=ramp_kw_per_s)
    model = NodeModel("n-1", random.Random(1), battery)
    model.auto_dispatch = False
    return model


def powers(model: NodeModel, steps: int, dt_s: float, start_ms: int = MIDNIGHT_MS) -> list[float]:
    dt_ms = int(dt_s * 1000)
    return [model.step(dt_s, HOST, start_ms + i * dt_ms)["power_kw"] for i in range(steps)]


def test_default_ramp_is_zero_to_full_in_four_seconds() -> None:
    model = node()
    assert model.execute("setpoint", {"kw": 10.0})[1] == {"mode": "charge", "setpoint_kw": 10.0}
    assert powers(model, 3, 1.0) == [2.5, 5.0, 7.5]  # capacity / 4 per second
    assert abs(powers(model, 1, 1.0)[0] - 10.0) < 0.5  # there, give or take the noise


def test_power_changes_at_most_ramp_times_dt_per_step() -> None:
    model = node(ramp_kw_per_s=0.7)
    history = [0.0]
    for kw, dt_s in ((10.0, 2.0), (-10.0, 0.5), (-10.0, 3.0), (4.0, 3.0), (0.0, 1.0), (-3.0, 5.0)):
        model.execute("setpoint", {"kw": kw})
        for p in powers(model, 20, dt_s):
            assert abs(p - history[-1]) <= 0.7 * dt_s + ROUNDING_KW
            history.append(p)
    assert max(history) > 9.0 and min(history) < -9.0  # it did get there in the end


def test_soc_never_leaves_its_limits_and_power_is_zero_once_pinned() -> None:
    model = node(soc=50.0)
    model.execute("setpoint", {"kw": 10.0})
    records = [model.step(60.0, HOST, MIDNIGHT_MS + i * 60_000) for i in range(200)]
    assert all(10.0 <= r["soc"] <= 95.0 for r in records)
    assert records[-1]["soc"] == 95.0
    assert all(r["power_kw"] == 0.0 and r["battery"] == "idle" for r in records[-50:])

    model.execute("discharge", {"setpoint_kw": 10.0})
    records = [model.step(60.0, HOST, MIDNIGHT_MS + i * 60_000) for i in range(400)]
    assert all(10.0 <= r["soc"] <= 95.0 for r in records)
    assert records[-1]["soc"] == 10.0
    assert all(r["power_kw"] == 0.0 for r in records[-50:])


def test_partial_power_lands_on_the_limit() -> None:
    # 0.1 % of 20 kWh in 60 s is 1.2 kW: it delivers that, not the 10 kW it was asked for.
    model = node(soc=94.9, ramp_kw_per_s=100.0)
    model.execute("setpoint", {"kw": 10.0})
    assert powers(model, 2, 60.0) == [1.2, 0.0]
    assert model.battery.soc == 95.0

    model = node(soc=10.05, ramp_kw_per_s=100.0)
    model.execute("setpoint", {"kw": -10.0})
    assert powers(model, 2, 60.0) == [-0.6, 0.0]
    assert model.battery.soc == 10.0


def test_a_node_outside_its_limits_only_moves_back() -> None:
    model = node(soc=99.0)
    model.execute("setpoint", {"kw": 5.0})
    assert set(powers(model, 5, 5.0)) == {0.0}
    model.execute("setpoint", {"kw": -5.0})
    assert all(p < 0 for p in powers(model, 5, 5.0))


def test_setpoints_are_clamped_and_zero_idles_and_holds() -> None:
    model = node()
    assert model.execute("setpoint", {"kw": -1e6})[1] == {"mode": "discharge", "setpoint_kw": 10.0}
    assert min(powers(model, 10, 5.0)) >= -10.0
    assert model.execute("setpoint", {"kw": 0}) == (True, {"mode": "idle", "setpoint_kw": 0.0})
    # Through the midday hours, when the routine would charge: it holds idle.
    assert set(powers(model, 200, 60.0, MIDNIGHT_MS + 11 * HOUR_MS)) == {0.0}
    assert not model.auto_dispatch


def test_auto_resumes_the_daily_routine() -> None:
    model = NodeModel.create(device_id(1), seed=3)
    model.battery.soc = 30.0
    model.execute("setpoint", {"kw": 0})
    assert not model.auto_dispatch
    assert model.execute("auto", {}) == (True, {"mode": "auto"})
    assert model.auto_dispatch
    midday = powers(model, 120, 60.0, MIDNIGHT_MS + 11 * HOUR_MS)  # 11-13 h
    assert sum(midday) > 0  # it stores the solar surplus


def test_auto_mode_near_soc_min_does_not_discharge() -> None:
    model = NodeModel.create(device_id(2), seed=3)
    model.battery.soc = model.battery.soc_min + 1.0
    evening = powers(model, 240, 60.0, MIDNIGHT_MS + 17 * HOUR_MS)  # 17-21 h, the peak
    assert all(p >= 0 for p in evening)
    assert model.battery.soc >= model.battery.soc_min


def test_fleet_follows_the_day_and_days_differ() -> None:
    history = simulated_history(20, 3, 300.0, seed=1, start_ms=MIDNIGHT_MS)
    assert len(history) == 3 * 96
    by_day = [[kw for ts, kw in history if (ts - MIDNIGHT_MS) // DAY_MS == d] for d in range(3)]
    for day in by_day:  # 15-minute buckets: slot 4h = hour h
        midday = sum(day[11 * 4 : 14 * 4]) / 12
        evening = sum(day[18 * 4 : 20 * 4]) / 8
        late = sum(abs(kw) for kw in day[22 * 4 :]) / 8
        assert midday > 0 > evening
        assert late < 0.1 * min(midday, -evening)
    assert by_day[0] != by_day[1] != by_day[2]


def test_same_seed_same_history_other_seed_other_history() -> None:
    a = simulated_history(5, 0.5, 60.0, seed=4, start_ms=MIDNIGHT_MS, warmup_days=0.1)
    b = simulated_history(5, 0.5, 60.0, seed=4, start_ms=MIDNIGHT_MS, warmup_days=0.1)
    c = simulated_history(5, 0.5, 60.0, seed=5, start_ms=MIDNIGHT_MS, warmup_days=0.1)
    assert a == b
    assert a != c
