"""The channel catalogue: every live channel name is built and parsed here, nowhere else.

A channel name typed twice is how pattern-mismatch bugs happen in hand-built hubs, so the
gateway, the services and (later) the Redis bus all import these helpers.
"""

from __future__ import annotations

from fieldlink.core.errors import ProtocolError
from fieldlink.core.model import is_valid_device_id

ALL = "all"
DEVICE_PREFIX = "device:"
COMMAND_PREFIX = "command:"  # private: the requester of one command, never subscribable


def device(device_id: str) -> str:
    return DEVICE_PREFIX + device_id


def for_device_event(device_id: str) -> tuple[str, ...]:
    """Channels that carry an event about one device, in delivery order."""
    return (DEVICE_PREFIX + device_id, ALL)


def command(command_id: str) -> str:
    return COMMAND_PREFIX + command_id


def for_command_event(command_id: str, device_id: str) -> tuple[str, ...]:
    """Channels that carry a command's transitions: its requester's, then the device's."""
    return (COMMAND_PREFIX + command_id, DEVICE_PREFIX + device_id, ALL)


def parse(channel: object) -> tuple[str, str | None]:
    """Validate a channel name from a client: ``("all", None)`` or ``("device", id)``."""
    if channel == ALL:
        return ("all", None)
    if isinstance(channel, str) and channel.startswith(DEVICE_PREFIX):
        device_id = channel[len(DEVICE_PREFIX) :]
        if is_valid_device_id(device_id):
            return ("device", device_id)
    shown = repr(channel)[:80]
    raise ProtocolError(f"unknown channel {shown}; use 'all' or 'device:<id>'", code="bad_channel")
