"""Commands to devices over REST: send (optionally waiting for the outcome), get, list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from fieldlink.api.common import Callers, read_body_limited, readable_records
from fieldlink.api.context import ApiContext
from fieldlink.core.access import Principal, can_read
from fieldlink.core.codec import decode_json
from fieldlink.core.errors import NotFound
from fieldlink.services.commands import UnknownDevice


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["commands"])
    commands = ctx.commands

    @api.post("/api/devices/{device_id}/commands", status_code=202)
    async def send_command(
        device_id: str,
        request: Request,
        p: Principal = Depends(callers.caller),
        wait: bool = Query(False, description="answer with the outcome (at most the deadline)"),
    ) -> JSONResponse:
        """Send a command: 202 with the command as it stands, or with ``wait=true`` 200 once
        it reached a terminal state. 404 ``unknown_device`` for an unknown device (logged as
        ``rejected``) or another tenant's; 403 for a role that may not send commands."""
        commands.authorize(p, device_id)
        body = await read_body_limited(request, ctx.limits.max_payload_bytes)
        parsed = commands.parse(decode_json(body or b"null", ctx.limits), device_id=device_id)
        command = await commands.submit(parsed)
        if command.reason == "unknown_device":
            raise UnknownDevice(f"device {device_id!r} is not registered")
        if wait:
            command = await commands.wait(command)
        code = 200 if command.terminal else 202
        return JSONResponse(command.to_dict(), status_code=code)

    @api.get("/api/commands/{command_id}")
    async def get_command(
        command_id: str, p: Principal = Depends(callers.caller)
    ) -> dict[str, Any]:
        command = await commands.get(command_id)
        owner = ctx.registry.owner_of(command.device_id)
        if owner is None or not can_read(p, owner):
            raise NotFound(f"command {command_id!r} not found")
        return command.to_dict()

    @api.get("/api/devices/{device_id}/commands")
    async def device_commands(
        device_id: str,
        p: Principal = Depends(callers.caller),
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """The device's command log, newest first."""
        readable_records(ctx.registry.owner_of(device_id), device_id, p)
        log_rows = await ctx.store.list_commands(device_id, limit)
        return {"device_id": device_id, "commands": [c.to_dict() for c in log_rows]}

    return api
