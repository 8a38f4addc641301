"""The alert lifecycle (pure): active -> acknowledged -> cleared, as a value and its moves.

An alert belongs to one (rule, device) pair while it is open. Escalation to a more severe
level updates the same alert and makes it ``active`` again (a worse level needs a new
acknowledgement); a clear ends it; the next crossing after a clear opens a new alert. Every
change bumps ``version``, so stores update alerts by compare-and-set.

    state          raise   escalate   acknowledge   clear
    (none)         active     -           -            -
    active           -      active    acknowledged  cleared
    acknowledged     -      active        -         cleared
    cleared          -        -           -            -
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from fieldlink.core.errors import Conflict
from fieldlink.core.rules import AlertRule, Transition


class AlertState(StrEnum):
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


OPEN = (AlertState.ACTIVE, AlertState.ACKNOWLEDGED)


class AlreadyCleared(Conflict):
    code = "alert_cleared"


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    tenant_id: str
    device_id: str
    rule_id: str
    metric: str
    level: str
    level_index: int
    state: AlertState
    value: float  # the reading that caused the last change
    threshold: float
    raised_ms: int
    updated_ms: int
    version: int = 1
    acknowledged_by: str | None = None
    acknowledged_ms: int | None = None
    note: str | None = None
    cleared_ms: int | None = None

    @property
    def open(self) -> bool:
        return self.state in OPEN

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "tenant": self.tenant_id,
            "device_id": self.device_id,
            "rule_id": self.rule_id,
            "metric": self.metric,
            "level": self.level,
            "level_index": self.level_index,
            "state": str(self.state),
            "value": self.value,
            "threshold": self.threshold,
            "raised": self.raised_ms,
            "updated": self.updated_ms,
            "version": self.version,
        }
        for key, name in (
            ("acknowledged_by", "acknowledged_by"),
            ("acknowledged_ms", "acknowledged"),
            ("note", "note"),
            ("cleared_ms", "cleared"),
        ):
            value = getattr(self, key)
            if value is not None:
                body[name] = value
        return body

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        return cls(
            id=d["id"],
            tenant_id=d["tenant"],
            device_id=d["device_id"],
            rule_id=d["rule_id"],
            metric=d["metric"],
            level=d["level"],
            level_index=int(d["level_index"]),
            state=AlertState(d["state"]),
            value=float(d["value"]),
            threshold=float(d["threshold"]),
            raised_ms=int(d["raised"]),
            updated_ms=int(d["updated"]),
            version=int(d.get("version", 1)),
            acknowledged_by=d.get("acknowledged_by"),
            acknowledged_ms=d.get("acknowledged"),
            note=d.get("note"),
            cleared_ms=d.get("cleared"),
        )


def raised(rule: AlertRule, device_id: str, alert_id: str, move: Transition) -> Alert:
    level = rule.levels[move.level]
    return Alert(
        id=alert_id,
        tenant_id=rule.tenant_id,
        device_id=device_id,
        rule_id=rule.id,
        metric=rule.metric,
        level=level.name,
        level_index=move.level,
        state=AlertState.ACTIVE,
        value=move.value,
        threshold=level.threshold,
        raised_ms=move.ts_ms,
        updated_ms=move.ts_ms,
    )


def escalated(alert: Alert, rule: AlertRule, move: Transition) -> Alert:
    level = rule.levels[move.level]
    return replace(
        alert,
        level=level.name,
        level_index=move.level,
        threshold=level.threshold,
        state=AlertState.ACTIVE,
        value=move.value,
        updated_ms=move.ts_ms,
        version=alert.version + 1,
    )


def cleared(alert: Alert, move: Transition) -> Alert:
    return replace(
        alert,
        state=AlertState.CLEARED,
        value=move.value,
        updated_ms=move.ts_ms,
        cleared_ms=move.ts_ms,
        version=alert.version + 1,
    )


def acknowledged(alert: Alert, who: str, note: str | None, now_ms: int) -> Alert:
    """``AlreadyCleared`` for a cleared alert; acknowledging twice keeps the first."""
    if alert.state is AlertState.CLEARED:
        raise AlreadyCleared(f"alert {alert.id} is cleared")
    if alert.state is AlertState.ACKNOWLEDGED:
        return alert
    return replace(
        alert,
        state=AlertState.ACKNOWLEDGED,
        acknowledged_by=who,
        acknowledged_ms=now_ms,
        note=note,
        updated_ms=max(alert.updated_ms, now_ms),
        version=alert.version + 1,
    )
