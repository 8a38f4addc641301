"""Alert rules (pure): their shape and validation, and the evaluator that turns readings into
raise / escalate / clear transitions.

A rule watches one metric of the devices in its scope (one device, one kind, or a whole
tenant) and compares it (``>``, ``>=``, ``<``, ``<=``) with one threshold per level, from the
mildest to the most severe (``alarm_level_1`` < ``alarm_level_2`` for ``>``). A reading
breaches the most severe level whose threshold it passes. An alert is raised when a breach
has lasted ``for_s`` (0: at once) and escalates to a more severe level the same way; it never
de-escalates, and it clears only once the value is back past the ``clear`` threshold
(hysteresis: ``clear`` lies on the safe side of the first level).

``evaluate`` is the one evaluator: the live path (services/alerts.py) and the backtest feed it
the same way, so they raise the same alerts for the same records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fieldlink.core.errors import ValidationError
from fieldlink.core.model import is_valid_device_id

LEVEL_NAME_RE = re.compile(r"alarm_level_[1-9][0-9]?")
NAMED_LEVELS = ("info", "warning", "minor", "major", "critical")
METRIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
MAX_LEVELS = 10
MAX_FOR_S = 86_400


class Op(StrEnum):
    GT = ">"
    GTE = ">="
    LT = "<"
    LTE = "<="

    @property
    def upward(self) -> bool:
        """True when larger values are worse."""
        return self in (Op.GT, Op.GTE)

    def breached(self, value: float, threshold: float) -> bool:
        if self is Op.GT:
            return value > threshold
        if self is Op.GTE:
            return value >= threshold
        if self is Op.LT:
            return value < threshold
        return value <= threshold


class ScopeKind(StrEnum):
    DEVICE = "device"
    KIND = "kind"
    TENANT = "tenant"


@dataclass(frozen=True, slots=True)
class Level:
    name: str
    threshold: float


@dataclass(frozen=True, slots=True)
class AlertRule:
    id: str
    tenant_id: str
    metric: str
    op: Op
    levels: tuple[Level, ...]  # mildest first
    clear: float
    for_ms: int = 0
    scope: ScopeKind = ScopeKind.TENANT
    scope_value: str = ""  # the device id or the kind; empty for the tenant
    name: str = ""

    def applies_to(self, tenant_id: str, device_id: str, kind: str) -> bool:
        if tenant_id != self.tenant_id:
            return False
        if self.scope is ScopeKind.DEVICE:
            return device_id == self.scope_value
        if self.scope is ScopeKind.KIND:
            return kind == self.scope_value
        return True

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "tenant": self.tenant_id,
            "metric": self.metric,
            "op": str(self.op),
            "levels": [{"name": lv.name, "threshold": lv.threshold} for lv in self.levels],
            "clear": self.clear,
            "for_s": self.for_ms / 1000,
            "scope": {"type": str(self.scope), "value": self.scope_value}
            if self.scope_value
            else {"type": str(self.scope)},
        }
        if self.name:
            body["name"] = self.name
        return body


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("invalid_number", "must be a number", path)
    if value != value or value in (float("inf"), float("-inf")) or abs(value) >= 1e300:
        raise ValidationError("invalid_number", "must be a finite number", path)
    return float(value)


def parse_rule(obj: Any, *, rule_id: str, tenant_id: str) -> AlertRule:
    """A rule from its JSON shape (REST, config file); ``ValidationError`` with the field path:
    ``{"metric", "op", "levels": [{"name", "threshold"}, ...], "clear", "for_s"?,
    "scope"?: {"type": "device"|"kind"|"tenant", "value"?}, "name"?}``."""
    if not isinstance(obj, dict):
        raise ValidationError("invalid_rule", "a rule is a JSON object")
    metric = obj.get("metric")
    if not isinstance(metric, str) or not METRIC_RE.fullmatch(metric):
        raise ValidationError("invalid_metric", "metric must be a metric name", "$.metric")
    try:
        op = Op(obj.get("op", ">"))
    except ValueError:
        raise ValidationError("invalid_op", "op is one of > >= < <=", "$.op") from None
    raw_levels = obj.get("levels")
    if not isinstance(raw_levels, list) or not 1 <= len(raw_levels) <= MAX_LEVELS:
        raise ValidationError(
            "invalid_levels", f"levels is a list of 1 to {MAX_LEVELS} levels", "$.levels"
        )
    levels: list[Level] = []
    for i, raw in enumerate(raw_levels):
        path = f"$.levels[{i}]"
        if not isinstance(raw, dict):
            raise ValidationError("invalid_level", "a level is {name, threshold}", path)
        name = raw.get("name")
        if not isinstance(name, str) or not (LEVEL_NAME_RE.fullmatch(name) or name in NAMED_LEVELS):
            raise ValidationError(
                "unknown_level",
                f"level names are alarm_level_1, alarm_level_2, ... or {', '.join(NAMED_LEVELS)}",
                f"{path}.name",
            )
        if any(level.name == name for level in levels):
            raise ValidationError("duplicate_level", f"level {name} appears twice", f"{path}.name")
        threshold = _number(raw.get("threshold"), f"{path}.threshold")
        if levels and not op.breached(threshold, levels[-1].threshold):
            raise ValidationError(
                "inverted_thresholds",
                f"each level must be more severe than the one before (for {op}, "
                + ("higher" if op.upward else "lower")
                + " thresholds)",
                f"{path}.threshold",
            )
        levels.append(Level(name, threshold))
    clear = _number(obj.get("clear", levels[0].threshold), "$.clear")
    if op.breached(clear, levels[0].threshold):
        raise ValidationError(
            "inverted_thresholds",
            "clear must lie on the safe side of the first level's threshold",
            "$.clear",
        )
    for_s = obj.get("for_s", 0)
    if isinstance(for_s, bool) or not isinstance(for_s, int | float) or not 0 <= for_s <= MAX_FOR_S:
        raise ValidationError("invalid_duration", f"for_s is 0 to {MAX_FOR_S} seconds", "$.for_s")
    scope, scope_value = _scope(obj.get("scope", {"type": "tenant"}))
    name = obj.get("name", "")
    if not isinstance(name, str) or len(name) > 200:
        raise ValidationError("invalid_name", "name is a string of up to 200 characters", "$.name")
    return AlertRule(
        rule_id,
        tenant_id,
        metric,
        op,
        tuple(levels),
        clear,
        int(for_s * 1000),
        scope,
        scope_value,
        name,
    )


def _scope(raw: Any) -> tuple[ScopeKind, str]:
    if not isinstance(raw, dict):
        raise ValidationError("invalid_scope", "scope is {type, value}", "$.scope")
    try:
        kind = ScopeKind(str(raw.get("type")))
    except ValueError:
        raise ValidationError(
            "invalid_scope", "scope.type is device, kind or tenant", "$.scope.type"
        ) from None
    if kind is ScopeKind.TENANT:
        return kind, ""
    value = raw.get("value")
    if not is_valid_device_id(value):
        raise ValidationError("invalid_scope", f"scope.value must name the {kind}", "$.scope.value")
    return kind, str(value)


# ---- evaluation -----------------------------------------------------------------------------


class Move(StrEnum):
    RAISE = "raise"
    ESCALATE = "escalate"
    CLEAR = "clear"


@dataclass(slots=True)
class RuleState:
    """Where one (rule, device) pair stands: ``level`` -1 while no alert is open;
    ``pending_level`` -1 unless a breach is waiting out ``for_s``."""

    level: int = -1
    pending_level: int = -1
    pending_since_ms: int = 0
    last_ts_ms: int = 0


@dataclass(frozen=True, slots=True)
class Transition:
    move: Move
    level: int  # the level index after the move (-1 for a clear)
    value: float
    ts_ms: int


@dataclass(frozen=True, slots=True)
class RuleGroup:
    """The rules of one tenant over one metric, with the loosest first-level thresholds, so
    that a reading no rule could act on is passed over with two comparisons."""

    rules: tuple[AlertRule, ...]
    up_floor: float  # an upward rule may breach at or above this (inf when none)
    down_ceiling: float  # a downward rule may breach at or below this (-inf when none)

    @classmethod
    def of(cls, rules: Sequence[AlertRule]) -> RuleGroup:
        up = [r.levels[0].threshold for r in rules if r.op.upward]
        down = [r.levels[0].threshold for r in rules if not r.op.upward]
        return cls(tuple(rules), min(up, default=math.inf), max(down, default=-math.inf))

    def might_breach(self, value: float) -> bool:
        """False when the value breaches no rule's mildest level (a device with no open or
        pending alert on these rules then needs no evaluation)."""
        return value >= self.up_floor or value <= self.down_ceiling


def breach_level(rule: AlertRule, value: float) -> int:
    """The most severe level the value breaches, -1 for none."""
    op = rule.op
    level = -1
    for i, lv in enumerate(rule.levels):
        if not op.breached(value, lv.threshold):
            break
        level = i
    return level


def cleared(rule: AlertRule, value: float) -> bool:
    """Back past the clear threshold, on the safe side (the threshold itself included)."""
    return value <= rule.clear if rule.op.upward else value >= rule.clear


def evaluate(rule: AlertRule, state: RuleState, value: float, ts_ms: int) -> Transition | None:
    """Feed one reading, in time order (an older one is ignored). Returns the transition it
    causes, if any, and updates ``state``."""
    if ts_ms < state.last_ts_ms:
        return None
    state.last_ts_ms = ts_ms
    if state.level >= 0 and cleared(rule, value):
        state.level = state.pending_level = -1
        return Transition(Move.CLEAR, -1, value, ts_ms)
    target = breach_level(rule, value)
    if target <= state.level:  # nothing new; while open, hysteresis keeps the level
        state.pending_level = -1  # a more severe breach must be continuous to count
        return None
    if rule.for_ms > 0:
        if state.pending_level < 0:
            state.pending_level, state.pending_since_ms = target, ts_ms
            return None
        state.pending_level = min(state.pending_level, target)  # the level held throughout
        if ts_ms - state.pending_since_ms < rule.for_ms:
            return None
        target = state.pending_level
    move = Move.RAISE if state.level < 0 else Move.ESCALATE
    state.level, state.pending_level = target, -1
    return Transition(move, target, value, ts_ms)
