"""Bucketed aggregation over records in Python, shared by the memory store (and used as the
reference the SQL implementations are tested against): per-device buckets, the fleet chart and
the VPP's fleet power history. Pure: values in, values out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


# ---- the VPP's fleet power history (ports.FleetPower) -------------------------------------

MINUTE_MS = 60_000


def node_capacity_kw(meta: Mapping[str, Any]) -> float | None:
    """The device's capacity if it is a VPP node (its meta declares a positive number
    ``capacity_kw``, below ``FLEET_VALUE_LIMIT`` like every rolled-up value), else None."""
    value = meta.get("capacity_kw")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return float(value) if 0 < value < FLEET_VALUE_LIMIT else None


def fleet_power(
    records: Iterable[Record], capacities: Mapping[str, float], bucket_ms: int
) -> list[dict[str, Any]]:
    """``FleetPower.fleet_power`` over ``records`` (already cut to the range and tenant):
    ``capacities`` maps the nodes' ids to their capacity; other devices' records, and
    ``power_kw`` values that are not numbers or whose magnitude reaches ``FLEET_VALUE_LIMIT``,
    are left out. A node is counted per (tenant, device), as the records carry the tenant."""
    # (minute, tenant, device) -> [count, total] of power_kw
    per_node: dict[tuple[int, str, str], list[float]] = {}
    for record in records:
        power = record.metrics.get("power_kw")
        if (
            record.device_id not in capacities
            or not isinstance(power, (int, float))
            or isinstance(power, bool)
            or not abs(power) < FLEET_VALUE_LIMIT
        ):
            continue
        minute = (record.ts_ms // MINUTE_MS) * MINUTE_MS
        acc = per_node.setdefault((minute, record.tenant_id, record.device_id), [0, 0.0])
        acc[0] += 1
        acc[1] += float(power)
    # minute -> [P, N, C]
    per_minute: dict[int, list[float]] = {}
    for (minute, _, device_id), (n, total) in per_node.items():
        acc = per_minute.setdefault(minute, [0.0, 0, 0.0])
        acc[0] += total / n
        acc[1] += 1
        acc[2] += capacities[device_id]
    # bucket -> minutes' [P, N, C]
    per_bucket: dict[int, list[list[float]]] = {}
    for minute, values in per_minute.items():
        per_bucket.setdefault((minute // bucket_ms) * bucket_ms, []).append(values)
    rows = []
    for start in sorted(per_bucket):
        minutes = per_bucket[start]
        rows.append(
            {
                "ts": start,
                "power_kw": sum(m[0] for m in minutes) / len(minutes),
                "nodes": sum(m[1] for m in minutes) / len(minutes),
                "capacity_kw": sum(m[2] for m in minutes) / len(minutes),
            }
        )
    return rows
