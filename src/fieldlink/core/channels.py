"""The channel catalogue: every live channel name is built and parsed here, nowhere else.

A channel name typed twice is how pattern-mismatch bugs happen in hand-built hubs, so the
gateway, the services and the domain events all import these helpers.
"""

from __future__ import annotations

from fieldlink.core.errors import ProtocolError
from fieldlink.core.model import is_valid_device_id

ALL = "all"
DEVICE_PREFIX = "device:"
COMMAND_PREFIX = "command:"  # private: the requester of one command, never subscribable
TENANT_PREFIX = "tenant:"  # every device event of one tenant
KIND_PREFIX = "kind:"  # registry changes of every device of one kind (all tenants)
ALERTS = "alerts"  # every alert of every tenant
AGGREGATE_PREFIX = "aggregate:"  # one tenant's fleet aggregate
DISPATCH_PREFIX = "dispatch:"  # one tenant's dispatches and agent proposals


def device(device_id: str) -> str:
    return DEVICE_PREFIX + device_id


def tenant(tenant_id: str) -> str:
    return TENANT_PREFIX + tenant_id


def for_device_event(device_id: str, tenant_id: str = "default") -> tuple[str, ...]:
    """Channels that carry an event about one device, in delivery order."""
    return (DEVICE_PREFIX + device_id, TENANT_PREFIX + tenant_id, ALL)


def for_device_change(device_id: str, tenant_id: str, kind: str) -> tuple[str, ...]:
    """Channels that carry a registry change of one device: its device's, its tenant's, its
    kind's, ``all``."""
    return (DEVICE_PREFIX + device_id, TENANT_PREFIX + tenant_id, KIND_PREFIX + kind, ALL)


def for_alert(device_id: str, tenant_id: str) -> tuple[str, ...]:
    """Channels that carry an alert: its device's, its tenant's, ``alerts``."""
    return (DEVICE_PREFIX + device_id, TENANT_PREFIX + tenant_id, ALERTS)


def aggregate(tenant_id: str) -> str:
    return AGGREGATE_PREFIX + tenant_id


def dispatch(tenant_id: str) -> str:
    return DISPATCH_PREFIX + tenant_id


def command(command_id: str) -> str:
    return COMMAND_PREFIX + command_id


def for_command_event(
    command_id: str, device_id: str, tenant_id: str = "default"
) -> tuple[str, ...]:
    """Channels that carry a command's transitions: its requester's, then the device's."""
    return (COMMAND_PREFIX + command_id, *for_device_event(device_id, tenant_id))


def tenant_in(event_channels: tuple[str, ...]) -> str | None:
    """The tenant named by an event's channels (``for_device_event`` puts it there)."""
    for name in event_channels:
        if name.startswith(TENANT_PREFIX):
            return name[len(TENANT_PREFIX) :]
    return None


TENANT_SHORTHANDS = ("aggregate", "dispatch")  # "your tenant's": aggregate -> aggregate:<tenant>


def resolve(channel: str, tenant_id: str) -> str:
    """A client's channel name with the per-tenant shorthands spelled out (``aggregate`` is
    ``aggregate:<the client's tenant>``, likewise ``dispatch``)."""
    return f"{channel}:{tenant_id}" if channel in TENANT_SHORTHANDS else channel


def parse(channel: object) -> tuple[str, str | None]:
    """Validate a channel name from a client: ``("all", None)``, ``("alerts", None)``,
    ``("device", id)``, ``("tenant", id)``, ``("kind", kind)``, ``("aggregate", tenant)``,
    ``("dispatch", tenant)``; the shorthands ``aggregate`` and ``dispatch`` (see ``resolve``)
    give ``(name, None)``."""
    if channel == ALL:
        return ("all", None)
    if channel == ALERTS:
        return ("alerts", None)
    if channel in TENANT_SHORTHANDS:
        return (str(channel), None)
    if isinstance(channel, str):
        for kind, prefix in (
            ("device", DEVICE_PREFIX),
            ("tenant", TENANT_PREFIX),
            ("kind", KIND_PREFIX),
            ("aggregate", AGGREGATE_PREFIX),
            ("dispatch", DISPATCH_PREFIX),
        ):
            if channel.startswith(prefix):
                ident = channel[len(prefix) :]
                if is_valid_device_id(ident):
                    return (kind, ident)
    shown = repr(channel)[:80]
    raise ProtocolError(
        f"unknown channel {shown}; use 'all', 'alerts', 'tenant:<id>', 'device:<id>', "
        "'kind:<kind>', 'aggregate[:<tenant>]' or 'dispatch[:<tenant>]'",
        code="bad_channel",
    )
