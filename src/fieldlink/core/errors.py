"""One error hierarchy, split by blame. Every error that reaches a user has a stable code.

FieldlinkError
├── ClientError          the peer sent something we refuse (4xx, WS error frame,
    │                        counted MQTT rejection)
│   ├── ValidationError  bad payload: code + field path
│   ├── NotFound         unknown device / resource (404)
│   ├── PayloadTooLarge  body over the limit, refused before it is read whole (413)
│   └── ProtocolError    a WebSocket client message we cannot act on
├── DependencyDown       store, broker or bus unavailable (503 + Retry-After)
└── InternalError        our bug; logged with a trace, answered without one
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


class DependencyDown(FieldlinkError):
    code = "unavailable"
    http_status = 503


class InternalError(FieldlinkError):
    pass
