"""The REST API (OpenAPI at /docs). Errors are JSON ``{"error": {"code", "message", "path"?}}``
with no stack traces."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fieldlink import __version__
from fieldlink.api.auth import SESSION_COOKIE, RateLimited
from fieldlink.api.metrics import exposition, registry_for
from fieldlink.core import buckets
from fieldlink.core.access import Principal, Role, can_command, can_manage, can_read
from fieldlink.core.codec import decode_json
from fieldlink.core.errors import FieldlinkError, NotFound, PayloadTooLarge, ValidationError
from fieldlink.core.model import is_valid_device_id
from fieldlink.services.identity import Forbidden

if TYPE_CHECKING:
    from fieldlink.app.wiring import Runtime

log = logging.getLogger("fieldlink.api")


def _caller(request: Request) -> Principal:
    principal: Principal = request.app.state.auth.principal(request)
    return principal


def _admin(request: Request) -> Principal:
    principal = _caller(request)
    if principal.role is not Role.ADMIN:
        raise Forbidden("this needs the admin role", code="forbidden")
    return principal


Caller = Annotated[Principal, Depends(_caller)]
Admin = Annotated[Principal, Depends(_admin)]


def error_response(exc: FieldlinkError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


def parse_time(value: str | None, default_ms: int, name: str) -> int:
    """Epoch milliseconds, epoch seconds (< 1e11) or ISO 8601."""
    if value is None or value == "":
        return default_ms
    try:
        number = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                "invalid_time", f"{name} must be epoch ms or ISO 8601", name
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    return int(number if number >= 1e11 else number * 1000)


async def read_body_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing with 413 before reading more than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="fieldlink",
        version=__version__,
        description="Real-time device hub. Live events: WebSocket at /ws (docs/protocol.md).",
    )
    registry = registry_for(runtime)
    ingestor = runtime.ingestor
    auth = runtime.auth
    app.state.auth = auth
    views = runtime.views
    limits = runtime.settings.limits

    @app.exception_handler(FieldlinkError)
    async def on_fieldlink_error(request: Request, exc: FieldlinkError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.http_status == 503 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        if exc.http_status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(exc, headers)

    @app.exception_handler(RequestValidationError)
    async def on_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        path = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(
            ValidationError("invalid_parameter", str(first.get("msg", "invalid")), path)
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        err = FieldlinkError(str(exc.detail), code=code)
        err.http_status = exc.status_code
        return error_response(err)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(FieldlinkError("internal error"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        page = resources.files("fieldlink.web").joinpath("index.html").read_text()
        return HTMLResponse(page)

    @app.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        body = runtime.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics(_: Admin) -> Response:
        return Response(exposition(registry), media_type="text/plain; version=0.0.4")

    @app.post("/api/telemetry", tags=["ingest"], status_code=200)
    async def post_telemetry(request: Request) -> JSONResponse:
        """One record or a list: ``{"device_id": ..., "ts"?, "seq"?, "meta"?, ...metrics}``.
        2xx means every accepted record is committed; invalid records are listed in ``errors``
        (status 207 when some were accepted, 422 when none were)."""
        device_id, tenant_id = await auth.device(request)
        body = await read_body_limited(request, limits.max_payload_bytes)
        result = await ingestor.ingest_http(body, device_id, tenant_id)
        status = 207 if result.errors else 200
        return JSONResponse(
            {
                "accepted": result.accepted,
                "stored": result.stored,
                "duplicates": result.duplicates,
                "errors": result.errors,
            },
            status_code=status,
        )

    @app.get("/api/devices", tags=["devices"])
    async def list_devices(p: Caller) -> dict[str, Any]:
        return {"devices": views.list(None if p.is_system_admin else p.tenant_id)}

    def known(device_id: str, principal: Principal) -> dict[str, Any]:
        """The device's summary; 404 alike for unknown devices and other tenants' devices."""
        device = views.get(device_id)
        if device is None or not can_read(principal, device["tenant"]):
            raise NotFound(f"device {device_id!r} is not registered")
        return device

    @app.get("/api/devices/{device_id}", tags=["devices"])
    async def get_device(device_id: str, p: Caller) -> dict[str, Any]:
        return known(device_id, p)

    @app.get("/api/devices/{device_id}/telemetry", tags=["devices"])
    async def device_telemetry(
        device_id: str,
        p: Caller,
        start: str | None = Query(None, description="epoch ms or ISO 8601; default end - 1 h"),
        end: str | None = Query(None, description="epoch ms or ISO 8601; default now"),
        limit: int = Query(1000, ge=1, le=100_000),
        bucket: str | None = Query(None, description="10s, 1m, 15m, 1h, 1d"),
        agg: str = Query("avg", description="avg|min|max|last|count (with bucket)"),
        order: str = Query("asc", pattern="^(asc|desc)$"),
    ) -> dict[str, Any]:
        known(device_id, p)
        end_ms = parse_time(end, ingestor.clock_ms() + 1, "end")
        start_ms = parse_time(start, end_ms - 3_600_000, "start")
        if bucket is not None:
            bucket_ms = buckets.parse_bucket(bucket)
            buckets.check_aggregate(agg)
            buckets.check_range(start_ms, end_ms, bucket_ms)
            rows = await runtime.store.query_buckets(device_id, start_ms, end_ms, bucket_ms, agg)
            return {
                "device_id": device_id,
                "start": start_ms,
                "end": end_ms,
                "bucket": bucket,
                "agg": agg,
                "points": rows[:limit],
            }
        buckets.check_range(start_ms, end_ms, None)
        records = await runtime.store.query_range(
            device_id, start_ms, end_ms, limit, newest_first=order == "desc"
        )
        return {
            "device_id": device_id,
            "start": start_ms,
            "end": end_ms,
            "points": [r.to_event_data() for r in records],
        }

    commands = runtime.commands

    @app.post("/api/devices/{device_id}/commands", tags=["commands"], status_code=202)
    async def send_command(
        device_id: str,
        request: Request,
        p: Caller,
        wait: bool = Query(False, description="answer with the outcome (at most the deadline)"),
    ) -> JSONResponse:
        """Send a command: 202 with the command as it stands, or with ``wait=true`` 200 once
        it reached a terminal state. 404 for an unknown device (logged as ``rejected``)."""
        device = known(device_id, p)
        if not can_command(p, device["tenant"]):
            raise Forbidden("your role may not send commands", code="forbidden")
        body = await read_body_limited(request, limits.max_payload_bytes)
        parsed = commands.parse(decode_json(body or b"null", limits), device_id=device_id)
        command = await commands.submit(parsed)
        if command.reason == "unknown_device":
            raise NotFound(f"device {device_id!r} is not registered")
        if wait:
            command = await commands.wait(command)
        code = 200 if command.terminal else 202
        return JSONResponse(command.to_dict(), status_code=code)

    @app.get("/api/commands/{command_id}", tags=["commands"])
    async def get_command(command_id: str, p: Caller) -> dict[str, Any]:
        command = await commands.get(command_id)
        device = views.get(command.device_id)
        if device is None or not can_read(p, device["tenant"]):
            raise NotFound(f"command {command_id!r} not found")
        return command.to_dict()

    @app.get("/api/devices/{device_id}/commands", tags=["commands"])
    async def device_commands(
        device_id: str, p: Caller, limit: int = Query(100, ge=1, le=1000)
    ) -> dict[str, Any]:
        """The device's command log, newest first."""
        known(device_id, p)
        log_rows = await runtime.store.list_commands(device_id, limit)
        return {"device_id": device_id, "commands": [c.to_dict() for c in log_rows]}

    @app.get("/api/fleet/telemetry", tags=["fleet"])
    async def fleet_telemetry(
        p: Caller,
        start: str | None = Query(None, description="epoch ms or ISO 8601; default end - 24 h"),
        end: str | None = Query(None, description="epoch ms or ISO 8601; default now"),
        bucket: str = Query("1m", description="whole minutes: 1m, 15m, 1h, 1d"),
        agg: str = Query("avg", description="avg|sum|min|max|count"),
        metric: list[str] = Query([], description="only these metrics (repeatable)"),
        tenant: str | None = Query(None, description="system administrator: one tenant"),
    ) -> dict[str, Any]:
        """Your tenant's devices' numeric metrics per bucket (the fleet chart). The range is
        widened to whole minutes. The system administrator sees every tenant together, or
        one with ``tenant``."""
        scope = tenant if p.is_system_admin else p.tenant_id
        end_ms = parse_time(end, ingestor.clock_ms() + 1, "end")
        start_ms = parse_time(start, end_ms - 86_400_000, "start")
        bucket_ms = buckets.parse_bucket(bucket)
        start_ms, end_ms = buckets.check_fleet_query(start_ms, end_ms, bucket_ms, agg)
        rows = await runtime.store.query_fleet(
            start_ms, end_ms, bucket_ms, agg, tuple(metric), scope
        )
        return {
            "start": start_ms,
            "end": end_ms,
            "bucket": bucket,
            "agg": agg,
            "points": rows,
        }

    @app.get("/api/devices/{device_id}/telemetry/latest", tags=["devices"])
    async def device_latest(device_id: str, p: Caller) -> dict[str, Any]:
        known(device_id, p)
        record = runtime.cache.get_latest(device_id, ingestor.clock_ms())
        source = "cache"
        if record is None:
            record = await runtime.store.latest(device_id)
            source = "store"
        if record is None:
            raise NotFound(f"device {device_id!r} has no telemetry yet", code="no_telemetry")
        return {"device_id": device_id, "source": source, "latest": record.to_event_data()}

    # ---- identity ----------------------------------------------------------------------

    identity = runtime.identity

    @app.post("/api/auth/token", tags=["auth"])
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

    @app.post("/api/auth/refresh", tags=["auth"])
    async def refresh(request: Request) -> dict[str, Any]:
        data = decode_json(await read_body_limited(request, 8192) or b"{}", limits)
        token = data.get("refresh_token") if isinstance(data, dict) else None
        if not isinstance(token, str):
            raise ValidationError("invalid_token", "send {'refresh_token': ...}", "$.refresh_token")
        return await identity.refresh(token)

    @app.post("/api/ws-ticket", tags=["auth"])
    async def ws_ticket(p: Caller) -> dict[str, Any]:
        """A single-use ticket for ``/ws?ticket=...`` (valid 30 s), for clients that cannot
        send headers. Tokens themselves are never accepted in URLs."""
        return {"ticket": identity.ws_ticket(p), "expires_in": 30}

    @app.get("/api/me", tags=["auth"])
    async def me(p: Caller) -> dict[str, Any]:
        return {
            "subject": p.subject,
            "tenant": p.tenant_id,
            "role": str(p.role),
            "expires": p.expires_ms,
        }

    @app.get("/login", include_in_schema=False)
    async def login_link(code: str = "") -> Response:
        """The one-time link printed at start: sets the session cookie and opens the page."""
        session = identity.redeem_login_code(code)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, session, max_age=12 * 3600, httponly=True, samesite="strict", path="/"
        )
        return response

    @app.post("/api/users", tags=["auth"], status_code=201)
    async def create_user(request: Request, p: Admin) -> dict[str, Any]:
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

    @app.post("/api/users/{username}/disable", tags=["auth"])
    async def disable_user(username: str, p: Admin) -> dict[str, Any]:
        """Refuse the user's tokens and close its open WebSocket connections (4003)."""
        tenant = await identity.user_tenant(username)
        if tenant is None or not can_manage(p, tenant):
            raise NotFound(f"no user {username!r}")
        await identity.disable_user(username)
        closed = runtime.close_sessions(username)
        return {"username": username, "disabled": True, "sessions_closed": closed}

    @app.post("/api/devices/{device_id}/credentials", tags=["auth"], status_code=201)
    async def device_credentials(device_id: str, request: Request, p: Admin) -> dict[str, Any]:
        """A new key for a device (shown once), assigning it to a tenant: for HTTP Basic
        ``device_id:key`` and, with per-device broker credentials, the MQTT password."""
        data = decode_json(await read_body_limited(request, 4096) or b"{}", limits)
        tenant = str((data if isinstance(data, dict) else {}).get("tenant") or p.tenant_id)
        if not is_valid_device_id(device_id) or not is_valid_device_id(tenant):
            raise ValidationError("invalid_device_id", "not a valid device or tenant id")
        if not can_manage(p, tenant):
            raise Forbidden("you may not manage this tenant")
        existing = runtime.ingestor.devices.get(device_id)
        if existing is not None and not can_manage(p, existing.tenant_id):
            raise NotFound(f"device {device_id!r} is not registered")
        key = await identity.create_device_credentials(device_id, tenant)
        if existing is not None and existing.tenant_id != tenant:
            existing.tenant_id = tenant
            runtime.store.save_device(existing)
        return {"device_id": device_id, "tenant": tenant, "key": key}

    return app
