"""HTTP ingest: ``POST /api/telemetry``, the fallback transport of devices."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fieldlink.api.common import Callers, read_body_limited
from fieldlink.api.context import ApiContext


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter()

    @api.post("/api/telemetry", tags=["ingest"], status_code=200)
    async def post_telemetry(request: Request) -> JSONResponse:
        """One record or a list: ``{"device_id": ..., "ts"?, "seq"?, "meta"?, ...metrics}``.
        2xx means every accepted record is committed; invalid records are listed in ``errors``
        (status 207 when some were accepted, 422 when none were)."""
        device_id, tenant_id = await ctx.auth.device(request)
        body = await read_body_limited(request, ctx.limits.max_payload_bytes)
        result = await ctx.ingestor.ingest_http(body, device_id, tenant_id)
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

    return api
