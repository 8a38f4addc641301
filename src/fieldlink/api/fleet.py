"""The fleet chart: every device's metrics per bucket, per tenant."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from fieldlink.api.common import Callers, parse_time
from fieldlink.api.context import ApiContext
from fieldlink.core import buckets
from fieldlink.core.access import Principal
from fieldlink.core.errors import ValidationError


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["fleet"])

    @api.get("/api/fleet/telemetry")
    async def fleet_telemetry(
        p: Principal = Depends(callers.caller),
        start: str | None = Query(None, description="epoch ms or ISO 8601; default end - 24 h"),
        end: str | None = Query(None, description="epoch ms or ISO 8601; default now"),
        bucket: str = Query("1m", description="whole minutes: 1m, 15m, 1h, 1d"),
        agg: str = Query("avg", description="avg|min|max|count (per-sample statistics)"),
        metric: list[str] = Query([], description="only these metrics (repeatable)"),
        tenant: str | None = Query(None, description="system administrator: one tenant"),
    ) -> dict[str, Any]:
        """Your tenant's devices' numeric metrics per bucket (the fleet chart). The range is
        widened to whole minutes. The system administrator sees every tenant together, or
        one with ``tenant``."""
        if agg == "sum":
            # A sum of raw samples is not a fleet total (5-s reports in 1-min buckets: 12x).
            raise ValidationError(
                "invalid_agg",
                "agg=sum adds every sample in a bucket, which is no fleet total; fleet power "
                "(the sum over nodes of each node's average) is GET /api/vpp/history",
                "agg",
            )
        scope = tenant if p.is_system_admin else p.tenant_id
        end_ms = parse_time(end, ctx.clock_ms() + 1, "end")
        start_ms = parse_time(start, end_ms - 86_400_000, "start")
        bucket_ms = buckets.parse_bucket(bucket)
        start_ms, end_ms = buckets.check_fleet_query(start_ms, end_ms, bucket_ms, agg)
        rows = await ctx.store.query_fleet(start_ms, end_ms, bucket_ms, agg, tuple(metric), scope)
        return {"start": start_ms, "end": end_ms, "bucket": bucket, "agg": agg, "points": rows}

    return api
