"""Alerts: rules from the config file and REST, evaluation of every record, the lifecycle in
the store, and an ``AlertChanged`` event per change.

Exactly once with several instances. Records of one device land on any instance (a shared
subscription splits them), but every ``TelemetryAccepted`` reaches every instance through the
bus. One instance at a time, the holder of the ``alerts`` lease in the store, evaluates every
record (its own and the others') against the rules; the others evaluate nothing. The store
keeps at most one open alert per (rule, device), so even two instances that both believed
they led (a lease handed over mid-flight) store one. A new leader starts from the open alerts
in the store; a breach that was waiting out ``for_s`` starts waiting again. While the bus is
down the leader sees only its own records (docs/alerts.md).

Hot path. Evaluation runs in the bus handler: per record, the rules of its tenant indexed by
metric; a reading that breaches nothing and has no open alert costs one comparison per rule
and allocates nothing. Transitions go to one writer task, in order; events follow the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fieldlink.core.access import Principal, can_read
from fieldlink.core.alerts import Alert, AlertState, acknowledged, cleared, escalated, raised
from fieldlink.core.errors import DependencyDown, FieldlinkError, NotFound, ValidationError
from fieldlink.core.events import AlertChanged, DomainEvent, RuleChanged, TelemetryAccepted
from fieldlink.core.measures import Measure, counter, measures_of
from fieldlink.core.model import Record
from fieldlink.core.rules import (
    AlertRule,
    Move,
    RuleGroup,
    RuleState,
    Transition,
    breach_level,
    evaluate,
    parse_rule,
)
from fieldlink.ports import Bus, Cache, Store
from fieldlink.services.registry import DeviceRegistry

log = logging.getLogger("fieldlink.alerts")

LEASE = "alerts"
RULE_DOC = "alert_rule"


def new_alert_id() -> str:
    return "al-" + secrets.token_hex(8)


def new_rule_id() -> str:
    return "rule-" + secrets.token_hex(6)


@dataclass(slots=True)
class AlertCounters:
    evaluated: int = counter("fieldlink_alerts_evaluations", "Readings checked against alert rules")
    raised: int = counter("fieldlink_alerts_raised", "Alerts raised (on this instance)")
    escalated: int = counter("fieldlink_alerts_escalated", "Alerts escalated to a worse level")
    cleared: int = counter("fieldlink_alerts_cleared", "Alerts cleared")
    acknowledged: int = counter("fieldlink_alerts_acknowledged", "Alerts acknowledged")
    store_conflicts: int = counter(
        "fieldlink_alerts_store_conflicts", "Alert writes that lost a race and were redone"
    )


class AlertService:
    def __init__(
        self,
        *,
        store: Store,
        bus: Bus,
        devices: DeviceRegistry,
        cache: Cache,
        clock_ms: Callable[[], int],
        instance_id: str,
        config_rules: Sequence[AlertRule] = (),
        lease_ttl_ms: int = 5_000,
    ) -> None:
        self.store = store
        self.bus = bus
        self.devices = devices
        self.cache = cache
        self.clock_ms = clock_ms
        self.instance_id = instance_id
        self.config_rules = tuple(config_rules)
        self.lease_ttl_ms = lease_ttl_ms
        self.counters = AlertCounters()
        self.rules: dict[str, AlertRule] = {}
        # tenant -> metric -> rules: the hot path's index
        self._index: dict[str, dict[str, RuleGroup]] = {}
        self.open: dict[str, Alert] = {}  # open alerts by id (every instance, from events)
        self._open_pairs: dict[tuple[str, str], Alert] = {}  # the same by (rule, device)
        self.leader = False
        self._states: dict[tuple[str, str], RuleState] = {}
        # (device, metric) pairs with a state under some rule: only these need a full
        # evaluation of a reading that breaches no first level
        self._watched: set[tuple[str, str]] = set()
        self._by_pair: dict[tuple[str, str], Alert] = {}  # the leader's open alert per pair
        self._moves: asyncio.Queue[tuple[AlertRule, str, Transition]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- start / stop -------------------------------------------------------------------

    async def load(self) -> None:
        for rule in self.config_rules:
            self._set_rule(rule)
        for key, doc in await self.store.list_docs(RULE_DOC):
            if not doc.get("deleted"):
                self._set_rule(parse_rule(doc["rule"], rule_id=key, tenant_id=doc["tenant"]))
        for alert in await self.store.open_alerts():
            self._remember(alert)

    def start(self) -> None:
        self._tasks = [
            asyncio.get_running_loop().create_task(self._write_moves()),
            asyncio.get_running_loop().create_task(self._lead()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leader:
            # Hand over at once on a clean stop: a lease renewed for 0 ms is free to take.
            self.leader = False
            with contextlib.suppress(FieldlinkError):
                await self.store.acquire_lease(LEASE, self.instance_id, 0, self.clock_ms())

    # ---- rules --------------------------------------------------------------------------

    def _set_rule(self, rule: AlertRule) -> None:
        self._drop_rule(rule.id)
        self.rules[rule.id] = rule
        self._reindex(rule.tenant_id, rule.metric)
        # A replaced rule keeps its open alerts: they clear or escalate under the new one.
        for (rule_id, device_id), alert in self._by_pair.items():
            if rule_id == rule.id:
                level = min(alert.level_index, len(rule.levels) - 1)
                self._keep_state(rule, device_id, RuleState(level=level))

    def _reindex(self, tenant_id: str, metric: str) -> None:
        by_metric = self._index.setdefault(tenant_id, {})
        rules = [r for r in self.rules.values() if r.tenant_id == tenant_id and r.metric == metric]
        if rules:
            by_metric[metric] = RuleGroup.of(rules)
        else:
            by_metric.pop(metric, None)

    def _keep_state(self, rule: AlertRule, device_id: str, state: RuleState) -> RuleState:
        self._states[(rule.id, device_id)] = state
        self._watched.add((device_id, rule.metric))
        return state

    def _forget_states(self) -> None:
        self._states.clear()
        self._watched.clear()

    def _drop_rule(self, rule_id: str) -> None:
        old = self.rules.pop(rule_id, None)
        if old is None:
            return
        self._reindex(old.tenant_id, old.metric)
        for key in [k for k in self._states if k[0] == rule_id]:
            del self._states[key]

    def rules_of(self, principal: Principal) -> list[AlertRule]:
        return sorted(
            (r for r in self.rules.values() if can_read(principal, r.tenant_id)), key=lambda r: r.id
        )

    def rule(self, rule_id: str, principal: Principal) -> AlertRule:
        rule = self.rules.get(rule_id)
        if rule is None or not can_read(principal, rule.tenant_id):
            raise NotFound(f"no alert rule {rule_id!r}")
        return rule

    def in_scope(self, rule: AlertRule) -> list[str]:
        """The registered devices a rule watches."""
        return sorted(d.id for d in self.devices if rule.applies_to(d.tenant_id, d.id, d.kind))

    async def known_metrics(self, device_ids: Sequence[str]) -> set[str]:
        """Metrics the devices reported lately (their latest readings), at most 50 looked at."""
        known: set[str] = set()
        for device_id in device_ids[:50]:
            record = self.cache.get_latest(device_id, self.clock_ms())
            if record is None:
                record = await self.store.latest(device_id)
            if record is not None:
                known.update(record.metrics)
        return known

    async def put_rule(self, obj: Any, tenant_id: str, rule_id: str | None = None) -> AlertRule:
        """Create (``rule_id`` None) or replace a rule; ``ValidationError`` with the path. A
        metric none of the devices in scope reports is refused (``unknown_metric``), unless
        no device in scope has reported anything yet."""
        rule = parse_rule(obj, rule_id=rule_id or new_rule_id(), tenant_id=tenant_id)
        known = await self.known_metrics(self.in_scope(rule))
        if known and rule.metric not in known:
            raise ValidationError(
                "unknown_metric",
                f"no device in scope reports {rule.metric!r} (they report "
                f"{', '.join(sorted(known)[:20])})",
                "$.metric",
            )
        await self.store.put_doc(RULE_DOC, rule.id, {"tenant": tenant_id, "rule": obj})
        self._set_rule(rule)
        self.bus.publish(RuleChanged(rule.id, tenant_id, obj))
        return rule

    async def delete_rule(self, rule_id: str) -> None:
        """Remove the rule; its open alerts are cleared (nothing would ever clear them)."""
        await self.store.put_doc(RULE_DOC, rule_id, {"deleted": True, "tenant": "", "rule": None})
        self._drop_rule(rule_id)
        self.bus.publish(RuleChanged(rule_id, "", None))
        now_ms = self.clock_ms()
        for alert in await self.store.list_alerts(states=["active", "acknowledged"], limit=100_000):
            if alert.rule_id != rule_id:
                continue
            done = cleared(alert, Transition(Move.CLEAR, -1, alert.value, now_ms))
            if await self.store.replace_alert(done, alert.version):
                self.counters.cleared += 1
                self._by_pair.pop((rule_id, alert.device_id), None)
                self._publish(done)

    # ---- the bus ------------------------------------------------------------------------

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler (every instance's events)."""
        if isinstance(event, TelemetryAccepted):
            if self.leader:
                self.check(event.record)
        elif isinstance(event, AlertChanged):
            alert = event.alert
            if alert.open:
                self._remember(alert)
            else:
                self._forget(alert)
            if self.leader and alert.open:
                current = self._by_pair.get((alert.rule_id, alert.device_id))
                if current is None or current.version < alert.version:
                    self._by_pair[(alert.rule_id, alert.device_id)] = alert
        elif isinstance(event, RuleChanged):  # (this instance's own ones too: idempotent)
            if event.rule is None:
                self._drop_rule(event.rule_id)
            else:
                self._set_rule(
                    parse_rule(event.rule, rule_id=event.rule_id, tenant_id=event.tenant_id)
                )

    def check(self, record: Record) -> None:
        """Evaluate one record against its tenant's rules (the leader's hot path)."""
        by_metric = self._index.get(record.tenant_id)
        if not by_metric:
            return
        states = self._states
        device_id = record.device_id
        kind: str | None = None
        watched = self._watched
        for metric, value in record.metrics.items():
            group = by_metric.get(metric)
            if group is None or value.__class__ not in (int, float):
                continue
            if not group.might_breach(value) and (device_id, metric) not in watched:
                # the common case: nothing breached and nothing open or pending
                self.counters.evaluated += len(group.rules)
                continue
            for rule in group.rules:
                if rule.scope_value:
                    if kind is None:
                        device = self.devices.get(device_id)
                        kind = device.kind if device is not None else record.kind
                    if not rule.applies_to(record.tenant_id, device_id, kind):
                        continue
                self.counters.evaluated += 1
                key = (rule.id, device_id)
                state = states.get(key)
                if state is None:
                    if breach_level(rule, value) < 0:
                        continue  # the common case: nothing breached, nothing open
                    state = self._keep_state(rule, device_id, RuleState())
                move = evaluate(rule, state, float(value), record.ts_ms)
                if move is not None:
                    self._moves.put_nowait((rule, device_id, move))

    # ---- leadership -----------------------------------------------------------------------

    async def _lead(self) -> None:
        """Hold the lease (renewed every third of its time); on gaining it, start from the
        open alerts in the store; on losing it, stop evaluating."""
        interval_s = self.lease_ttl_ms / 3000
        while True:
            try:
                held = await self.store.acquire_lease(
                    LEASE, self.instance_id, self.lease_ttl_ms, self.clock_ms()
                )
            except FieldlinkError as exc:
                log.warning("alert lease: %s", exc)
                held = False
            if held and not self.leader:
                try:
                    await self._take_over()
                except FieldlinkError as exc:
                    log.warning("alert leader could not load open alerts: %s", exc)
                    held = False
            elif not held and self.leader:
                log.warning("this instance no longer evaluates alerts (lease lost)")
                self.leader = False
                self._forget_states()
                self._by_pair.clear()
            await asyncio.sleep(interval_s)

    async def _take_over(self) -> None:
        self._forget_states()
        self._by_pair.clear()
        for alert in await self.store.open_alerts():
            self._remember(alert)
            self._by_pair[(alert.rule_id, alert.device_id)] = alert
            rule = self.rules.get(alert.rule_id)
            if rule is not None:
                self._keep_state(rule, alert.device_id, RuleState(level=alert.level_index))
        self.leader = True
        log.info("this instance evaluates alerts (%d open)", len(self._by_pair))

    # ---- writing transitions --------------------------------------------------------------

    async def _write_moves(self) -> None:
        while True:
            rule, device_id, move = await self._moves.get()
            for attempt in range(5):
                try:
                    if await self._apply(rule, device_id, move):
                        break
                    self.counters.store_conflicts += 1
                except DependencyDown as exc:
                    log.warning("alert write failed (attempt %d): %s", attempt + 1, exc)
                    await asyncio.sleep(0.5 * (attempt + 1))

    async def _apply(self, rule: AlertRule, device_id: str, move: Transition) -> bool:
        """Store one transition; True when done (or nothing to do), False to retry."""
        pair = (rule.id, device_id)
        current = self._by_pair.get(pair)
        if move.move is Move.RAISE or current is None:
            if move.move is Move.CLEAR:
                return True
            alert = raised(rule, device_id, new_alert_id(), move)
            if not await self.store.insert_alert(alert):
                stored = [
                    a
                    for a in await self.store.list_alerts(
                        device_id=device_id, states=["active", "acknowledged"]
                    )
                    if a.rule_id == rule.id
                ]
                if stored:
                    self._by_pair[pair] = stored[0]
                return not stored  # someone else has it open: adopt it and escalate next time
            self._by_pair[pair] = alert
            self.counters.raised += 1
            self._publish(alert)
            return True
        if move.move is Move.ESCALATE:
            changed = escalated(current, rule, move)
            counter = "escalated"
        else:
            changed = cleared(current, move)
            counter = "cleared"
        if not await self.store.replace_alert(changed, current.version):
            fresh = await self.store.get_alert(current.id)
            if fresh is None or not fresh.open:
                self._by_pair.pop(pair, None)
                return True
            self._by_pair[pair] = fresh
            return False
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        if changed.open:
            self._by_pair[pair] = changed
        else:
            self._by_pair.pop(pair, None)
        self._publish(changed)
        return True

    def _publish(self, alert: Alert) -> None:
        if alert.open:
            self._remember(alert)
        else:
            self._forget(alert)
        self.bus.publish(AlertChanged(alert))

    def _remember(self, alert: Alert) -> None:
        self.open[alert.id] = alert
        self._open_pairs[(alert.rule_id, alert.device_id)] = alert

    def _forget(self, alert: Alert) -> None:
        self.open.pop(alert.id, None)
        if self._open_pairs.get((alert.rule_id, alert.device_id), alert).id == alert.id:
            self._open_pairs.pop((alert.rule_id, alert.device_id), None)

    # ---- conditions observed by agents -------------------------------------------------------

    async def set_condition(
        self, rule: AlertRule, device_id: str, value: float, active: bool
    ) -> Alert | None:
        """A condition an agent observes (a node offline, its SoC out of bounds, a node not
        delivering its dispatch share) as an alert of a rule that readings never evaluate
        (ids ``vpp.*``): raised once while ``active``, cleared when it no longer is. Called by
        one instance at a time (the agents' leader). Returns the alert if it changed."""
        current = self._open_pairs.get((rule.id, device_id))
        now_ms = self.clock_ms()
        if active and current is None:
            alert = raised(
                rule, device_id, new_alert_id(), Transition(Move.RAISE, 0, value, now_ms)
            )
            if not await self.store.insert_alert(alert):
                return None
            self.counters.raised += 1
            self._publish(alert)
            return alert
        if not active and current is not None:
            done = cleared(current, Transition(Move.CLEAR, -1, value, now_ms))
            if not await self.store.replace_alert(done, current.version):
                return None
            self.counters.cleared += 1
            self._publish(done)
            return done
        return None

    # ---- operators ------------------------------------------------------------------------

    async def acknowledge(
        self, device_id: str, alert_id: str, principal: Principal, note: str | None
    ) -> Alert:
        """Acknowledge an open alert of a device the caller may read; 404 alike for unknown
        alerts, other devices' and other tenants'."""
        for _ in range(5):
            alert = await self.store.get_alert(alert_id)
            if (
                alert is None
                or alert.device_id != device_id
                or not can_read(principal, alert.tenant_id)
            ):
                raise NotFound(f"no alert {alert_id!r} for device {device_id!r}")
            done = acknowledged(alert, principal.subject, note, self.clock_ms())
            if done is alert:
                return alert
            if await self.store.replace_alert(done, alert.version):
                self.counters.acknowledged += 1
                self._publish(done)
                return done
            self.counters.store_conflicts += 1
        raise DependencyDown("the alert kept changing; try again")

    def open_alerts(
        self, tenant_id: str | None = None, device_id: str | None = None
    ) -> list[Alert]:
        """Open alerts as this instance knows them (snapshots), most severe and newest first."""
        return sorted(
            (
                a
                for a in self.open.values()
                if tenant_id in (None, a.tenant_id) and device_id in (None, a.device_id)
            ),
            key=lambda a: (-a.level_index, -a.updated_ms, a.id),
        )

    # ---- backtest -------------------------------------------------------------------------

    async def backtest(
        self, rule: AlertRule, device_ids: Sequence[str], start_ms: int, end_ms: int
    ) -> list[dict[str, Any]]:
        """The alerts ``rule`` would have raised over stored history, as the live path does
        (the same evaluator, record by record in time order per device)."""
        found: list[dict[str, Any]] = []
        for device_id in device_ids:
            records = await self.store.query_range(device_id, start_ms, end_ms, 1_000_000)
            found.extend(replay(rule, device_id, records))
        return sorted(found, key=lambda a: (a["raised"], a["device_id"]))

    def measures(self) -> Iterator[Measure]:
        yield from measures_of(self.counters)
        yield Measure(
            "fieldlink_alerts_open", "Open alerts (active or acknowledged)", "gauge", len(self.open)
        )
        yield Measure(
            "fieldlink_alerts_leader",
            "1 while this instance evaluates alerts",
            "gauge",
            1.0 if self.leader else 0.0,
        )


def replay(rule: AlertRule, device_id: str, records: Sequence[Record]) -> list[dict[str, Any]]:
    """Feed one device's records (time order) to the evaluator; the alerts it raises, each with
    its escalations and clear, shaped like ``Alert.to_dict`` (id ``backtest-N``)."""
    state = RuleState()
    current: Alert | None = None
    out: list[dict[str, Any]] = []
    n = 0
    for record in records:
        value = record.metrics.get(rule.metric)
        if value.__class__ not in (int, float):
            continue
        move = evaluate(rule, state, float(value), record.ts_ms)
        if move is None:
            continue
        if move.move is Move.RAISE or current is None:
            if move.move is Move.CLEAR:
                continue
            n += 1
            current = raised(rule, device_id, f"backtest-{n}", move)
            out.append(current.to_dict())
        elif move.move is Move.ESCALATE:
            current = escalated(current, rule, move)
            out[-1] = current.to_dict()
        else:
            current = cleared(current, move)
            out[-1] = current.to_dict()
            current = None
    return out


__all__ = ["AlertService", "AlertState", "replay"]
