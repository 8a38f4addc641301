"""Sign-in, tokens, users and device credentials (docs/security.md).

Two ways to sign in: tokens for programs (``/api/auth/token``, refreshed with
``/api/auth/refresh``) and the dashboard's session cookie, set by the password form
(``/api/auth/login``) or by the one-time admin link (``/login?code=``), and cleared by
``/api/auth/logout``. Both password routes share the same rate limit and the same answer for a
wrong user name or a wrong password."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from fieldlink.api.auth import SESSION_COOKIE
from fieldlink.api.common import Callers, read_body_limited
from fieldlink.api.context import ApiContext
from fieldlink.core.access import Principal, Role, can_manage
from fieldlink.core.closecodes import CloseCode
from fieldlink.core.codec import decode_json
from fieldlink.core.errors import Forbidden, NotFound, ValidationError
from fieldlink.core.model import is_valid_device_id
from fieldlink.services.identity import SESSION_TTL_S


def set_session_cookie(response: Response, session: str, request: Request) -> None:
    """The dashboard's session cookie: HttpOnly (no script reads it), SameSite=Strict (no
    other site's request carries it), ``Secure`` when the page came over HTTPS."""
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


async def read_credentials(request: Request, limits: Any) -> tuple[str, str]:
    """``(username, password)`` from a JSON or form body (at most 4 KiB)."""
    body = await read_body_limited(request, 4096)
    if request.headers.get("content-type", "").startswith("application/x-www-form"):
        form = parse_qs(body.decode("utf-8", "replace"))
        return form.get("username", [""])[0], form.get("password", [""])[0]
    data = decode_json(body or b"{}", limits)
    data = data if isinstance(data, dict) else {}
    return str(data.get("username", "")), str(data.get("password", ""))


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["auth"])
    identity, limits, auth = ctx.identity, ctx.limits, ctx.auth

    @api.post("/api/auth/token")
    async def login(request: Request) -> dict[str, Any]:
        """Password login: ``{"username", "password"}`` (JSON or form) -> access and refresh
        tokens. 401 ``invalid_credentials`` for any mismatch."""
        username, password = await read_credentials(request, limits)
        auth.rate_limit(f"login:{username}")
        return await identity.login(username, password)

    @api.post("/api/auth/login")
    async def session_login(request: Request) -> JSONResponse:
        """The dashboard's sign-in form: ``{"username", "password"}`` (JSON or form) -> the
        session cookie (as ``/login?code=`` sets it) and who signed in: ``{"subject",
        "tenant", "role", "expires"}``. 401 ``invalid_credentials`` for any mismatch; a
        browser's ``Origin`` must be allowed (no signing a visitor in from another site)."""
        auth.check_origin(request.headers.get("origin"))
        username, password = await read_credentials(request, limits)
        auth.rate_limit(f"login:{username}")
        pair = await identity.login(username, password)
        user = identity.tokens.verify(pair["access_token"], ("access",))
        session = identity.tokens.issue(
            user.subject, user.tenant_id, user.role, "session", SESSION_TTL_S
        )
        signed_in = identity.tokens.verify(session, ("session",))
        response = JSONResponse(
            {
                "subject": signed_in.subject,
                "tenant": signed_in.tenant_id,
                "role": str(signed_in.role),
                "expires": signed_in.expires_ms,
            }
        )
        set_session_cookie(response, session, request)
        return response

    @api.post("/api/auth/logout", status_code=204)
    async def session_logout(request: Request) -> Response:
        """Clear the session cookie (204, signed in or not). The page closes its WebSocket
        itself; the token in the cookie is not revoked (docs/security.md, "Not done yet")."""
        auth.check_origin(request.headers.get("origin"))
        response = Response(status_code=204)
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

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
    async def login_link(request: Request, code: str = "") -> Response:
        """The one-time link printed at start: sets the session cookie and opens the page."""
        session = identity.redeem_login_code(code)
        response = RedirectResponse("/", status_code=303)
        set_session_cookie(response, session, request)
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
