"""Bucketed aggregation over records in Python, shared by the memory store (and used as the
reference the SQL implementations are tested against)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fieldlink.core.model import Record


def aggregate_records(records: Iterable[Record], bucket_ms: int, agg: str) -> list[dict[str, Any]]:
    buckets: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for record in records:
        start = (record.ts_ms // bucket_ms) * bucket_ms
        metrics = buckets.setdefault(start, {})
        for key, value in record.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.setdefault(key, []).append((record.ts_ms, float(value)))
    rows = []
    for start in sorted(buckets):
        row: dict[str, Any] = {"ts": start}
        for key, points in buckets[start].items():
            values = [v for _, v in points]
            if agg == "avg":
                row[key] = sum(values) / len(values)
            elif agg == "min":
                row[key] = min(values)
            elif agg == "max":
                row[key] = max(values)
            elif agg == "count":
                row[key] = len(values)
            elif agg == "sum":
                row[key] = sum(values)
            else:  # last
                row[key] = max(points, key=lambda p: p[0])[1]
        rows.append(row)
    return rows


FLEET_AGGREGATES = ("avg", "sum", "min", "max", "count")
FLEET_VALUE_LIMIT = 1e300  # larger magnitudes stay out of fleet rollups (no overflow)


def fleet_records(records: Iterable[Record], metrics: Iterable[str] = ()) -> list[Record]:
    """The records as the fleet rollup sees them: one pseudo-device, only the chosen metrics
    (all when none are named), huge magnitudes left out."""
    wanted = set(metrics)
    out = []
    for record in records:
        kept = {
            k: v
            for k, v in record.metrics.items()
            if (not wanted or k in wanted)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and abs(v) < FLEET_VALUE_LIMIT
        }
        out.append(Record("", record.ts_ms, kept))
    return out
