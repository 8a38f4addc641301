"""The virtual power plant, pure: the fleet aggregate and how a dispatch is split across nodes.

A node is a device that declares ``capacity_kw`` (and ``battery_kwh``) in its meta and reports
``power_kw`` (positive: charging, negative: discharging, as the edge nodes do) and ``soc`` (%).

Aggregate. ``power_kw`` is the sum of every node's latest power (what the plant draws now);
capacity counts online nodes apart from all nodes; stored energy is ``soc`` x ``battery_kwh``;
the fleet SoC is weighted by energy capacity. ``coverage`` is the share of the total capacity
whose latest reading is younger than ``max_age_ms``: a total never hides missing nodes.

Dispatch. ``target_kw`` > 0 discharges (the plant delivers power), < 0 charges. Each online
node can give at most its capacity and what its energy allows for the duration without going
past the SoC limits; the target is split in proportion to what each can give, so no node is
asked for more than it has and they reach their limits together. A target beyond the fleet's
headroom is met as far as it goes and the shortfall is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class Node:
    device_id: str
    capacity_kw: float
    battery_kwh: float
    power_kw: float | None  # latest reading, None if none
    soc: float | None  # percent
    ts_ms: int | None  # time of the latest reading
    online: bool
    group: str = ""


@dataclass(frozen=True, slots=True)
class Aggregate:
    power_kw: float
    capacity_total_kw: float
    capacity_online_kw: float
    energy_kwh: float  # stored now
    energy_capacity_kwh: float
    soc: float | None  # energy-weighted, percent
    nodes_total: int
    nodes_online: int
    coverage: float  # 0..1, share of capacity reporting within max_age
    ts_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "power_kw": round(self.power_kw, 3),
            "capacity_total_kw": round(self.capacity_total_kw, 3),
            "capacity_online_kw": round(self.capacity_online_kw, 3),
            "energy_kwh": round(self.energy_kwh, 3),
            "energy_capacity_kwh": round(self.energy_capacity_kwh, 3),
            "soc": None if self.soc is None else round(self.soc, 2),
            "nodes_total": self.nodes_total,
            "nodes_online": self.nodes_online,
            "coverage": round(self.coverage, 4),
            "ts": self.ts_ms,
        }


def aggregate(nodes: Iterable[Node], now_ms: int, max_age_ms: int) -> Aggregate:
    power = cap_total = cap_online = energy = energy_cap = fresh_cap = 0.0
    weighted_soc = 0.0
    total = online = 0
    for node in nodes:
        total += 1
        cap_total += node.capacity_kw
        if node.online:
            online += 1
            cap_online += node.capacity_kw
        if node.power_kw is not None:
            power += node.power_kw
        if node.soc is not None:
            energy += node.soc / 100.0 * node.battery_kwh
            weighted_soc += node.soc * node.battery_kwh
            energy_cap += node.battery_kwh
        if node.ts_ms is not None and now_ms - node.ts_ms <= max_age_ms:
            fresh_cap += node.capacity_kw
    return Aggregate(
        power_kw=power,
        capacity_total_kw=cap_total,
        capacity_online_kw=cap_online,
        energy_kwh=energy,
        energy_capacity_kwh=energy_cap,
        soc=weighted_soc / energy_cap if energy_cap else None,
        nodes_total=total,
        nodes_online=online,
        coverage=fresh_cap / cap_total if cap_total else 0.0,
        ts_ms=now_ms,
    )


@dataclass(frozen=True, slots=True)
class SocLimits:
    min_pct: float = 10.0
    max_pct: float = 95.0


def headroom_kw(node: Node, discharge: bool, duration_s: float, limits: SocLimits) -> float:
    """What the node can give for ``duration_s`` without passing its SoC limit or capacity."""
    if not node.online or node.soc is None or node.battery_kwh <= 0 or duration_s <= 0:
        return 0.0
    if discharge:
        energy = (node.soc - limits.min_pct) / 100.0 * node.battery_kwh
    else:
        energy = (limits.max_pct - node.soc) / 100.0 * node.battery_kwh
    return max(0.0, min(node.capacity_kw, energy / (duration_s / 3600.0)))


@dataclass(frozen=True, slots=True)
class Allocation:
    setpoints: dict[str, float]  # node -> kW it is asked for (positive: its share of |target|)
    allocated_kw: float  # the sum of the shares (rounded to watts)
    shortfall_kw: float  # what the fleet's headroom cannot give


def allocate(
    target_kw: float,
    duration_s: float,
    nodes: Sequence[Node],
    limits: SocLimits = SocLimits(),
    exclude: Iterable[str] = (),
    reserved: dict[str, float] | None = None,
) -> Allocation:
    """Split ``|target_kw|`` over the nodes in proportion to their headroom (see the module
    doc), less what ``reserved`` already asks of each (a re-allocation on top of running
    shares). Shares are in kW of the target's direction (always >= 0)."""
    discharge = target_kw > 0
    excluded = set(exclude)
    taken = reserved or {}
    room = {
        n.device_id: headroom_kw(n, discharge, duration_s, limits) - taken.get(n.device_id, 0.0)
        for n in nodes
        if n.device_id not in excluded
    }
    room = {k: v for k, v in room.items() if v > 0}
    available = sum(room.values())
    wanted = abs(target_kw)
    if available <= 0 or wanted <= 0:
        return Allocation({}, 0.0, wanted)
    share = min(1.0, wanted / available)
    # Rounded to watts (so within half a watt of the headroom); a node whose share rounds to
    # nothing is left out (no command for 0 kW).
    setpoints = {k: kw for k, v in sorted(room.items()) if (kw := round(v * share, 3)) > 0}
    # The shortfall is what the fleet cannot give, not the rounding of the shares to watts.
    return Allocation(setpoints, sum(setpoints.values()), max(0.0, wanted - available))


