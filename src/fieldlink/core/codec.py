"""Decoding and validating telemetry payloads against explicit limits.

Owns the rules in SPEC §3 and reliability-anchors B1-B4: strict JSON (no NaN/Infinity, BOM,
invalid UTF-8, trailing garbage), size, depth, key and type limits, timestamp sanity. Pure:
callers pass ``now_ms``. Every failure is a ``ValidationError`` whose code is also the
counter label for rejected records.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from fieldlink.core.errors import ValidationError
from fieldlink.core.model import Record, is_valid_device_id

KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
KIND_RE = re.compile(r"[a-z][a-z0-9_\-]{0,31}")
RESERVED_KEYS = frozenset({"device_id", "ts", "seq", "meta", "kind"})
MIN_TS_MS = (
    946_684_800_000  # 2000-01-01T00:00:00Z: anything older is a device clock that never synced
)

# Validation error codes (also the ``reason`` label of fieldlink_ingest_rejected_total).
INVALID_JSON = "invalid_json"
PAYLOAD_TOO_LARGE = "payload_too_large"
NOT_AN_OBJECT = "not_an_object"
TOO_DEEP = "too_deep"
TOO_MANY_KEYS = "too_many_keys"
INVALID_KEY = "invalid_key"
INVALID_VALUE = "invalid_value"
NON_FINITE = "non_finite_number"
INVALID_DEVICE_ID = "invalid_device_id"
INVALID_TIMESTAMP = "invalid_timestamp"
INVALID_SEQ = "invalid_seq"
INVALID_META = "invalid_meta"
EMPTY_RECORD = "no_metrics"


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits. Defaults follow OWASP (64 KiB messages) and reliability-anchors B3/B4."""

    max_payload_bytes: int = 64 * 1024
    max_depth: int = 4
    max_keys: int = 256
    max_string_chars: int = 1024
    max_array_items: int = 256
    max_batch_records: int = 1000
    future_skew_ms: int = 5 * 60 * 1000


DEFAULT_LIMITS = Limits()


