"""Devices: the registry (list, create, change, delete), telemetry history (raw or bucketed)
and the latest reading; and the drone seed's register route."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from fieldlink.api.common import (
    Callers,
    parse_time,
    read_body_limited,
    readable_device,
    readable_records,
)
from fieldlink.api.context import ApiContext
from fieldlink.core import buckets
from fieldlink.core.access import Principal, can_command, can_manage
from fieldlink.core.codec import check_value, decode_json
from fieldlink.core.errors import Forbidden, NotFound, ValidationError
from fieldlink.core.model import is_valid_device_id

MAX_NAME_CHARS = 200


def _attributes(value: Any, path: str, limits: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError("invalid_attributes", "attributes is a JSON object", path)
    check_value(value, limits, path)
    return value


def _registry_write(p: Principal, tenant_id: str) -> None:
    """Operators and admins of the device's tenant change the registry; viewers do not."""
    if not can_command(p, tenant_id):
        raise Forbidden("your role may not change the device registry", code="forbidden")


def router(ctx: ApiContext, callers: Callers) -> APIRouter:
    api = APIRouter(tags=["devices"])
    views, store, registry, limits = ctx.views, ctx.store, ctx.registry, ctx.limits

    async def body_of(request: Request) -> dict[str, Any]:
        data = decode_json(
            await read_body_limited(request, limits.max_payload_bytes) or b"{}", limits
        )
        if not isinstance(data, dict):
            raise ValidationError("invalid_body", "send a JSON object")
        return data

    def create(p: Principal, data: dict[str, Any]) -> JSONResponse:
        device_id = data.get("id")
        if not is_valid_device_id(device_id):
            raise ValidationError("invalid_device_id", "id is 1-128 of A-Z a-z 0-9 . _ : -", "$.id")
        kind = data.get("kind", "edge")
        if not is_valid_device_id(kind):
            raise ValidationError("invalid_kind", "kind is 1-128 of A-Z a-z 0-9 . _ : -", "$.kind")
        tenant = str(data.get("tenant") or p.tenant_id)
        if tenant != p.tenant_id and not can_manage(p, tenant):
            raise Forbidden("you may not manage this tenant")
        _registry_write(p, tenant)
        attributes = dict(_attributes(data.get("attributes", {}), "$.attributes", limits))
        if "name" in data:
            name = data["name"]
            if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
                raise ValidationError("invalid_name", "name is a string", "$.name")
            attributes["name"] = name
        registry.create(str(device_id), str(kind), attributes, tenant, ctx.clock_ms())
        return JSONResponse(views.get(str(device_id)), status_code=201)

    @api.get("/api/devices")
    async def list_devices(
        p: Principal = Depends(callers.caller),
        kind: str | None = Query(None, description="only devices of this kind"),
    ) -> dict[str, Any]:
        listed = views.list(None if p.is_system_admin else p.tenant_id)
        if kind is not None:
            listed = [d for d in listed if d["kind"] == kind]
        return {"devices": listed}

    @api.post("/api/devices", status_code=201)
    async def create_device(
        request: Request, p: Principal = Depends(callers.caller)
    ) -> JSONResponse:
        """Register a device: ``{"id", "kind"?, "name"?, "attributes"?, "tenant"?}``. The
        ``device`` event (``created``) carries it whole. 409 ``device_exists``."""
        return create(p, await body_of(request))

    @api.patch("/api/devices/{device_id}")
    async def update_device(
        device_id: str, request: Request, p: Principal = Depends(callers.caller)
    ) -> dict[str, Any]:
        """Partial update: ``{"name"?, "kind"?, "attributes"?: {key: value or null}}`` (null
        removes). Answers the device and ``changes`` (old -> new); no event when nothing
        changed."""
        device = readable_device(views, device_id, p)
        _registry_write(p, device["tenant"])
        data = await body_of(request)
        attributes = dict(_attributes(data.get("attributes", {}), "$.attributes", limits))
        if "name" in data:
            if not isinstance(data["name"], str) or len(data["name"]) > MAX_NAME_CHARS:
                raise ValidationError("invalid_name", "name is a string", "$.name")
            attributes["name"] = data["name"]
        kind = data.get("kind")
        if kind is not None and not is_valid_device_id(kind):
            raise ValidationError("invalid_kind", "kind is 1-128 of A-Z a-z 0-9 . _ : -", "$.kind")
        changes = registry.update(device_id, kind=kind, attributes=attributes)
        return {
            "device": views.get(device_id),
            "changes": {k: {"old": v[0], "new": v[1]} for k, v in changes.items()},
        }

    @api.delete("/api/devices/{device_id}")
    async def delete_device(
        device_id: str,
        p: Principal = Depends(callers.caller),
        purge: bool = Query(False, description="also delete its telemetry history"),
    ) -> dict[str, Any]:
        """Remove a device. Its history is kept unless ``purge=true``; its open commands end as
        ``failed`` (``device_deleted``). A device that keeps sending registers itself again."""
        device = readable_device(views, device_id, p)
        _registry_write(p, device["tenant"])
        purged = await registry.delete(device_id, purge)
        return {"device_id": device_id, "deleted": True, "purged_records": purged}

    @api.post("/api/v1/drones/register", status_code=201, tags=["drones"])
    async def register_drone(
        request: Request, p: Principal = Depends(callers.caller)
    ) -> JSONResponse:
        """The drone seed's register body, ``{"deviceSerialNumber", "deviceName",
        "deviceCategory", "streamIsOn"}``, as a device of kind ``drone`` (id: the serial;
        attributes: name, category, streamIsOn and any other field)."""
        data = await body_of(request)
        attributes = {
            k: v
            for k, v in data.items()
            if k not in ("deviceSerialNumber", "deviceName", "deviceCategory")
        }
        if "deviceCategory" in data:
            attributes["category"] = data["deviceCategory"]
        body: dict[str, Any] = {
            "id": data.get("deviceSerialNumber"),
            "kind": "drone",
            "attributes": attributes,
        }
        if "deviceName" in data:
            body["name"] = data["deviceName"]
        try:
            return create(p, body)
        except ValidationError as exc:
            if exc.path == "$.id":
                exc.path = "$.deviceSerialNumber"
            raise

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
        readable_records(registry.owner_of(device_id), device_id, p)
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
        readable_records(registry.owner_of(device_id), device_id, p)
        record = ctx.cache.get_latest(device_id, ctx.clock_ms())
        source = "cache"
        if record is None:
            record = await store.latest(device_id)
            source = "store"
        if record is None:
            raise NotFound(f"device {device_id!r} has no telemetry yet", code="no_telemetry")
        return {"device_id": device_id, "source": source, "latest": record.to_event_data()}

    return api