# ---- dispatches -------------------------------------------------------------------------------


class DispatchState(StrEnum):
    SCHEDULED = "scheduled"  # accepted, starts at ``start_ms``
    RUNNING = "running"
    COMPLETED = "completed"  # ran its duration
    CANCELLED = "cancelled"  # stopped early by an operator or an agent
    FAILED = "failed"  # no node could take any of it


ENDED = (DispatchState.COMPLETED, DispatchState.CANCELLED, DispatchState.FAILED)
MAX_ACHIEVED_SAMPLES = 2_000  # the log keeps this many (t, kW) samples, then thins them


def setpoint_kw(share_kw: float, discharge: bool) -> float:
    """The node's own convention (docs/vpp.md): positive power charges, so a discharge share
    becomes a negative setpoint."""
    return -share_kw if discharge else share_kw


def delivered_kw(power_kw: float, discharge: bool) -> float:
    """A node's power in the dispatch's direction (positive when it does what was asked)."""
    return -power_kw if discharge else power_kw


def new_dispatch(
    *,
    dispatch_id: str,
    tenant_id: str,
    requested_by: str,
    source: str,
    target_kw: float,
    duration_s: float,
    start_ms: int,
    now_ms: int,
    proposal_id: str | None = None,
) -> dict[str, Any]:
    """A dispatch log entry, as stored and sent (docs/vpp.md#the-dispatch-log)."""
    return {
        "id": dispatch_id,
        "tenant": tenant_id,
        "requested_by": requested_by,
        "source": source,
        "proposal_id": proposal_id,
        "target_kw": target_kw,
        "duration_s": duration_s,
        "mode": "proportional",
        "direction": "discharge" if target_kw > 0 else "charge",
        "start": start_ms,
        "end": start_ms + int(duration_s * 1000),
        "state": str(DispatchState.SCHEDULED if start_ms > now_ms else DispatchState.RUNNING),
        "allocation": {},
        "shortfall_kw": 0.0,
        "shares": [],
        "achieved": [],
        "achieved_kw": None,
        "notes": [],
        "created": now_ms,
        "updated": now_ms,
        "ended": None,
        "version": 1,
    }