def decode_json(payload: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Parse strict JSON (RFC 8259) within the size limit, or raise ``ValidationError``."""
    if len(payload) > limits.max_payload_bytes:
        raise ValidationError(
            PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes; the limit is {limits.max_payload_bytes}",
        )
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(INVALID_JSON, f"invalid JSON: {exc.msg} at byte {exc.pos}") from None


def parse_timestamp(value: Any, now_ms: int, limits: Limits = DEFAULT_LIMITS) -> int:
    """Accept epoch seconds, epoch milliseconds (values >= 1e11) or ISO 8601; return ms."""
    if isinstance(value, bool):
        raise ValidationError(
            INVALID_TIMESTAMP, "ts must be a number or an ISO 8601 string", "$.ts"
        )
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValidationError(NON_FINITE, "ts must be finite", "$.ts")
        ts_ms = int(value if value >= 1e11 else value * 1000)
    elif isinstance(value, str) and 0 < len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                INVALID_TIMESTAMP, f"ts {value!r} is not ISO 8601 or epoch", "$.ts"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts_ms = int(parsed.timestamp() * 1000)
    else:
        raise ValidationError(
            INVALID_TIMESTAMP, "ts must be a number or an ISO 8601 string", "$.ts"
        )
    if ts_ms < MIN_TS_MS:
        raise ValidationError(INVALID_TIMESTAMP, "ts is before 2000-01-01", "$.ts")
    if ts_ms > now_ms + limits.future_skew_ms:
        raise ValidationError(
            INVALID_TIMESTAMP,
            f"ts is more than {limits.future_skew_ms // 1000} s in the future",
            "$.ts",
        )
    return ts_ms


def _check_value(value: Any, path: str, depth: int, limits: Limits) -> None:
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):  # orjson rejects NaN literals; 1e400 style overflow lands here
            raise ValidationError(NON_FINITE, "numbers must be finite", path)
        return
    if isinstance(value, str):
        if len(value) > limits.max_string_chars:
            raise ValidationError(
                INVALID_VALUE, f"string longer than {limits.max_string_chars} characters", path
            )
        return
    if depth >= limits.max_depth:
        raise ValidationError(TOO_DEEP, f"nesting deeper than {limits.max_depth} levels", path)
    if isinstance(value, dict):
        _check_object(value, path, depth + 1, limits)
    elif isinstance(value, list):
        if len(value) > limits.max_array_items:
            raise ValidationError(
                TOO_MANY_KEYS, f"array longer than {limits.max_array_items} items", path
            )
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]", depth + 1, limits)
    else:  # pragma: no cover - orjson yields only JSON types
        raise ValidationError(INVALID_VALUE, "unsupported value type", path)


def check_value(value: Any, limits: Limits = DEFAULT_LIMITS, path: str = "$") -> None:
    """Apply the payload limits (depth, keys, strings, finite numbers) to any JSON value."""
    _check_value(value, path, 0, limits)


_VALID_KEYS: set[str] = set()
_VALID_KEYS_MAX = 65_536  # a memo of KEY_RE results; devices repeat the same few keys


def _check_object(obj: dict[str, Any], path: str, depth: int, limits: Limits) -> None:
    if len(obj) > limits.max_keys:
        raise ValidationError(TOO_MANY_KEYS, f"more than {limits.max_keys} keys", path)
    valid_keys = _VALID_KEYS
    for key, value in obj.items():
        if key not in valid_keys:
            if KEY_RE.fullmatch(key) is None:
                shown = key[:40].encode("unicode_escape").decode("ascii")
                raise ValidationError(
                    INVALID_KEY,
                    f"key {shown!r} must be 1-128 characters of letters, digits and _.:- "
                    "(not starting with . : or -)",
                    path,
                )
            if len(valid_keys) < _VALID_KEYS_MAX:
                valid_keys.add(key)
        # Fast path for the common flat record of scalars; everything else takes the full walk.
        kind = type(value)
        if kind is float:
            if value - value != 0.0:  # inf - inf and nan - nan are nan
                raise ValidationError(NON_FINITE, "numbers must be finite", f"{path}.{key}")
        elif kind is int or kind is bool or value is None:
            pass
        elif kind is str:
            if len(value) > limits.max_string_chars:
                raise ValidationError(
                    INVALID_VALUE,
                    f"string longer than {limits.max_string_chars} characters",
                    f"{path}.{key}",
                )
        else:
            _check_value(value, f"{path}.{key}", depth, limits)


def validate_record(
    obj: Any,
    *,
    now_ms: int,
    device_id: str | None = None,
    kind: str = "edge",
    limits: Limits = DEFAULT_LIMITS,
) -> Record:
    """Turn one decoded telemetry object into a ``Record`` or raise ``ValidationError``.

    ``device_id`` comes from the transport (MQTT topic level, route); when it is None the
    object must carry ``device_id`` itself (HTTP ingest). Reserved keys (``ts``, ``seq``,
    ``meta``, ``device_id``, ``kind``) are lifted out; everything else is a metric.
    """
    if not isinstance(obj, dict):
        raise ValidationError(NOT_AN_OBJECT, "a telemetry record must be a JSON object")
    if device_id is None:
        device_id = obj.get("device_id")
        if device_id is None:
            raise ValidationError(INVALID_DEVICE_ID, "device_id is required", "$.device_id")
    if not is_valid_device_id(device_id):
        raise ValidationError(
            INVALID_DEVICE_ID,
            "device id must be 1-128 characters of letters, digits and ._:-",
            "$.device_id",
        )
    _check_object(obj, "$", 1, limits)

    ts_raw = obj.get("ts")
    ts_ms = now_ms if ts_raw is None else parse_timestamp(ts_raw, now_ms, limits)

    seq = obj.get("seq")
    if seq is not None and (
        isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63
    ):
        raise ValidationError(INVALID_SEQ, "seq must be a non-negative 64-bit integer", "$.seq")

    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ValidationError(INVALID_META, "meta must be an object", "$.meta")

    record_kind = obj.get("kind", kind)
    if not isinstance(record_kind, str) or KIND_RE.fullmatch(record_kind) is None:
        raise ValidationError(INVALID_VALUE, "kind must match [a-z][a-z0-9_-]{0,31}", "$.kind")

    metrics = {k: v for k, v in obj.items() if k not in RESERVED_KEYS}
    if not metrics:
        raise ValidationError(EMPTY_RECORD, "the record has no metrics")
    return Record(
        device_id=device_id, ts_ms=ts_ms, metrics=metrics, seq=seq, meta=meta, kind=record_kind
    )


STATUS_VALUES = {"online": "online", "offline": "offline", "1": "online", "0": "offline"}


def parse_status(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    """Decode a status payload: ``online``/``offline`` plain or as ``{"status": ...}``."""
    return parse_status_message(payload, limits)[0]


OFFLINE_REASONS = ("clean_disconnect", "last_will", "status_message")


def parse_status_message(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[str, str]:
    """``(status, reason)`` of a status payload. ``online`` is ``reported``; a plain
    ``offline`` is ``last_will`` (what devices set as their will); ``{"status": "offline",
    "reason": "clean_disconnect"}`` (or ``last_will``) says why; any other offline message is
    ``status_message``."""
    text = payload.strip()
    if len(text) > 1024:
        raise ValidationError(PAYLOAD_TOO_LARGE, "status payload longer than 1024 bytes")
    reason = "last_will"
    if text.startswith(b"{"):
        obj = decode_json(text, limits)
        value = obj.get("status") if isinstance(obj, dict) else None
        given = obj.get("reason") if isinstance(obj, dict) else None
        reason = given if given in OFFLINE_REASONS else "status_message"
    elif text.startswith(b'"'):
        value = decode_json(text, limits)
    else:
        try:
            value = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError(INVALID_JSON, "status payload is not UTF-8") from None
    status = STATUS_VALUES.get(value.lower()) if isinstance(value, str) else None
    if status is None:
        raise ValidationError(INVALID_VALUE, 'status must be "online" or "offline"', "$.status")
    return status, ("reported" if status == "online" else reason)
