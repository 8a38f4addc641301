"""Row shapes shared by the SQL stores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from fieldlink.core.alerts import Alert
from fieldlink.core.commands import Command
from fieldlink.core.model import Device


def command_row(command: Command) -> tuple[Any, ...]:
    """``(id, device_id, status, created_ms, deadline_ms, doc)`` for the commands table; the
    whole command is the JSON ``doc``, the other columns are what queries filter on."""
    return (
        command.id,
        command.device_id,
        str(command.status),
        command.created_ms,
        command.deadline_ms,
        orjson.dumps(command.to_dict()).decode(),
    )


def commands_from(rows: Sequence[Any]) -> list[Command]:
    """Commands from rows whose first column is the JSON ``doc``."""
    return [Command.from_dict(orjson.loads(row[0])) for row in rows]


def bucket_rows(rows: Sequence[Any], agg: str) -> list[dict[str, Any]]:
    """``(bucket, metric, value, ...)`` rows in bucket order -> ``[{"ts": bucket, metric:
    value, ...}]`` (counts as integers, everything else as floats)."""
    out: list[dict[str, Any]] = []
    for bucket, key, value, *_ in rows:
        if not out or out[-1]["ts"] != bucket:
            out.append({"ts": bucket})
        out[-1][key] = int(value) if agg == "count" else float(value)
    return out


def device_row(device: Device) -> tuple[Any, ...]:
    """``(id, kind, meta, created_ms, last_seen_ms, tenant_id)`` for the devices table."""
    return (
        device.id,
        device.kind,
        orjson.dumps(device.meta).decode(),
        device.created_ms,
        device.last_seen_ms,
        device.tenant_id,
    )


def device_from(row: Sequence[Any]) -> Device:
    """A device from a row in ``device_row``'s column order (meta as JSON text)."""
    return Device(row[0], row[1], orjson.loads(row[2]), row[3], row[4], row[5])


def alert_row(alert: Alert) -> tuple[Any, ...]:
    """``(id, tenant_id, device_id, rule_id, state, level, updated_ms, version, doc)``."""
    return (
        alert.id,
        alert.tenant_id,
        alert.device_id,
        alert.rule_id,
        str(alert.state),
        alert.level,
        alert.updated_ms,
        alert.version,
        orjson.dumps(alert.to_dict()).decode(),
    )


def alerts_from(rows: Sequence[Any]) -> list[Alert]:
    """Alerts from rows whose first column is the JSON ``doc``."""
    return [Alert.from_dict(orjson.loads(row[0])) for row in rows]


def alert_filters(
    tenant_id: str | None,
    device_id: str | None,
    states: Sequence[str],
    level: str | None,
    since_ms: int | None,
    placeholder: Callable[[int], str],
) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its arguments for ``list_alerts``; ``placeholder(n)``
    spells the n-th parameter in the store's dialect."""
    clauses: list[str] = []
    args: list[Any] = []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        clauses.append(sql.format(placeholder(len(args))))

    if tenant_id is not None:
        add("tenant_id = {}", tenant_id)
    if device_id is not None:
        add("device_id = {}", device_id)
    for_states = [str(s) for s in states]
    if for_states:
        marks = []
        for state in for_states:
            args.append(state)
            marks.append(placeholder(len(args)))
        clauses.append(f"state IN ({', '.join(marks)})")
    if level is not None:
        add("level = {}", level)
    if since_ms is not None:
        add("updated_ms >= {}", since_ms)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args