def add_share(
    dispatch: dict[str, Any], device_id: str, share_kw: float, command_id: str, round_: int
) -> None:
    """Record one node's share and the command that carries it (``round_`` 0: the first
    allocation, 1: the re-allocation of failed shares, 2+: a re-balance)."""
    dispatch["shares"].append(
        {
            "device_id": device_id,
            "kw": share_kw,
            "command_id": command_id,
            "round": round_,
            "status": "pending",
            "error": None,
        }
    )
    dispatch["allocation"][device_id] = share_kw


def settle_share(dispatch: dict[str, Any], command_id: str, status: str, error: str | None) -> bool:
    """The outcome of a share's command; True if it changed the log. A share that did not
    succeed leaves the allocation."""
    for share in dispatch["shares"]:
        if share["command_id"] == command_id and share["status"] == "pending":
            share["status"], share["error"] = status, error
            device = share["device_id"]
            if status != "succeeded" and dispatch["allocation"].get(device) == share["kw"]:
                del dispatch["allocation"][device]
            return True
    return False


def add_achieved(dispatch: dict[str, Any], ts_ms: int, kw: float) -> None:
    """One sample of what the allocated nodes deliver; the list is thinned (every other
    sample dropped) when it reaches its cap, so a long dispatch keeps its whole shape."""
    samples = dispatch["achieved"]
    samples.append([ts_ms, round(kw, 3)])
    dispatch["achieved_kw"] = round(kw, 3)
    if len(samples) > MAX_ACHIEVED_SAMPLES:
        dispatch["achieved"] = samples[::2]


# ---- agent proposals ----------------------------------------------------------------------------


class ProposalState(StrEnum):
    PENDING = "pending"  # waiting for an operator (manual policy)
    APPROVED = "approved"  # being executed by the instance that approved it
    EXECUTED = "executed"
    FAILED = "failed"  # approved, but executing it failed (``error`` says why)
    REJECTED = "rejected"
    EXPIRED = "expired"  # nobody decided in time


class Approval(StrEnum):
    AUTO = "auto"  # a proposal is executed as soon as it is made
    MANUAL = "manual"  # it waits for an operator's approve or reject


def new_proposal(
    *,
    proposal_id: str,
    tenant_id: str,
    agent: str,
    action: dict[str, Any],
    reason: str,
    expected: dict[str, Any],
    now_ms: int,
    expire_ms: int,
) -> dict[str, Any]:
    """An agent's proposal (docs/vpp.md#agents): ``action`` is what executing it does
    (``{"type": "dispatch", ...}``, ``{"type": "rebalance", "dispatch_id"}``, ``{"type":
    "stop", "dispatch_id"}``), ``reason`` why, ``expected`` its expected effect."""
    return {
        "id": proposal_id,
        "tenant": tenant_id,
        "agent": agent,
        "action": action,
        "reason": reason,
        "expected": expected,
        "state": str(ProposalState.PENDING),
        "created": now_ms,
        "expires": now_ms + expire_ms,
        "decided_by": None,
        "decided": None,
        "result": None,
        "error": None,
        "version": 1,
    }


def decided(
    proposal: dict[str, Any], state: ProposalState, who: str, now_ms: int
) -> dict[str, Any]:
    """The proposal after a decision (approve, reject, expire), with its version bumped."""
    return {
        **proposal,
        "state": str(state),
        "decided_by": who,
        "decided": now_ms,
        "version": proposal["version"] + 1,
    }


def finished(
    proposal: dict[str, Any], result: dict[str, Any] | None, error: str | None
) -> dict[str, Any]:
    """An approved proposal after its execution."""
    return {
        **proposal,
        "state": str(ProposalState.FAILED if error else ProposalState.EXECUTED),
        "result": result,
        "error": error,
        "version": proposal["version"] + 1,
    }
