"""One error hierarchy, split by blame. Every error that reaches a user has a stable code.

FieldlinkError
├── ClientError            the peer sent something we refuse (4xx, a WebSocket error frame,
│   │                      a counted MQTT rejection)
│   ├── ValidationError    bad payload or parameter: code + field path (422)
│   ├── NotFound           unknown device or resource, or one the caller may not see (404)
│   ├── PayloadTooLarge    body over the limit, refused before it is read whole (413)
│   ├── ProtocolError      a WebSocket client message we cannot act on
│   ├── Unauthorized       no valid credentials: missing, bad or expired token or key (401)
│   ├── Forbidden          valid credentials, not allowed: role, tenant, origin (403)
│   │   └── DeviceRefused  a write for a device the caller may not speak for
│   ├── Conflict           the id is taken (409)
│   ├── RateLimited        too many requests; ``retry_after_s`` says when to retry (429)
│   └── HttpError          any other HTTP status the web framework decided (405, ...)
├── DependencyDown         store, broker or bus unavailable (503 + Retry-After)
└── InternalError          our bug; logged with a trace, answered without one (500)
"""

from __future__ import annotations


class FieldlinkError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``message`` is for humans."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class ClientError(FieldlinkError):
    code = "bad_request"
    http_status = 400


class ValidationError(ClientError):
    """A payload failed validation. ``path`` names the offending field (``$.metrics.temp``)."""

    http_status = 422

    def __init__(self, code: str, message: str, path: str = "$") -> None:
        super().__init__(message, code=code)
        self.path = path

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "path": self.path}


class PayloadTooLarge(ClientError):
    code = "payload_too_large"
    http_status = 413


class NotFound(ClientError):
    code = "not_found"
    http_status = 404


class ProtocolError(ClientError):
    code = "bad_message"


class Unauthorized(ClientError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ClientError):
    code = "forbidden"
    http_status = 403


class DeviceRefused(Forbidden):
    """A request that writes for a device it may not speak for."""


class Conflict(ClientError):
    code = "conflict"
    http_status = 409


class RateLimited(ClientError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HttpError(ClientError):
    """An HTTP status decided by the web framework (unknown route, wrong method)."""

    def __init__(self, status: int, message: str, *, code: str = "http_error") -> None:
        super().__init__(message, code=code)
        self.http_status = status


class DependencyDown(FieldlinkError):
    code = "unavailable"
    http_status = 503


class InternalError(FieldlinkError):
    code = "internal_error"
