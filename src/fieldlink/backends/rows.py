"""Row shapes shared by the SQL stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

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
