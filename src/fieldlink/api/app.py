"""The REST API as one FastAPI app (OpenAPI at /docs): error handlers and the routers, one per
area. Errors are JSON ``{"error": {"code", "message", "path"?}}`` with no stack traces."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fieldlink import __version__
from fieldlink.api import accounts, alerts, commands, devices, fleet, ingest, ops, vpp
from fieldlink.api.common import Callers, error_response
from fieldlink.api.context import ApiContext
from fieldlink.core.errors import FieldlinkError, HttpError, RateLimited, ValidationError

log = logging.getLogger("fieldlink.api")


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="fieldlink",
        version=__version__,
        description="Real-time device hub. Live events: WebSocket at /ws (docs/protocol.md).",
    )

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
        return error_response(HttpError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(FieldlinkError("internal error"))

    callers = Callers(ctx.auth)
    for area in (ops, ingest, devices, commands, alerts, fleet, vpp, accounts):
        app.include_router(area.router(ctx, callers))
    for path, asgi in ctx.mounts:
        app.mount(path.rstrip("/"), asgi)
    # Browsers on other origins (a frontend served elsewhere) may call REST and Socket.IO
    # polling when the origin is allowed: the same allow-list as WebSocket handshakes.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=sorted(ctx.auth.origins.exact),
        allow_origin_regex=ctx.auth.origins.regex(),
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
    )
    return app
