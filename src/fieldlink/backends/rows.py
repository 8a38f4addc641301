"""Row shapes shared by the SQL stores."""

from __future__ import annotations

from typing import Any

import orjson

from fieldlink.core.commands import Command


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
