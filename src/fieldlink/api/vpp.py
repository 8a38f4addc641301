"""The virtual power plant over REST (docs/vpp.md): fleet state and history, dispatches and
their log, the load forecast, demand-response events, agent proposals and the approval
policy. Every route is tenant-scoped; a system administrator names a tenant with
``?tenant=``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from fieldlink.api.common import Callers, parse_time, read_body_limited
from fieldlink.api.context import ApiContext
from fieldlink.core import buckets
from fieldlink.core.access import Principal, can_command, can_manage, can_read
from fieldlink.core.codec import decode_json
from fieldlink.core.errors import Forbidden, ValidationError
from fieldlink.core.vpp import ProposalState
from fieldlink.services.agents import parse_dr_event

MAX_HISTORY_BUCKETS = 10_000


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["vpp"])
    vpp = ctx.vpp

    def scope(p: Principal, tenant: str | None) -> str:
        """The tenant a request is about: the caller's, or (system administrator) ``tenant``."""
        chosen = tenant if tenant and p.is_system_admin else p.tenant_id
        if not can_read(p, chosen):
            raise Forbidden("you may not read this tenant")
        return chosen

    def operator(p: Principal, tenant_id: str) -> None:
        if not can_command(p, tenant_id):
            raise Forbidden("this needs the operator or admin role", code="forbidden")

    async def body_of(request: Request) -> Any:
        raw = await read_body_limited(request, ctx.limits.max_payload_bytes)
        return decode_json(raw or b"{}", ctx.limits)

    # ---- the fleet --------------------------------------------------------------------------

    @api.get("/api/vpp/state")
    async def state(
        p: Principal = Depends(callers.caller), tenant: str | None = Query(None)
    ) -> dict[str, Any]:
        """The live fleet aggregate: totals and per group (the ``aggregate`` event's data)."""
        return vpp.aggregate.state(scope(p, tenant))

    @api.get("/api/vpp/history")
    async def history(
        p: Principal = Depends(callers.caller),
        start: str | None = Query(None, description="epoch ms or ISO 8601; default end - 24 h"),
        end: str | None = Query(None, description="epoch ms or ISO 8601; default now"),
        bucket: str = Query("1m", description="whole minutes: 1m, 15m, 1h, 1d"),
        tenant: str | None = Query(None),
    ) -> dict[str, Any]:
        """True fleet power per bucket: the sum over nodes of each node's average power
        (per minute, averaged over the bucket's minutes), the nodes and capacity reporting,
        and ``coverage`` (reporting capacity / the fleet's capacity now)."""
        tenant_id = scope(p, tenant)
        end_ms = parse_time(end, ctx.clock_ms() + 1, "end")
        start_ms = parse_time(start, end_ms - 86_400_000, "start")
        bucket_ms = buckets.parse_bucket(bucket)
        start_ms, end_ms = buckets.check_fleet_query(start_ms, end_ms, bucket_ms, "avg")
        points = await ctx.store.fleet_power(start_ms, end_ms, bucket_ms, tenant_id)
        capacity = vpp.aggregate.capacity_kw(tenant_id)
        for point in points:
            point["coverage"] = (
                round(min(1.0, point["capacity_kw"] / capacity), 4) if capacity else None
            )
        return {
            "tenant": tenant_id,
            "start": start_ms,
            "end": end_ms,
            "bucket": bucket,
            "capacity_kw": capacity,
            "points": points,
        }

    @api.get("/api/vpp/forecast")
    async def forecast(
        p: Principal = Depends(callers.caller),
        hours: int = Query(24, ge=1, le=72),
        tenant: str | None = Query(None),
    ) -> dict[str, Any]:
        """The next ``hours`` of fleet power, from up to 7 days of history (docs/vpp.md)."""
        return await vpp.agents.forecast(scope(p, tenant), hours)

    # ---- dispatches -------------------------------------------------------------------------

    @api.post("/api/vpp/dispatch", status_code=202)
    async def dispatch(
        request: Request, p: Principal = Depends(callers.caller), tenant: str | None = Query(None)
    ) -> dict[str, Any]:
        """``{target_kw, duration_s, start?, mode?}``: discharge (positive) or charge
        (negative) ``target_kw`` for ``duration_s``, now or at ``start``. Returns the log
        entry at once; follow it on the ``dispatch`` channel or by its id."""
        tenant_id = scope(p, tenant)
        operator(p, tenant_id)
        body = await body_of(request)
        if not isinstance(body, dict):
            raise ValidationError("bad_body", "send {target_kw, duration_s}", "$")
        mode = body.get("mode", "proportional")
        if mode != "proportional":
            raise ValidationError("invalid_mode", "mode is 'proportional'", "$.mode")
        start = body.get("start")
        start_ms = parse_time(str(start), 0, "$.start") if start is not None else None
        return await vpp.dispatches.request(
            tenant_id=tenant_id,
            target_kw=body.get("target_kw"),
            duration_s=body.get("duration_s"),
            start_ms=start_ms,
            requested_by=p.subject,
        )

    @api.get("/api/vpp/dispatches")
    async def dispatches(
        p: Principal = Depends(callers.caller),
        limit: int = Query(100, ge=1, le=1000),
        tenant: str | None = Query(None),
    ) -> dict[str, Any]:
        """The dispatch log, newest first."""
        found = await vpp.dispatches.list_dispatches(scope(p, tenant), limit)
        return {"dispatches": found}

    @api.get("/api/vpp/dispatches/{dispatch_id}")
    async def one_dispatch(dispatch_id: str, p: Principal = Depends(callers.caller)) -> Any:
        return await vpp.dispatches.get(dispatch_id, p)

    @api.post("/api/vpp/dispatches/{dispatch_id}/cancel")
    async def cancel(
        dispatch_id: str, request: Request, p: Principal = Depends(callers.caller)
    ) -> Any:
        """``{"reason"?}``: stop a scheduled or running dispatch (409 once it has ended)."""
        found = await vpp.dispatches.get(dispatch_id, p)
        operator(p, found["tenant"])
        body = await body_of(request)
        reason = body.get("reason", "") if isinstance(body, dict) else ""
        if not isinstance(reason, str) or len(reason) > 1000:
            raise ValidationError("invalid_reason", "reason is a short string", "$.reason")
        return await vpp.dispatches.cancel(dispatch_id, p.subject, reason)

    # ---- demand response --------------------------------------------------------------------

    @api.post("/api/vpp/dr-events", status_code=201)
    async def add_dr_event(
        request: Request, p: Principal = Depends(callers.caller), tenant: str | None = Query(None)
    ) -> dict[str, Any]:
        """``{start, end, reduce_kw}``: a demand-response event; the demand-response agent
        proposes the dispatch that meets it."""
        tenant_id = scope(p, tenant)
        operator(p, tenant_id)
        body = await body_of(request)

        def when(value: Any, path: str) -> int:
            if value is None:
                raise ValidationError("invalid_time", "required: epoch ms or ISO 8601", path)
            return parse_time(str(value), 0, path)

        event = parse_dr_event(body, ctx.clock_ms(), when)
        return await vpp.agents.add_dr_event(tenant_id, event, p.subject)

    @api.get("/api/vpp/dr-events")
    async def dr_events(
        p: Principal = Depends(callers.caller), tenant: str | None = Query(None)
    ) -> dict[str, Any]:
        return {"events": await vpp.agents.dr_events(scope(p, tenant))}

    # ---- proposals and policy ---------------------------------------------------------------

    @api.get("/api/vpp/proposals")
    async def proposals(
        p: Principal = Depends(callers.caller),
        state: str | None = Query(None, description="pending, approved, executed, ..."),
        limit: int = Query(100, ge=1, le=1000),
        tenant: str | None = Query(None),
    ) -> dict[str, Any]:
        if state is not None and state not in tuple(ProposalState):
            raise ValidationError(
                "invalid_state", f"state is one of {', '.join(ProposalState)}", "state"
            )
        found = await vpp.proposals.list_proposals(scope(p, tenant), state, limit)
        return {"proposals": found}

    @api.get("/api/vpp/proposals/{proposal_id}")
    async def one_proposal(proposal_id: str, p: Principal = Depends(callers.caller)) -> Any:
        return await vpp.proposals.get(proposal_id, p)

    async def decide(proposal_id: str, request: Request, p: Principal, approve: bool) -> Any:
        body = await body_of(request)
        note = body.get("note") if isinstance(body, dict) else None
        return await vpp.proposals.decide(proposal_id, p, approve, note)

    @api.post("/api/vpp/proposals/{proposal_id}/approve")
    async def approve(
        proposal_id: str, request: Request, p: Principal = Depends(callers.caller)
    ) -> Any:
        """Approve a pending proposal and execute it (once, whoever else approves too);
        409 ``proposal_decided`` when it was decided already or has expired."""
        return await decide(proposal_id, request, p, True)

    @api.post("/api/vpp/proposals/{proposal_id}/reject")
    async def reject(
        proposal_id: str, request: Request, p: Principal = Depends(callers.caller)
    ) -> Any:
        return await decide(proposal_id, request, p, False)

    @api.get("/api/vpp/policy")
    async def policy(
        p: Principal = Depends(callers.caller), tenant: str | None = Query(None)
    ) -> dict[str, Any]:
        return await vpp.proposals.policy(scope(p, tenant))

    @api.put("/api/vpp/policy")
    async def set_policy(
        request: Request, p: Principal = Depends(callers.caller), tenant: str | None = Query(None)
    ) -> dict[str, Any]:
        """``{approval: "auto"|"manual", expire_s?}`` (tenant admins)."""
        tenant_id = scope(p, tenant)
        if not can_manage(p, tenant_id):
            raise Forbidden("this needs the admin role", code="forbidden")
        return await vpp.proposals.set_policy(tenant_id, await body_of(request), p.subject)

    @api.get("/api/vpp/agents")
    async def agents(p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        """Whether this instance runs the agents (one instance does at a time)."""
        return {"leader": vpp.agents.leader, "instance": vpp.agents.instance_id}

    return api
