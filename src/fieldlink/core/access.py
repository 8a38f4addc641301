"""Who may do what (pure). Principals come from verified tokens; every read, subscribe and
command is checked here.

Tenants isolate everything: a principal sees devices, events, history and commands of its own
tenant only. The one exception is an ``admin`` of the ``default`` tenant (the embedded hub's
owner): the system administrator, who may see every tenant and the ``all`` channel.
Roles: ``viewer`` reads, ``operator`` also sends commands, ``admin`` also manages users and
device credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fieldlink.core import channels

DEFAULT_TENANT = "default"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str  # user id, or "service:<name>"
    tenant_id: str
    role: Role
    kind: str = "user"  # user | service
    expires_ms: int | None = None

    @property
    def is_system_admin(self) -> bool:
        return self.role is Role.ADMIN and self.tenant_id == DEFAULT_TENANT


def can_read(principal: Principal, tenant_id: str) -> bool:
    return principal.is_system_admin or principal.tenant_id == tenant_id


def can_command(principal: Principal, tenant_id: str) -> bool:
    return can_read(principal, tenant_id) and principal.role in (Role.OPERATOR, Role.ADMIN)


def can_manage(principal: Principal, tenant_id: str) -> bool:
    return principal.role is Role.ADMIN and can_read(principal, tenant_id)


def can_subscribe(principal: Principal, channel: str, device_tenant: str | None) -> bool:
    """``device_tenant`` is the tenant of the channel's device (None if unknown). An unknown
    device is refused like another tenant's, so a refusal says nothing about existence; the
    system administrator may subscribe to anything, including devices not yet registered."""
    if principal.is_system_admin:
        return True
    if channel in (channels.ALL, channels.ALERTS) or channel.startswith(channels.KIND_PREFIX):
        return False  # across tenants
    for prefix in (channels.TENANT_PREFIX, channels.AGGREGATE_PREFIX, channels.DISPATCH_PREFIX):
        if channel.startswith(prefix):
            return channel[len(prefix) :] == principal.tenant_id
    return device_tenant is not None and device_tenant == principal.tenant_id
