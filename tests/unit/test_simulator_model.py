"""The simulator's battery model is pure and seeded (no event loop here)."""

from __future__ import annotations

from fieldlink.core.codec import validate_record
from fieldlink.simulator.model import NodeModel, device_id

HOST = {"cpu": 10.0, "ram": 20.0, "disk": 30.0}
NOW_MS = 1_764_000_000_000


def run(model: NodeModel, steps: int) -> list[dict]:  # type: ignore[type-arg]
    return [model.step(5.0, HOST, NOW_MS + i * 5000) for i in range(steps)]


def test_same_seed_same_values_other_seed_other_values() -> None:
    a = run(NodeModel.create("sim-001", seed=7), 50)
    b = run(NodeModel.create("sim-001", seed=7), 50)
    c = run(NodeModel.create("sim-001", seed=8), 50)
    assert a == b
    assert [r["power_kw"] for r in a] != [r["power_kw"] for r in c]


def test_soc_integrates_power_and_stays_in_range() -> None:
    model = NodeModel.create("sim-002", seed=3)
    kwh = model.battery.battery_kwh
    soc = model.battery.soc
    for i in range(2000):
        record = model.step(5.0, HOST, NOW_MS + i * 5000)
        expected = min(100.0, max(0.0, soc + record["power_kw"] * 5.0 / 3600.0 / kwh * 100.0))
        assert abs(record["soc"] - expected) < 0.01
        assert 0.0 <= record["soc"] <= 100.0
        assert abs(record["power_kw"]) <= model.battery.capacity_kw
        soc = model.battery.soc


def test_commands_hook_holds_mode_and_clamps_setpoint() -> None:
    model = NodeModel.create("sim-003", seed=1)
    model.battery.soc = 50.0
    model.set_mode("discharge", 10_000.0)
    records = run(model, 5)
    assert all(r["power_kw"] < 0 and r["battery"] == "discharging" for r in records)
    assert all(abs(r["power_kw"]) <= model.battery.capacity_kw for r in records)


def test_records_pass_the_hub_codec() -> None:
    model = NodeModel.create(device_id(1), seed=1)
    for record in run(model, 3):
        validated = validate_record(record, now_ms=NOW_MS + 60_000, device_id=model.device_id)
        assert validated.seq == record["seq"]
        assert validated.meta == {"capacity_kw": model.battery.capacity_kw,
                                  "battery_kwh": model.battery.battery_kwh}
        assert set(validated.metrics) == {"power_kw", "soc", "freq", "cpu", "ram", "disk", "battery"}
    assert device_id(12) == "sim-012"
