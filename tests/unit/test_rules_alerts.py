"""Alert rules and the alert lifecycle, pure: validation with field paths, levels, hysteresis,
minimum duration, and the lifecycle's moves."""

from __future__ import annotations

import pytest

from fieldlink.core.alerts import AlertState, AlreadyCleared, acknowledged, cleared, escalated, raised
from fieldlink.core.errors import ValidationError
from fieldlink.core.rules import Move, Op, RuleGroup, RuleState, breach_level, evaluate, parse_rule

GAS = {"metric": "gas_ppm", "op": ">", "clear": 380,
       "levels": [{"name": "alarm_level_1", "threshold": 400}, {"name": "alarm_level_2", "threshold": 800}]}


def rule(**over: object):  # type: ignore[no-untyped-def]
    return parse_rule({**GAS, **over}, rule_id="r1", tenant_id="t1")


def test_a_valid_rule_parses_with_defaults() -> None:
    r = rule()
    assert (r.metric, r.op, r.clear, r.for_ms) == ("gas_ppm", Op.GT, 380.0, 0)
    assert [lv.name for lv in r.levels] == ["alarm_level_1", "alarm_level_2"]
    assert r.applies_to("t1", "any", "any") and not r.applies_to("t2", "any", "any")
    d = rule(scope={"type": "kind", "value": "gas_sensor"})
    assert d.applies_to("t1", "x", "gas_sensor") and not d.applies_to("t1", "x", "edge")
    low = parse_rule({"metric": "soc", "op": "<", "clear": 0.2, "levels": [
        {"name": "warning", "threshold": 0.15}, {"name": "critical", "threshold": 0.05}]},
        rule_id="r2", tenant_id="t1")
    assert low.op is Op.LT


@pytest.mark.parametrize(("over", "code", "path"), [
    ({"levels": [{"name": "red_alert", "threshold": 1}]}, "unknown_level", "$.levels[0].name"),
    ({"levels": [{"name": "alarm_level_1", "threshold": 800},
                 {"name": "alarm_level_2", "threshold": 400}]}, "inverted_thresholds",
     "$.levels[1].threshold"),
    ({"clear": 500}, "inverted_thresholds", "$.clear"),
    ({"metric": "bad metric!"}, "invalid_metric", "$.metric"),
    ({"op": "=="}, "invalid_op", "$.op"),
    ({"levels": []}, "invalid_levels", "$.levels"),
    ({"levels": [{"name": "alarm_level_1", "threshold": "high"}]}, "invalid_number",
     "$.levels[0].threshold"),
    ({"for_s": -1}, "invalid_duration", "$.for_s"),
    ({"scope": {"type": "planet"}}, "invalid_scope", "$.scope.type"),
    ({"scope": {"type": "device"}}, "invalid_scope", "$.scope.value"),
    ({"clear": float("nan")}, "invalid_number", "$.clear"),
])
def test_bad_rules_are_refused_with_the_field_path(over: dict[str, object], code: str, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        rule(**over)
    assert (caught.value.code, caught.value.path) == (code, path)


def feed(r, values: list[tuple[int, float]]) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    state = RuleState()
    out = []
    for ts, value in values:
        move = evaluate(r, state, value, ts)
        if move is not None:
            out.append((str(move.move), move.level))
    return out


def test_levels_escalation_and_hysteresis() -> None:
    r = rule()
    assert feed(r, [(1, 100), (2, 450), (3, 500), (4, 900), (5, 390), (6, 420), (7, 380),
                    (8, 370), (9, 410)]) == [
        ("raise", 0), ("escalate", 1), ("clear", -1), ("raise", 0)]


def test_minimum_duration_and_out_of_order_readings() -> None:
    r = rule(for_s=10)
    # 450 at 0 s, below at 5 s (reset), 450 from 6 s on: raised at 16 s, not before.
    assert feed(r, [(0, 450), (5_000, 100), (6_000, 450), (15_000, 460), (16_000, 470)]) == [
        ("raise", 0)]
    state = RuleState()
    assert evaluate(r, state, 450, 20_000) is None
    assert evaluate(r, state, 900, 10_000) is None  # older than the last: ignored


def test_lifecycle_moves() -> None:
    r = rule()
    state = RuleState()
    first = evaluate(r, state, 450, 1)
    assert first is not None and first.move is Move.RAISE
    alert = raised(r, "d1", "a1", first)
    assert (alert.state, alert.level, alert.threshold, alert.version) == (
        AlertState.ACTIVE, "alarm_level_1", 400, 1)
    acked = acknowledged(alert, "alice", "on it", 5)
    assert (acked.state, acked.acknowledged_by, acked.note, acked.version) == (
        AlertState.ACKNOWLEDGED, "alice", "on it", 2)
    assert acknowledged(acked, "bob", None, 6) is acked
    up = evaluate(r, state, 900, 7)
    assert up is not None
    worse = escalated(acked, r, up)
    assert (worse.state, worse.level, worse.version, worse.id) == (AlertState.ACTIVE, "alarm_level_2", 3, "a1")
    down = evaluate(r, state, 100, 9)
    assert down is not None and down.move is Move.CLEAR
    done = cleared(worse, down)
    assert (done.state, done.cleared_ms, done.version) == (AlertState.CLEARED, 9, 4)
    with pytest.raises(AlreadyCleared):
        acknowledged(done, "alice", None, 10)
    assert done.from_dict(done.to_dict()) == done


def test_a_rule_group_passes_over_only_readings_no_rule_could_act_on() -> None:
    up = parse_rule({"metric": "t", "op": ">", "clear": 40,
                     "levels": [{"name": "warning", "threshold": 50}]}, rule_id="u", tenant_id="t")
    up2 = parse_rule({"metric": "t", "op": ">=", "clear": 60,
                      "levels": [{"name": "warning", "threshold": 70}]}, rule_id="u2", tenant_id="t")
    down = parse_rule({"metric": "t", "op": "<", "clear": 15,
                       "levels": [{"name": "warning", "threshold": 10}]}, rule_id="d", tenant_id="t")
    group = RuleGroup.of([up, up2, down])
    for value in (-5.0, 0.0, 10.0, 10.5, 30.0, 49.9, 50.0, 50.1, 70.0, 1e9):
        breaches = any(breach_level(rule, value) >= 0 for rule in group.rules)
        # never skips a breach (the pre-check may let a non-breach through: 50 == floor)
        assert group.might_breach(value) or not breaches, value
    assert not group.might_breach(30.0)
    assert group.might_breach(9.0) and group.might_breach(50.5)
    assert not RuleGroup.of([]).might_breach(0.0)
