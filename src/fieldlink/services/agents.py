"""The VPP's agents (docs/vpp.md#agents): load forecast, demand response, optimizer, monitor.

They run on one instance at a time: the holder of the ``vpp-agents`` lease in the store
(renewed every third of its time; another instance takes over when it lapses). Every
``interval_s`` the leader, for each tenant with nodes:

- demand response: turns each open DR event (``{start, end, reduce_kw}``) into one dispatch
  proposal (its id is derived from the event's, so a new leader cannot propose it twice),
  with the forecast fleet power over the window and the fleet's headroom as expected effect;
- optimizer: proposes re-balancing a running dispatch whose nodes' SoC has spread by more
  than ``rebalance_spread_pct`` (so they reach their limits together, not one by one);
- monitor: raises (and clears) alerts for nodes offline, nodes outside the SoC bounds, and
  nodes of a running dispatch delivering less than ``deviation`` of their share; proposes a
  top-up dispatch when a running dispatch as a whole falls short by more than ``deviation``;
- and expires proposals nobody decided in time, and starts or adopts dispatches whose runner
  is gone (``DispatchService.sweep``).

The load forecast (core/forecast.py) is computed on demand by any instance from the fleet
power history in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from fieldlink.core import forecast
from fieldlink.core.access import Principal, can_command
from fieldlink.core.errors import FieldlinkError, Forbidden, ValidationError
from fieldlink.core.measures import Measure
from fieldlink.core.rules import AlertRule, Level, Op, ScopeKind
from fieldlink.core.vpp import DispatchState, Node, SocLimits, allocate, delivered_kw
from fieldlink.ports import FleetPower, Leases, PresenceView, Store
from fieldlink.services.alerts import AlertService
from fieldlink.services.dispatch import DispatchService
from fieldlink.services.proposals import KIND as PROPOSAL_KIND
from fieldlink.services.proposals import ProposalService

log = logging.getLogger("fieldlink.vpp")

LEASE = "vpp-agents"
DR_KIND = "vpp.dr"
FORECAST_STEP_MS = 15 * 60_000
FORECAST_HISTORY_DAYS = 7
SETTLE_MS = 30_000  # a dispatch's first half minute is ramping, not deviation
MAX_DR_AHEAD_MS = 7 * 86_400_000
FORECAST_METHOD = (
    "seasonal profile: a robust mean of the same 15-minute slot over up to 7 days, plus the "
    "last hour's deviation from it, decaying over two hours (docs/vpp.md#load-forecast)"
)


def monitor_rule(rule_id: str, tenant_id: str, metric: str, op: Op, threshold: float) -> AlertRule:
    """The alert rule an agent condition is raised under (never evaluated from readings)."""
    return AlertRule(
        id=rule_id,
        tenant_id=tenant_id,
        metric=metric,
        op=op,
        levels=(Level("warning", threshold),),
        clear=threshold,
        scope=ScopeKind.TENANT,
        name=rule_id,
    )


def parse_dr_event(body: Any, now_ms: int, parse_time: Callable[[Any, str], int]) -> dict[str, Any]:
    """``{start, end, reduce_kw}`` (times as epoch ms or ISO 8601) -> the stored shape."""
    if not isinstance(body, dict):
        raise ValidationError("bad_body", "send {start, end, reduce_kw}", "$")
    start_ms = parse_time(body.get("start"), "$.start")
    end_ms = parse_time(body.get("end"), "$.end")
    reduce_kw = body.get("reduce_kw")
    if (
        isinstance(reduce_kw, bool)
        or not isinstance(reduce_kw, int | float)
        or not (0 < reduce_kw <= 1e6)
    ):
        raise ValidationError("invalid_number", "reduce_kw is a positive number", "$.reduce_kw")
    if end_ms <= start_ms:
        raise ValidationError("invalid_window", "end must be after start", "$.end")
    if end_ms <= now_ms or start_ms > now_ms + MAX_DR_AHEAD_MS:
        raise ValidationError(
            "invalid_window", "the event must end in the future, start within 7 days", "$.start"
        )
    if end_ms - start_ms > 86_400_000:
        raise ValidationError("invalid_window", "an event lasts at most 24 h", "$.end")
    return {"start": start_ms, "end": end_ms, "reduce_kw": float(reduce_kw)}


class AgentService:
    def __init__(
        self,
        *,
        store: Store,
        history: FleetPower,
        leases: Leases,
        dispatches: DispatchService,
        proposals: ProposalService,
        alerts: AlertService,
        presence: PresenceView,
        nodes: Callable[[str], list[Node]],
        tenants: Callable[[], set[str]],
        clock_ms: Callable[[], int],
        instance_id: str,
        limits: SocLimits = SocLimits(),
        interval_s: float = 5.0,
        lease_ttl_ms: int = 15_000,
        rebalance_spread_pct: float = 15.0,
        deviation: float = 0.2,
    ) -> None:
        self.store = store
        self.history = history
        self.leases = leases
        self.dispatches = dispatches
        self.proposals = proposals
        self.alerts = alerts
        self.presence = presence
        self.nodes = nodes
        self.tenants = tenants
        self.clock_ms = clock_ms
        self.instance_id = instance_id
        self.limits = limits
        self.interval_s = interval_s
        self.lease_ttl_ms = lease_ttl_ms
        self.rebalance_spread_pct = rebalance_spread_pct
        self.deviation = deviation
        self.leader = False
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    # ---- start / stop -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._lead())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.leader:
            # Hand over at once on a clean stop: a lease renewed for 0 ms is free to take.
            self.leader = False
            with contextlib.suppress(FieldlinkError):
                await self.leases.acquire_lease(LEASE, self.instance_id, 0, self.clock_ms())

    async def _lead(self) -> None:
        next_tick = 0.0
        loop = asyncio.get_running_loop()
        renew_s = self.lease_ttl_ms / 3000
        while True:
            try:
                held = await self.leases.acquire_lease(
                    LEASE, self.instance_id, self.lease_ttl_ms, self.clock_ms()
                )
            except FieldlinkError as exc:
                log.warning("agents lease: %s", exc)
                held = False
            if held != self.leader:
                log.info("this instance %s the VPP agents", "runs" if held else "no longer runs")
                self.leader = held
            if held and loop.time() >= next_tick:
                next_tick = loop.time() + self.interval_s
                try:
                    await self.tick()
                except FieldlinkError as exc:
                    log.warning("agents tick failed: %s", exc)
                except Exception:
                    log.exception("agents tick failed unexpectedly")
            await asyncio.sleep(min(renew_s, self.interval_s))

    async def tick(self) -> None:
        """One round of every agent (the leader's; tests call it directly)."""
        self.ticks += 1
        await self.proposals.expire_due()
        await self.dispatches.sweep()
        for tenant_id in sorted(self.tenants()):
            nodes = self.nodes(tenant_id)
            if not nodes:
                continue
            await self._plan_demand_response(tenant_id, nodes)
            running = [
                d
                for d in await self.dispatches.running(tenant_id)
                if d["state"] == DispatchState.RUNNING
            ]
            await self._optimize(tenant_id, nodes, running)
            await self._monitor(tenant_id, nodes, running)

    # ---- load forecast ------------------------------------------------------------------------

    async def forecast(self, tenant_id: str, hours: int = 24) -> dict[str, Any]:
        """The next ``hours`` of fleet power (15-min steps) from up to 7 days of history."""
        now_ms = self.clock_ms()
        step = FORECAST_STEP_MS
        end_ms = now_ms // 60_000 * 60_000
        start_ms = end_ms - FORECAST_HISTORY_DAYS * 86_400_000
        points = await self.history.fleet_power(start_ms, end_ms, step, tenant_id)
        history = [(p["ts"], float(p["power_kw"])) for p in points]
        ahead = forecast.seasonal_forecast(history, end_ms, hours * 3_600_000, step)
        return {
            "tenant": tenant_id,
            "method": FORECAST_METHOD,
            "step_s": step // 1000,
            "history_points": len(history),
            "points": [{"ts": ts, "power_kw": round(kw, 3)} for ts, kw in ahead],
        }

    # ---- demand response ----------------------------------------------------------------------

    async def add_dr_event(self, tenant_id: str, event: dict[str, Any], by: str) -> dict[str, Any]:
        now_ms = self.clock_ms()
        event_id = f"dr-{now_ms:013d}-{secrets.token_hex(3)}"
        doc = {
            "id": event_id,
            "tenant": tenant_id,
            **event,
            "created": now_ms,
            "created_by": by,
            "proposal_id": None,
            "version": 1,
        }
        await self.store.swap_doc(DR_KIND, event_id, doc, None)
        return doc

    async def dr_events(self, tenant_id: str | None) -> list[dict[str, Any]]:
        return [
            d
            for _, d in await self.store.list_docs(DR_KIND)
            if tenant_id is None or d["tenant"] == tenant_id
        ]

    async def _plan_demand_response(self, tenant_id: str, nodes: list[Node]) -> None:
        now_ms = self.clock_ms()
        for event in await self.dr_events(tenant_id):
            if event["proposal_id"] is not None or event["end"] <= now_ms:
                continue
            start_ms = max(event["start"], now_ms)
            duration_s = (event["end"] - start_ms) / 1000
            plan = allocate(event["reduce_kw"], duration_s, nodes, self.limits)
            expected: dict[str, Any] = {
                "reduce_kw": event["reduce_kw"],
                "allocatable_kw": round(plan.allocated_kw, 3),
                "shortfall_kw": round(plan.shortfall_kw, 3),
                "nodes": len(plan.setpoints),
            }
            try:
                ahead = await self.forecast(tenant_id, hours=24)
                window = [
                    p["power_kw"] for p in ahead["points"] if start_ms <= p["ts"] < event["end"]
                ]
                if window:
                    baseline = sum(window) / len(window)
                    expected["forecast_fleet_power_kw"] = round(baseline, 3)
                    # fleet power is positive when charging: discharging lowers it
                    expected["fleet_power_during_kw"] = round(baseline - plan.allocated_kw, 3)
            except FieldlinkError as exc:
                log.warning("forecast for DR event %s failed: %s", event["id"], exc)
            reason = (
                f"DR event {event['id']}: reduce {event['reduce_kw']:.1f} kW from "
                f"{_iso(event['start'])} to {_iso(event['end'])}; the fleet can give "
                f"{plan.allocated_kw:.1f} kW over {len(plan.setpoints)} node(s) for the window"
            )
            proposal_id = f"p-{event['id']}"
            await self.proposals.propose(
                tenant_id=tenant_id,
                agent="demand_response",
                action={
                    "type": "dispatch",
                    "target_kw": event["reduce_kw"],
                    "duration_s": duration_s,
                    "start_ms": start_ms,
                },
                reason=reason,
                expected=expected,
                proposal_id=proposal_id,
            )
            await self.store.swap_doc(
                DR_KIND,
                event["id"],
                {**event, "proposal_id": proposal_id, "version": event["version"] + 1},
                event["version"],
            )

    # ---- optimizer ----------------------------------------------------------------------------

    async def _optimize(
        self, tenant_id: str, nodes: list[Node], running: list[dict[str, Any]]
    ) -> None:
        """Propose re-balancing a running dispatch when its nodes' SoC has spread and a split
        by what each can give now would move some share by more than 0.5 kW; one proposal at a
        time per dispatch, the next no sooner than a minute after the last was decided."""
        by_id = {n.device_id: n for n in nodes}
        now_ms = self.clock_ms()
        for dispatch in running:
            members = [by_id[d] for d in dispatch["allocation"] if d in by_id]
            socs = [n.soc for n in members if n.soc is not None]
            if len(socs) < 2 or max(socs) - min(socs) <= self.rebalance_spread_pct:
                continue
            remaining_s = (dispatch["end"] - now_ms) / 1000
            if remaining_s < 60:
                continue
            plan = allocate(dispatch["target_kw"], remaining_s, members, self.limits)
            moves = {
                device: {"from": dispatch["allocation"].get(device, 0.0), "to": kw}
                for device, kw in plan.setpoints.items()
                if abs(kw - dispatch["allocation"].get(device, 0.0)) > 0.5
            }
            if not moves:
                continue
            proposal_id = await self._next_rebalance_id(dispatch["id"], now_ms)
            if proposal_id is None:
                continue
            spread = max(socs) - min(socs)
            await self.proposals.propose(
                tenant_id=tenant_id,
                agent="optimizer",
                action={"type": "rebalance", "dispatch_id": dispatch["id"]},
                reason=(
                    f"dispatch {dispatch['id']}: the SoC of its {len(members)} nodes spreads "
                    f"{spread:.1f} points (over {self.rebalance_spread_pct:.0f}); splitting it "
                    "again by what each can give now moves load off the emptiest nodes, so they "
                    "reach their limit together instead of cycling deep one by one"
                ),
                expected={"soc_spread_pct": round(spread, 2), "moves": moves},
                proposal_id=proposal_id,
                expires_ms=dispatch["end"],
            )

    async def _next_rebalance_id(self, dispatch_id: str, now_ms: int) -> str | None:
        """The id of the next re-balance proposal for a dispatch, or None while the last one
        is pending or was decided less than a minute ago."""
        index = 0
        while True:
            proposal_id = f"p-rebalance-{dispatch_id}-{index}"
            doc = await self.store.get_doc(PROPOSAL_KIND, proposal_id)
            if doc is None:
                return proposal_id
            if doc["state"] == "pending" or now_ms - (doc["decided"] or now_ms) < 60_000:
                return None
            index += 1

    # ---- monitor ------------------------------------------------------------------------------

    async def _monitor(
        self, tenant_id: str, nodes: list[Node], running: list[dict[str, Any]]
    ) -> None:
        limits = self.limits
        offline = monitor_rule("vpp.node_offline", tenant_id, "online", Op.LT, 1)
        soc_low = monitor_rule("vpp.soc_low", tenant_id, "soc", Op.LT, limits.min_pct)
        soc_high = monitor_rule("vpp.soc_high", tenant_id, "soc", Op.GT, limits.max_pct)
        under = monitor_rule(
            "vpp.under_delivery", tenant_id, "delivered_share", Op.LT, 1 - self.deviation
        )
        now_ms = self.clock_ms()
        shares: dict[str, tuple[float, dict[str, Any]]] = {}
        for dispatch in running:
            if now_ms - dispatch["start"] < SETTLE_MS:
                continue
            for device_id, kw in dispatch["allocation"].items():
                shares[device_id] = (kw, dispatch)
        for node in nodes:
            await self.alerts.set_condition(offline, node.device_id, 0.0, not node.online)
            if node.soc is not None:
                await self.alerts.set_condition(
                    soc_low, node.device_id, node.soc, node.soc < limits.min_pct
                )
                await self.alerts.set_condition(
                    soc_high, node.device_id, node.soc, node.soc > limits.max_pct
                )
            share = shares.get(node.device_id)
            ratio = 1.0
            if share is not None and share[0] > 0 and node.power_kw is not None:
                discharge = share[1]["target_kw"] > 0
                ratio = delivered_kw(node.power_kw, discharge) / share[0]
            await self.alerts.set_condition(
                under, node.device_id, round(ratio, 3), ratio < 1 - self.deviation
            )
        for dispatch in running:
            await self._top_up(tenant_id, nodes, dispatch, now_ms)

    async def _top_up(
        self, tenant_id: str, nodes: list[Node], dispatch: dict[str, Any], now_ms: int
    ) -> None:
        achieved = dispatch.get("achieved_kw")
        target = abs(dispatch["target_kw"])
        if achieved is None or now_ms - dispatch["start"] < SETTLE_MS or target <= 0:
            return
        missing = target - achieved
        remaining_s = (dispatch["end"] - now_ms) / 1000
        if missing <= self.deviation * target or remaining_s < 60:
            return
        direction = 1.0 if dispatch["target_kw"] > 0 else -1.0
        await self.proposals.propose(
            tenant_id=tenant_id,
            agent="monitor",
            action={
                "type": "dispatch",
                "target_kw": round(direction * missing, 3),
                "duration_s": round(remaining_s),
            },
            reason=(
                f"dispatch {dispatch['id']} delivers {achieved:.1f} of {target:.1f} kW "
                f"({achieved / target:.0%}); a top-up of {missing:.1f} kW from other nodes "
                "covers the rest"
            ),
            expected={"achieved_kw": achieved, "target_kw": target, "top_up_kw": missing},
            proposal_id=f"p-topup-{dispatch['id']}",
        )

    # ---- REST helpers -------------------------------------------------------------------------

    def check_operator(self, principal: Principal, tenant_id: str) -> None:
        if not can_command(principal, tenant_id):
            raise Forbidden("your role may not do this", code="forbidden")

    def measures(self) -> Iterator[Measure]:
        yield Measure(
            "fieldlink_vpp_agent_leader",
            "1 on the instance that runs the VPP agents",
            "gauge",
            int(self.leader),
        )
        yield Measure("fieldlink_vpp_agent_ticks", "Agent rounds run here", "counter", self.ticks)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
