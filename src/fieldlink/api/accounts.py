"""Sign-in, tokens, users and device credentials (docs/security.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from fieldlink.api.auth import SESSION_COOKIE
from fieldlink.api.common import Callers, read_body_limited
from fieldlink.api.context import ApiContext
from fieldlink.core.access import Principal, Role, can_manage
from fieldlink.core.closecodes import CloseCode
from fieldlink.core.codec import decode_json
from fieldlink.core.errors import Forbidden, NotFound, ValidationError
from fieldlink.core.model import is_valid_device_id


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["auth"])
    identity, limits, auth = ctx.identity, ctx.limits, ctx.auth

    @api.post("/api/auth/token")
    async def login(request: Request) -> dict[str, Any]:
        """Password login: ``{"username", "password"}`` (JSON or form) -> access and refresh
        tokens. 401 ``invalid_credentials`` for any mismatch."""
        body = await read_body_limited(request, 4096)
        if request.headers.get("content-type", "").startswith("application/x-www-form"):
            form = parse_qs(body.decode("utf-8", "replace"))
            username = form.get("username", [""])[0]
            password = form.get("password", [""])[0]
        else:
            data = decode_json(body or b"{}", limits)
            data = data if isinstance(data, dict) else {}
            username, password = str(data.get("username", "")), str(data.get("password", ""))
        auth.rate_limit(f"login:{username}")
        return await identity.login(username, password)

    @api.post("/api/auth/refresh")
    async def refresh(request: Request) -> dict[str, Any]:
        data = decode_json(await read_body_limited(request, 8192) or b"{}", limits)
        token = data.get("refresh_token") if isinstance(data, dict) else None
        if not isinstance(token, str):
            raise ValidationError("invalid_token", "send {'refresh_token': ...}", "$.refresh_token")
        return await identity.refresh(token)

    @api.post("/api/ws-ticket")
    async def ws_ticket(p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        """A single-use ticket for ``/ws?ticket=...`` (valid 30 s), for clients that cannot
        send headers. Tokens themselves are never accepted in URLs."""
        return {"ticket": identity.ws_ticket(p), "expires_in": 30}

    @api.get("/api/me")
    async def me(p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        return {
            "subject": p.subject,
            "tenant": p.tenant_id,
            "role": str(p.role),
            "expires": p.expires_ms,
        }

    @api.get("/login", include_in_schema=False)
    async def login_link(code: str = "") -> Response:
        """The one-time link printed at start: sets the session cookie and opens the page."""
        session = identity.redeem_login_code(code)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, session, max_age=12 * 3600, httponly=True, samesite="strict", path="/"
        )
        return response

    @api.post("/api/users", status_code=201)
    async def create_user(
        request: Request, p: Principal = Depends(callers.admin)
    ) -> dict[str, Any]:
        """``{"username", "password", "role", "tenant"?}``. A tenant admin creates users in
        its own tenant; the system administrator in any."""
        data = decode_json(await read_body_limited(request, 4096) or b"{}", limits)
        if not isinstance(data, dict):
            raise ValidationError("invalid_user", "send a JSON object")
        tenant = str(data.get("tenant") or p.tenant_id)
        if not can_manage(p, tenant):
            raise Forbidden("you may not manage this tenant")
        try:
            role = Role(str(data.get("role", "viewer")))
        except ValueError:
            raise ValidationError("invalid_role", "role is viewer, operator or admin") from None
        username = str(data.get("username", ""))
        await identity.create_user(username, str(data.get("password", "")), role, tenant)
        return {"username": username, "tenant": tenant, "role": str(role)}

    @api.post("/api/users/{username}/disable")
    async def disable_user(username: str, p: Principal = Depends(callers.admin)) -> dict[str, Any]:
        """Refuse the user's tokens and close its open WebSocket connections (4503)."""
        tenant = await identity.user_tenant(username)
        if tenant is None or not can_manage(p, tenant):
            raise NotFound(f"no user {username!r}")
        await identity.disable_user(username)
        closed = ctx.sessions.close_subject(username, CloseCode.REVOKED, "access revoked")
        return {"username": username, "disabled": True, "sessions_closed": closed}

    @api.post("/api/devices/{device_id}/credentials", status_code=201)
    async def device_credentials(
        device_id: str, request: Request, p: Principal = Depends(callers.admin)
    ) -> dict[str, Any]:
        """A new key for a device (shown once), assigning it to a tenant: for HTTP Basic
        ``device_id:key`` and, with per-device broker credentials, the MQTT password."""
        data = decode_json(await read_body_limited(request, 4096) or b"{}", limits)
        tenant = str((data if isinstance(data, dict) else {}).get("tenant") or p.tenant_id)
        if not is_valid_device_id(device_id) or not is_valid_device_id(tenant):
            raise ValidationError("invalid_device_id", "not a valid device or tenant id")
        if not can_manage(p, tenant):
            raise Forbidden("you may not manage this tenant")
        existing = ctx.registry.get(device_id)
        if existing is not None and not can_manage(p, existing.tenant_id):
            raise NotFound(f"device {device_id!r} is not registered")
        key = await identity.create_device_credentials(device_id, tenant)
        ctx.registry.assign_tenant(device_id, tenant)
        return {"device_id": device_id, "tenant": tenant, "key": key}

    return api
