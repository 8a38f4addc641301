"""Dispatches: "deliver ``target_kw`` for ``duration_s``" split across a tenant's nodes, sent as
setpoint commands, followed to their outcomes and measured from telemetry (docs/vpp.md).

The dispatch log entry is a document in the store (kind ``vpp.dispatch``), changed only by
compare-and-set on its ``version`` (``_update``), so any instance may cancel, re-balance or
adopt a dispatch while another runs it: the runner reloads on a lost swap and carries on
from what is stored. The instance that starts a dispatch runs it (``runner`` names it); the
agents' leader starts scheduled dispatches whose runner is gone and adopts running ones whose
runner stopped reporting (``sweep``).

A run: allocate (core/vpp.py ``allocate``) over the online nodes by headroom, send each node
its setpoint (the command lifecycle: QoS 1, ack, timeout), settle every share from its
command's outcome, re-allocate the failed shares once to the other nodes, then sample what
the allocated nodes deliver every ``sample_interval_s`` until the end, when every node gets
setpoint 0.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fieldlink.core.access import Principal, can_read
from fieldlink.core.commands import Command, Status
from fieldlink.core.errors import Conflict, FieldlinkError, NotFound, ValidationError
from fieldlink.core.events import DispatchChanged, DomainEvent, ProposalChanged
from fieldlink.core.measures import Measure
from fieldlink.core.vpp import (
    ENDED,
    DispatchState,
    Node,
    SocLimits,
    add_achieved,
    add_share,
    allocate,
    delivered_kw,
    new_dispatch,
    setpoint_kw,
    settle_share,
)
from fieldlink.ports import Bus, Commands, LatestReadings, Store

log = logging.getLogger("fieldlink.vpp")

KIND = "vpp.dispatch"
MAX_TARGET_KW = 1e6
MAX_DURATION_S = 7 * 86_400
MAX_START_AHEAD_MS = 7 * 86_400_000
POWER = "power_kw"

NodesFn = Callable[[str], list[Node]]
"""A tenant's nodes now (services/aggregate.py ``AggregateService.nodes``)."""


def new_dispatch_id(now_ms: int) -> str:
    """Time-ordered, so the store's key order is the log's order."""
    return f"d-{now_ms:013d}-{secrets.token_hex(3)}"


def check_request(target_kw: Any, duration_s: Any, start_ms: Any, now_ms: int) -> None:
    """``ValidationError`` with the field path for a bad dispatch request."""
    for value, path in ((target_kw, "$.target_kw"), (duration_s, "$.duration_s")):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValidationError("invalid_number", "must be a number", path)
    if target_kw == 0 or abs(target_kw) > MAX_TARGET_KW:
        raise ValidationError(
            "invalid_target",
            "target_kw is non-zero (positive discharges, negative charges), at most 1e6 kW",
            "$.target_kw",
        )
    if not 1 <= duration_s <= MAX_DURATION_S:
        raise ValidationError(
            "invalid_duration", "duration_s is from 1 s to 7 days", "$.duration_s"
        )
    if start_ms is not None and not now_ms - 60_000 <= start_ms <= now_ms + MAX_START_AHEAD_MS:
        raise ValidationError("invalid_start", "start is from now to 7 days ahead", "$.start")


