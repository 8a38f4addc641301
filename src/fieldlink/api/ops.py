"""Operations: the dashboard page, health and Prometheus metrics."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response

from fieldlink.api.common import Callers
from fieldlink.api.context import ApiContext
from fieldlink.api.metrics import exposition
from fieldlink.core.access import Principal


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter()

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        page = resources.files("fieldlink.web").joinpath("index.html").read_text()
        return HTMLResponse(page)

    @api.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        body = ctx.health.report()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @api.get("/metrics", tags=["ops"])
    async def metrics(_: Principal = Depends(callers.admin)) -> Response:
        return Response(exposition(ctx.metrics), media_type="text/plain; version=0.0.4")

    return api
