"""History query parameters: bucket sizes (``10s``, ``1m``, ``15m``, ``1h``, ``1d``) and
aggregates."""

from __future__ import annotations

import re

from fieldlink.core.errors import ValidationError

AGGREGATES = ("avg", "min", "max", "last", "count")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_BUCKET_RE = re.compile(r"(\d{1,6})(ms|s|m|h|d)")
MIN_BUCKET_MS = 1000
MAX_BUCKETS = 100_000


def parse_bucket(text: str) -> int:
    """``"15m"`` -> 900000. Buckets are at least 1 s."""
    match = _BUCKET_RE.fullmatch(text.strip())
    if match is None:
        raise ValidationError(
            "invalid_bucket", "bucket must look like 10s, 1m, 15m, 1h or 1d", "bucket"
        )
    bucket_ms = int(match.group(1)) * _UNITS_MS[match.group(2)]
    if bucket_ms < MIN_BUCKET_MS:
        raise ValidationError("invalid_bucket", "bucket must be at least 1s", "bucket")
    return bucket_ms


def check_aggregate(agg: str) -> str:
    if agg not in AGGREGATES:
        raise ValidationError("invalid_agg", f"agg must be one of {', '.join(AGGREGATES)}", "agg")
    return agg


def check_range(start_ms: int, end_ms: int, bucket_ms: int | None) -> None:
    if end_ms < start_ms:
        raise ValidationError("invalid_range", "end is before start", "end")
    if bucket_ms is not None and (end_ms - start_ms) // bucket_ms > MAX_BUCKETS:
        raise ValidationError(
            "too_many_buckets", f"the range holds more than {MAX_BUCKETS} buckets", "bucket"
        )


FLEET_AGGREGATES = ("avg", "sum", "min", "max", "count")
MINUTE_MS = 60_000


def check_fleet_query(start_ms: int, end_ms: int, bucket_ms: int, agg: str) -> tuple[int, int]:
    """Validate a fleet query; returns the range widened to whole minutes (the rollup's
    grain): start rounded down, end rounded up."""
    if agg not in FLEET_AGGREGATES:
        raise ValidationError(
            "invalid_agg", f"agg must be one of {', '.join(FLEET_AGGREGATES)}", "agg"
        )
    if bucket_ms % MINUTE_MS:
        raise ValidationError(
            "invalid_bucket", "fleet buckets are whole minutes (1m, 15m, 1h, 1d)", "bucket"
        )
    start = (start_ms // MINUTE_MS) * MINUTE_MS
    end = -((-end_ms) // MINUTE_MS) * MINUTE_MS
    check_range(start, end, bucket_ms)
    return start, end