class DispatchService:
    def __init__(
        self,
        *,
        store: Store,
        bus: Bus,
        commands: Commands,
        nodes: NodesFn,
        latest: LatestReadings,
        clock_ms: Callable[[], int],
        instance_id: str,
        limits: SocLimits = SocLimits(),
        command_timeout_ms: int = 10_000,
        sample_interval_s: float = 2.0,
        stale_runner_ms: int = 30_000,
    ) -> None:
        self.store = store
        self.bus = bus
        self.commands = commands
        self.nodes = nodes
        self.latest = latest
        self.clock_ms = clock_ms
        self.instance_id = instance_id
        self.limits = limits
        self.command_timeout_ms = command_timeout_ms
        self.sample_interval_s = sample_interval_s
        self.stale_runner_ms = stale_runner_ms
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._docs: dict[str, dict[str, Any]] = {}  # the last version this instance saw
        self.started = 0
        self.commands_sent = 0
        self.reallocations = 0

    # ---- requests -------------------------------------------------------------------------

    async def request(
        self,
        *,
        tenant_id: str,
        target_kw: Any,  # validated here (it may come straight from a request body)
        duration_s: Any,
        requested_by: str,
        source: str = "operator",
        start_ms: int | None = None,
        proposal_id: str | None = None,
    ) -> dict[str, Any]:
        """Log a dispatch and run it here (now, or at ``start_ms``). Returns the entry."""
        now_ms = self.clock_ms()
        check_request(target_kw, duration_s, start_ms, now_ms)
        dispatch_id = new_dispatch_id(now_ms)
        doc = new_dispatch(
            dispatch_id=dispatch_id,
            tenant_id=tenant_id,
            requested_by=requested_by,
            source=source,
            target_kw=float(target_kw),
            duration_s=float(duration_s),
            start_ms=max(now_ms, start_ms or now_ms),
            now_ms=now_ms,
            proposal_id=proposal_id,
        )
        doc["runner"] = self.instance_id
        doc["heartbeat"] = now_ms
        if not await self.store.swap_doc(KIND, dispatch_id, doc, None):
            raise Conflict(f"dispatch {dispatch_id} exists")
        self._docs[dispatch_id] = doc
        self._publish("dispatch.created", doc)
        self.started += 1
        self._spawn(dispatch_id, self._run(dispatch_id))
        return doc

    async def get(self, dispatch_id: str, principal: Principal | None = None) -> dict[str, Any]:
        doc = await self.store.get_doc(KIND, dispatch_id)
        if doc is None or (principal is not None and not can_read(principal, doc["tenant"])):
            raise NotFound(f"no dispatch {dispatch_id!r}")
        return doc

    async def list_dispatches(
        self, tenant_id: str | None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first; one tenant's, or every tenant's for ``None``."""
        docs = [d for _, d in await self.store.list_docs(KIND)]
        docs = [d for d in docs if tenant_id is None or d["tenant"] == tenant_id]
        return docs[::-1][:limit]

    async def running(self, tenant_id: str) -> list[dict[str, Any]]:
        return [
            d
            for d in await self.list_dispatches(tenant_id, limit=10_000)
            if d["state"] in (DispatchState.RUNNING, DispatchState.SCHEDULED)
        ]

    async def cancel(self, dispatch_id: str, by: str, reason: str = "") -> dict[str, Any]:
        """Stop a scheduled or running dispatch; its nodes get setpoint 0 from its runner (or
        from here when it never started). ``Conflict`` if it has ended."""
        now_ms = self.clock_ms()

        def stop(doc: dict[str, Any]) -> bool:
            if doc["state"] in ENDED:
                raise Conflict(f"dispatch {dispatch_id} has ended", code="dispatch_ended")
            doc["state"] = str(DispatchState.CANCELLED)
            doc["ended"] = now_ms
            doc["notes"].append(f"cancelled by {by}" + (f": {reason}" if reason else ""))
            return True

        doc = await self._update(dispatch_id, stop)
        self._publish("dispatch.ended", doc)
        if dispatch_id not in self._tasks:
            # Nobody here runs it: release its nodes now (its runner, if alive elsewhere, sees
            # the state at its next sample and stops too; a second setpoint 0 is harmless).
            await self._release(doc)
        return doc

    async def rebalance(self, dispatch_id: str, by: str) -> dict[str, Any]:
        """Split a running dispatch again over its nodes by what each can give now (the
        optimizer's action: nodes reach their SoC limits together instead of one by one).
        Sends a new setpoint to every node whose share moved by more than 0.1 kW."""
        doc = await self.get(dispatch_id)
        if doc["state"] != DispatchState.RUNNING:
            raise Conflict(f"dispatch {dispatch_id} is not running", code="dispatch_not_running")
        now_ms = self.clock_ms()
        remaining_s = max(1.0, (doc["end"] - now_ms) / 1000)
        members = set(doc["allocation"])
        nodes = [n for n in self.nodes(doc["tenant"]) if n.device_id in members]
        plan = allocate(doc["target_kw"], remaining_s, nodes, self.limits)
        moves = {
            device: kw
            for device, kw in plan.setpoints.items()
            if abs(kw - doc["allocation"].get(device, 0.0)) > 0.1
        }
        sent = await self._send_shares(doc, moves, round_=max(2, self._round(doc) + 1))

        def record(current: dict[str, Any]) -> bool:
            for device, kw, command in sent:
                add_share(current, device, kw, command.id, max(2, self._round(current) + 1))
            current["notes"].append(
                f"re-balanced by {by}: {len(sent)} node(s) moved, "
                f"shortfall {plan.shortfall_kw:.1f} kW"
            )
            current["shortfall_kw"] = round(plan.shortfall_kw, 3)
            return True

        doc = await self._update(dispatch_id, record)
        self._publish("dispatch.optimized", doc)
        for _, _, command in sent:
            self._spawn(f"{dispatch_id}:{command.id}", self._follow(dispatch_id, command))
        return doc

    # ---- running ----------------------------------------------------------------------------

    async def _run(self, dispatch_id: str) -> None:
        doc = self._docs.get(dispatch_id) or await self.get(dispatch_id)
        wait_s = (doc["start"] - self.clock_ms()) / 1000
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        now_ms = self.clock_ms()

        def begin(current: dict[str, Any]) -> bool:
            if current["state"] in ENDED or current["shares"]:
                return False  # cancelled meanwhile, or someone else has begun it
            current["state"] = str(DispatchState.RUNNING)
            current["runner"], current["heartbeat"] = self.instance_id, now_ms
            return True

        doc = await self._update(dispatch_id, begin)
        if doc["state"] != DispatchState.RUNNING or doc["runner"] != self.instance_id:
            return
        await self._allocate_and_follow(doc)
        await self._sample_until_end(dispatch_id)

    async def _allocate_and_follow(self, doc: dict[str, Any]) -> None:
        dispatch_id = doc["id"]
        now_ms = self.clock_ms()
        remaining_s = max(1.0, (doc["end"] - now_ms) / 1000)
        nodes = self.nodes(doc["tenant"])
        plan = allocate(doc["target_kw"], remaining_s, nodes, self.limits)
        if not plan.setpoints:

            def fail(current: dict[str, Any]) -> bool:
                current["state"] = str(DispatchState.FAILED)
                current["ended"] = now_ms
                current["shortfall_kw"] = round(plan.shortfall_kw, 3)
                current["notes"].append("no online node has headroom for this dispatch")
                return True

            self._publish("dispatch.ended", await self._update(dispatch_id, fail))
            return
        sent = await self._send_shares(doc, plan.setpoints, round_=0)

        def started(current: dict[str, Any]) -> bool:
            for device, kw, command in sent:
                add_share(current, device, kw, command.id, 0)
            current["shortfall_kw"] = round(plan.shortfall_kw, 3)
            if plan.shortfall_kw > 0.001:
                current["notes"].append(
                    f"the fleet can give {plan.allocated_kw:.1f} of {abs(doc['target_kw']):.1f} kW "
                    f"for the duration: shortfall {plan.shortfall_kw:.1f} kW"
                )
            return True

        doc = await self._update(dispatch_id, started)
        self._publish("dispatch.started", doc)
        outcomes = await asyncio.gather(*(self._follow(dispatch_id, c) for _, _, c in sent))
        failed = {c.device_id for c in outcomes if c.status is not Status.ACKED}
        if failed:
            await self._reallocate(dispatch_id, failed)

    async def _reallocate(self, dispatch_id: str, failed: set[str]) -> None:
        """Give the failed shares, once, to the nodes that took theirs (within what each has
        left) and to nodes not yet in the dispatch."""
        doc = await self.get(dispatch_id)
        if doc["state"] != DispatchState.RUNNING:
            return
        lost_kw = sum(
            s["kw"] for s in doc["shares"] if s["device_id"] in failed and s["round"] == 0
        )
        remaining_s = max(1.0, (doc["end"] - self.clock_ms()) / 1000)
        direction = 1.0 if doc["target_kw"] > 0 else -1.0
        nodes = self.nodes(doc["tenant"])
        plan = allocate(
            direction * lost_kw,
            remaining_s,
            nodes,
            self.limits,
            exclude=failed,
            reserved=doc["allocation"],
        )
        totals = {d: doc["allocation"].get(d, 0.0) + kw for d, kw in plan.setpoints.items()}
        sent = await self._send_shares(doc, totals, round_=1)
        self.reallocations += 1

        def record(current: dict[str, Any]) -> bool:
            for device, kw, command in sent:
                add_share(current, device, kw, command.id, 1)
            current["shortfall_kw"] = round(current["shortfall_kw"] + plan.shortfall_kw, 3)
            current["notes"].append(
                f"re-allocated {lost_kw:.1f} kW of {len(failed)} failed node(s) "
                f"({', '.join(sorted(failed))}) to {len(sent)} node(s); "
                f"{plan.shortfall_kw:.1f} kW could not be placed"
            )
            return True

        doc = await self._update(dispatch_id, record)
        self._publish("dispatch.reallocated", doc)
        await asyncio.gather(*(self._follow(dispatch_id, c) for _, _, c in sent))

    async def _send_shares(
        self, doc: dict[str, Any], shares: dict[str, float], round_: int
    ) -> list[tuple[str, float, Command]]:
        """One setpoint command per node; those the command service refuses at once are
        returned settled (their follow-up records the outcome)."""
        discharge = doc["target_kw"] > 0
        sent: list[tuple[str, float, Command]] = []
        for device_id, kw in sorted(shares.items()):
            command = await self._command(device_id, setpoint_kw(kw, discharge), doc["id"])
            if command is not None:
                sent.append((device_id, kw, command))
        return sent

    async def _command(
        self, device_id: str, kw: float, dispatch_id: str, release: bool = False
    ) -> Command | None:
        params: dict[str, Any] = {"kw": round(kw, 3), "dispatch": dispatch_id}
        if release:
            params["release"] = True  # the dispatch is over: the node may go back to its own plan
        try:
            request = self.commands.parse(
                {
                    "action": "setpoint",
                    "params": params,
                    "timeout_ms": self.command_timeout_ms,
                },
                device_id,
            )
            command = await self.commands.log(request)
            self.commands_sent += 1
            return await self.commands.send(command)
        except FieldlinkError as exc:
            log.warning("dispatch %s: setpoint for %s refused: %s", dispatch_id, device_id, exc)
            return None

    async def _follow(self, dispatch_id: str, command: Command) -> Command:
        """Wait for a share's command to end and record its outcome."""
        final = await self.commands.wait(command)
        status = str(final.status) if final.terminal else "timeout"
        outcome = "succeeded" if final.status is Status.ACKED else status

        def settle(current: dict[str, Any]) -> bool:
            return settle_share(current, command.id, outcome, final.error or final.reason)

        doc = await self._update(dispatch_id, settle)
        self._publish("dispatch.command", doc)
        return final

    async def _sample_until_end(self, dispatch_id: str) -> None:
        while True:
            await asyncio.sleep(self.sample_interval_s)
            now_ms = self.clock_ms()
            state: dict[str, Any] = {}

            def sample(
                current: dict[str, Any], now_ms: int = now_ms, state: dict[str, Any] = state
            ) -> bool:
                state["ended"] = current["state"] in ENDED
                if state["ended"] or current["runner"] != self.instance_id:
                    return False
                add_achieved(current, now_ms, self._achieved(current))
                current["heartbeat"] = now_ms
                if now_ms >= current["end"]:
                    current["state"] = str(DispatchState.COMPLETED)
                    current["ended"] = now_ms
                    state["ended"] = True
                return True

            try:
                doc = await self._update(dispatch_id, sample)
            except FieldlinkError as exc:
                log.warning("dispatch %s: could not record progress: %s", dispatch_id, exc)
                continue
            if doc["runner"] != self.instance_id and not state["ended"]:
                return  # adopted by another instance
            if state["ended"]:
                if doc["state"] == DispatchState.COMPLETED:
                    self._publish("dispatch.ended", doc)
                await self._release(doc)
                return
            self._publish("dispatch.progress", doc)

    def _achieved(self, doc: dict[str, Any]) -> float:
        """What the allocated nodes deliver now, in the dispatch's direction (their latest
        ``power_kw``)."""
        discharge = doc["target_kw"] > 0
        total = 0.0
        for device_id in doc["allocation"]:
            record = self.latest.latest(device_id)
            value = record.metrics.get(POWER) if record is not None else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += delivered_kw(float(value), discharge)
        return total

    async def _release(self, doc: dict[str, Any]) -> None:
        """Setpoint 0 to every node that had a share (the end of a dispatch)."""
        devices = sorted({s["device_id"] for s in doc["shares"] if s["status"] != "rejected"})
        for device_id in devices:
            await self._command(device_id, 0.0, doc["id"], release=True)

    # ---- the leader's sweep -------------------------------------------------------------------

    async def sweep(self) -> None:
        """Start overdue scheduled dispatches and adopt running ones whose runner has gone
        quiet (called by the agents' leader)."""
        now_ms = self.clock_ms()
        for _, doc in await self.store.list_docs(KIND):
            if doc["state"] in ENDED or doc["id"] in self._tasks:
                continue
            overdue = doc["state"] == DispatchState.SCHEDULED and now_ms > doc["start"] + 10_000
            quiet = (
                doc["state"] == DispatchState.RUNNING
                and now_ms - doc.get("heartbeat", 0) > self.stale_runner_ms
            )
            if not (overdue or quiet):
                continue
            runner = doc.get("runner")

            def adopt(current: dict[str, Any], runner: Any = runner) -> bool:
                if current.get("runner") != runner or current["state"] in ENDED:
                    return False
                current["runner"], current["heartbeat"] = self.instance_id, now_ms
                current["notes"].append(f"adopted by {self.instance_id} (runner {runner} quiet)")
                return True

            adopted = await self._update(doc["id"], adopt)
            if adopted["runner"] != self.instance_id:
                continue
            log.warning("dispatch %s adopted from %s", doc["id"], runner)
            if adopted["state"] == DispatchState.SCHEDULED:
                self._spawn(doc["id"], self._run(doc["id"]))
            else:
                self._spawn(doc["id"], self._sample_until_end(doc["id"]))

    # ---- plumbing -------------------------------------------------------------------------------

    async def _update(
        self, dispatch_id: str, change: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """Apply ``change`` to the stored entry by compare-and-set, reloading and re-applying
        after a lost race. ``change`` returns False for "nothing to write". Returns the entry
        as stored."""
        doc = self._docs.get(dispatch_id)
        for _ in range(20):
            if doc is None:
                doc = await self.store.get_doc(KIND, dispatch_id)
                if doc is None:
                    raise NotFound(f"no dispatch {dispatch_id!r}")
            candidate = _copy(doc)
            if not change(candidate):
                self._docs[dispatch_id] = doc
                return doc
            candidate["version"] = doc["version"] + 1
            candidate["updated"] = self.clock_ms()
            if await self.store.swap_doc(KIND, dispatch_id, candidate, doc["version"]):
                if candidate["state"] in ENDED:
                    self._docs.pop(dispatch_id, None)
                else:
                    self._docs[dispatch_id] = candidate
                return candidate
            doc = None  # someone else changed it: reload and re-apply
        raise Conflict(f"dispatch {dispatch_id} keeps changing; try again")

    @staticmethod
    def _round(doc: dict[str, Any]) -> int:
        return max((s["round"] for s in doc["shares"]), default=0)

    def _publish(self, name: str, doc: dict[str, Any]) -> None:
        self.bus.publish(DispatchChanged(doc["tenant"], name, _copy(doc)))

    def _spawn(self, key: str, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[key] = task

        def done(t: asyncio.Task[Any], key: str = key) -> None:
            if self._tasks.get(key) is t:
                del self._tasks[key]
            if not t.cancelled() and t.exception() is not None:
                log.error("dispatch task %s failed", key, exc_info=t.exception())

        task.add_done_callback(done)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def measures(self) -> Iterator[Measure]:
        yield Measure(
            "fieldlink_vpp_dispatches_started", "Dispatches started here", "counter", self.started
        )
        yield Measure(
            "fieldlink_vpp_dispatch_commands",
            "Setpoint commands sent for dispatches",
            "counter",
            self.commands_sent,
        )
        yield Measure(
            "fieldlink_vpp_reallocations",
            "Failed shares re-allocated to other nodes",
            "counter",
            self.reallocations,
        )
        yield Measure(
            "fieldlink_vpp_dispatches_running_here",
            "Dispatches this instance runs now",
            "gauge",
            sum(1 for k in self._tasks if ":" not in k),
        )


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    """A deep enough copy: the mutable parts of an entry are its lists and dicts."""
    out = dict(doc)
    out["allocation"] = dict(doc["allocation"])
    out["shares"] = [dict(s) for s in doc["shares"]]
    out["achieved"] = list(doc["achieved"])
    out["notes"] = list(doc["notes"])
    return out


class DispatchBoard:
    """What a ``dispatch:<tenant>`` subscriber gets as its snapshot: the tenant's scheduled
    and running dispatches and its pending proposals, as this instance knows them (loaded at
    start, then from every instance's events). Reads only."""

    def __init__(self) -> None:
        self._dispatches: dict[str, dict[str, Any]] = {}
        self._proposals: dict[str, dict[str, Any]] = {}

    async def load(self, store: Store) -> None:
        for _, doc in await store.list_docs(KIND):
            self._keep_dispatch(doc)
        for _, doc in await store.list_docs("vpp.proposal"):
            self._keep_proposal(doc)

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler."""
        if isinstance(event, DispatchChanged):
            self._keep_dispatch(event.dispatch)
        elif isinstance(event, ProposalChanged):
            self._keep_proposal(event.proposal)

    def _keep_dispatch(self, doc: dict[str, Any]) -> None:
        current = self._dispatches.get(doc["id"])
        if current is not None and current["version"] > doc["version"]:
            return
        if doc["state"] in ENDED:
            self._dispatches.pop(doc["id"], None)
        else:
            self._dispatches[doc["id"]] = doc

    def _keep_proposal(self, doc: dict[str, Any]) -> None:
        current = self._proposals.get(doc["id"])
        if current is not None and current["version"] > doc["version"]:
            return
        if doc["state"] == "pending":
            self._proposals[doc["id"]] = doc
        else:
            self._proposals.pop(doc["id"], None)

    def snapshot(self, tenant_id: str) -> dict[str, Any]:
        return {
            "dispatches": sorted(
                (d for d in self._dispatches.values() if d["tenant"] == tenant_id),
                key=lambda d: d["id"],
            ),
            "proposals": sorted(
                (p for p in self._proposals.values() if p["tenant"] == tenant_id),
                key=lambda p: (p["created"], p["id"]),
            ),
        }
