"""Devices: the registry's view, telemetry history (raw or bucketed) and the latest reading."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from fieldlink.api.common import Callers, parse_time, readable_device
from fieldlink.api.context import ApiContext
from fieldlink.core import buckets
from fieldlink.core.access import Principal
from fieldlink.core.errors import NotFound


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["devices"])
    views, store = ctx.views, ctx.store

    @api.get("/api/devices")
    async def list_devices(p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        return {"devices": views.list(None if p.is_system_admin else p.tenant_id)}

    @api.get("/api/devices/{device_id}")
    async def get_device(device_id: str, p: Principal = Depends(callers.caller)) -> dict[str, Any]:
        return readable_device(views, device_id, p)

    @api.get("/api/devices/{device_id}/telemetry")
    async def device_telemetry(
        device_id: str,
        p: Principal = Depends(callers.caller),
        start: str | None = Query(None, description="epoch ms or ISO 8601; default end - 1 h"),
        end: str | None = Query(None, description="epoch ms or ISO 8601; default now"),
        limit: int = Query(1000, ge=1, le=100_000),
        bucket: str | None = Query(None, description="10s, 1m, 15m, 1h, 1d"),
        agg: str = Query("avg", description="avg|min|max|last|count (with bucket)"),
        order: str = Query("asc", pattern="^(asc|desc)$"),
    ) -> dict[str, Any]:
        readable_device(views, device_id, p)
        end_ms = parse_time(end, ctx.clock_ms() + 1, "end")
        start_ms = parse_time(start, end_ms - 3_600_000, "start")
        if bucket is not None:
            bucket_ms = buckets.parse_bucket(bucket)
            buckets.check_aggregate(agg)
            buckets.check_range(start_ms, end_ms, bucket_ms)
            rows = await store.query_buckets(device_id, start_ms, end_ms, bucket_ms, agg)
            return {
                "device_id": device_id,
                "start": start_ms,
                "end": end_ms,
                "bucket": bucket,
                "agg": agg,
                "points": rows[:limit],
            }
        buckets.check_range(start_ms, end_ms, None)
        records = await store.query_range(
            device_id, start_ms, end_ms, limit, newest_first=order == "desc"
        )
        return {
            "device_id": device_id,
            "start": start_ms,
            "end": end_ms,
            "points": [r.to_event_data() for r in records],
        }

    @api.get("/api/devices/{device_id}/telemetry/latest")
    async def device_latest(
        device_id: str, p: Principal = Depends(callers.caller)
    ) -> dict[str, Any]:
        readable_device(views, device_id, p)
        record = ctx.cache.get_latest(device_id, ctx.clock_ms())
        source = "cache"
        if record is None:
            record = await store.latest(device_id)
            source = "store"
        if record is None:
            raise NotFound(f"device {device_id!r} has no telemetry yet", code="no_telemetry")
        return {"device_id": device_id, "source": source, "latest": record.to_event_data()}

    return api
