"""Alerts and alert rules over REST (docs/alerts.md): list, acknowledge, rule CRUD, backtest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from fieldlink.api.common import (
    Callers,
    parse_time,
    read_body_limited,
    readable_device,
    readable_records,
)
from fieldlink.api.context import ApiContext
from fieldlink.core.access import Principal, can_command, can_manage
from fieldlink.core.alerts import AlertState
from fieldlink.core.codec import decode_json
from fieldlink.core.errors import Forbidden, ValidationError
from fieldlink.core.rules import parse_rule

MAX_BACKTEST_DAYS = 31


def _states(state: str | None) -> list[str]:
    if state is None:
        return []
    chosen = [s for s in state.split(",") if s]
    for s in chosen:
        if s not in tuple(AlertState):
            raise ValidationError(
                "invalid_state", "state is active, acknowledged or cleared", "state"
            )
    return chosen


def _operator(p: Principal, tenant_id: str) -> None:
    if not can_command(p, tenant_id):
        raise Forbidden("your role may not change alerts or rules", code="forbidden")


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["alerts"])
    alerts, limits = ctx.alerts, ctx.limits

    async def body_of(request: Request) -> Any:
        return decode_json(
            await read_body_limited(request, limits.max_payload_bytes) or b"{}", limits
        )

    @api.get("/api/alerts")
    async def list_alerts(
        p: Principal = Depends(callers.caller),
        state: str | None = Query(
            None, description="active, acknowledged, cleared (comma-separated)"
        ),
        device: str | None = Query(None),
        level: str | None = Query(None),
        since: str | None = Query(None, description="changed since: epoch ms or ISO 8601"),
        tenant: str | None = Query(None, description="system administrator: one tenant"),
        limit: int = Query(500, ge=1, le=5000),
    ) -> dict[str, Any]:
        scope = tenant if p.is_system_admin else p.tenant_id
        since_ms = parse_time(since, 0, "since") if since else None
        found = await ctx.store.list_alerts(
            tenant_id=scope,
            device_id=device,
            states=_states(state),
            level=level,
            since_ms=since_ms,
            limit=limit,
        )
        return {"alerts": [a.to_dict() for a in found]}

    @api.get("/api/devices/{device_id}/alerts")
    async def device_alerts(
        device_id: str,
        p: Principal = Depends(callers.caller),
        state: str | None = Query(None),
        limit: int = Query(500, ge=1, le=5000),
    ) -> dict[str, Any]:
        readable_records(ctx.registry.owner_of(device_id), device_id, p)
        found = await ctx.store.list_alerts(device_id=device_id, states=_states(state), limit=limit)
        return {"device_id": device_id, "alerts": [a.to_dict() for a in found]}

    @api.post("/api/devices/{device_id}/alerts/{alert_id}/acknowledge")
    async def acknowledge(
        device_id: str, alert_id: str, request: Request, p: Principal = Depends(callers.caller)
    ) -> dict[str, Any]:
        """``{"note"?}``: the alert, acknowledged by the caller (an event goes to clients).
        404 alike for unknown alerts and other tenants'; 409 ``alert_cleared``."""
        device = readable_device(ctx.views, device_id, p)
        _operator(p, device["tenant"])
        data = await body_of(request)
        note = data.get("note") if isinstance(data, dict) else None
        if note is not None and (not isinstance(note, str) or len(note) > 1000):
            raise ValidationError(
                "invalid_note", "note is a string of up to 1000 characters", "$.note"
            )
        return (await alerts.acknowledge(device_id, alert_id, p, note)).to_dict()

    # ---- rules ------------------------------------------------------------------------------

    @api.get("/api/alert-rules")
    async def list_rules(p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        return {"rules": [r.to_dict() for r in alerts.rules_of(p)]}

    @api.get("/api/alert-rules/{rule_id}")
    async def get_rule(rule_id: str, p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        return alerts.rule(rule_id, p).to_dict()

    def rule_tenant(p: Principal, data: Any) -> str:
        tenant = str((data.get("tenant") if isinstance(data, dict) else None) or p.tenant_id)
        if tenant != p.tenant_id and not can_manage(p, tenant):
            raise Forbidden("you may not manage this tenant")
        _operator(p, tenant)
        return tenant

    @api.post("/api/alert-rules", status_code=201)
    async def create_rule(
        request: Request, p: Principal = Depends(callers.caller)
    ) -> dict[str, Any]:
        """``{"metric", "op", "levels": [{"name", "threshold"}], "clear", "for_s"?, "scope"?,
        "name"?, "tenant"?}``; 422 with the field path for a bad rule."""
        data = await body_of(request)
        rule = await alerts.put_rule(data, rule_tenant(p, data))
        return rule.to_dict()

    @api.put("/api/alert-rules/{rule_id}")
    async def replace_rule(
        rule_id: str, request: Request, p: Principal = Depends(callers.caller)
    ) -> dict[str, Any]:
        current = alerts.rule(rule_id, p)
        _operator(p, current.tenant_id)
        return (await alerts.put_rule(await body_of(request), current.tenant_id, rule_id)).to_dict()

    @api.delete("/api/alert-rules/{rule_id}")
    async def delete_rule(rule_id: str, p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        current = alerts.rule(rule_id, p)
        _operator(p, current.tenant_id)
        await alerts.delete_rule(rule_id)
        return {"id": rule_id, "deleted": True}

    @api.post("/api/alert-rules/backtest")
    async def backtest(request: Request, p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        """``{"rule": {...}, "start"?, "end"?}`` (default: the last 7 days): the alerts the
        rule would have raised over stored history, without storing or sending anything."""
        data = await body_of(request)
        if not isinstance(data, dict):
            raise ValidationError("invalid_body", "send {rule, start?, end?}")
        tenant = str(data.get("tenant") or p.tenant_id)
        if tenant != p.tenant_id and not can_manage(p, tenant):
            raise Forbidden("you may not manage this tenant")
        try:
            rule = parse_rule(data.get("rule"), rule_id="backtest", tenant_id=tenant)
        except ValidationError as exc:
            exc.path = "$.rule" + exc.path[1:]
            raise
        end_ms = parse_time(data.get("end"), ctx.clock_ms() + 1, "end")
        start_ms = parse_time(data.get("start"), end_ms - 7 * 86_400_000, "start")
        if not 0 <= end_ms - start_ms <= MAX_BACKTEST_DAYS * 86_400_000:
            raise ValidationError(
                "invalid_range", f"start..end spans 0 to {MAX_BACKTEST_DAYS} days", "$.start"
            )
        devices = alerts.in_scope(rule)
        found = await alerts.backtest(rule, devices, start_ms, end_ms)
        return {"start": start_ms, "end": end_ms, "devices": len(devices), "alerts": found}

    return api
