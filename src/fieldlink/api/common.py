"""What every REST router shares: the error shape, time parameters, bounded bodies, and the
dependencies that authenticate a caller. Errors are JSON ``{"error": {"code", "message",
"path"?}}`` with no stack traces."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from fieldlink.api.auth import HttpAuth
from fieldlink.core.access import Principal, Role, can_read
from fieldlink.core.errors import (
    FieldlinkError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ValidationError,
)
from fieldlink.services.views import DeviceViews


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
    if not math.isfinite(number) or abs(number) > 1e15:  # nan, inf, 1e400: no time at all
        raise ValidationError("invalid_time", f"{name} must be epoch ms or ISO 8601", name)
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


class Callers:
    """FastAPI dependencies that turn a request into its principal (401/403 otherwise)."""

    def __init__(self, auth: HttpAuth) -> None:
        self.auth = auth

    def caller(self, request: Request) -> Principal:
        return self.auth.principal(request)

    def admin(self, request: Request) -> Principal:
        principal = self.auth.principal(request)
        if principal.role is not Role.ADMIN:
            raise Forbidden("this needs the admin role", code="forbidden")
        return principal


def readable_records(owner: str | None, device_id: str, principal: Principal) -> None:
    """History, commands and alerts of a device (registered, or deleted with its history
    kept): 404 alike for unknown devices and other tenants'. ``owner``: its tenant."""
    if owner is None or not can_read(principal, owner):
        raise NotFound(f"device {device_id!r} is not registered")


def readable_device(views: DeviceViews, device_id: str, principal: Principal) -> dict[str, Any]:
    """The device's summary; 404 alike for unknown devices and other tenants' devices."""
    device = views.get(device_id)
    if device is None or not can_read(principal, device["tenant"]):
        raise NotFound(f"device {device_id!r} is not registered")
    return device
