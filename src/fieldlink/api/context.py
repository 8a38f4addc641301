"""Everything the REST routers need, handed over by the wiring (never the runtime itself)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from fieldlink.api.auth import HttpAuth
from fieldlink.core.codec import Limits
from fieldlink.ports import Cache, SessionCloser, Store
from fieldlink.services.agents import AgentService
from fieldlink.services.aggregate import AggregateService
from fieldlink.services.alerts import AlertService
from fieldlink.services.commands import CommandService
from fieldlink.services.dispatch import DispatchService
from fieldlink.services.health import Health
from fieldlink.services.identity import IdentityService
from fieldlink.services.ingest import Ingestor
from fieldlink.services.proposals import ProposalService
from fieldlink.services.registry import DeviceRegistry
from fieldlink.services.views import DeviceViews


@dataclass(frozen=True, slots=True)
class VppServices:
    aggregate: AggregateService
    dispatches: DispatchService
    proposals: ProposalService
    agents: AgentService


@dataclass(frozen=True, slots=True)
class ApiContext:
    auth: HttpAuth
    ingestor: Ingestor
    views: DeviceViews
    registry: DeviceRegistry
    store: Store
    cache: Cache
    commands: CommandService
    alerts: AlertService
    vpp: VppServices
    identity: IdentityService
    sessions: SessionCloser
    health: Health
    metrics: CollectorRegistry
    limits: Limits
    clock_ms: Callable[[], int]
    mounts: tuple[tuple[str, Any], ...] = ()  # (path, ASGI app): the Socket.IO polling endpoints
