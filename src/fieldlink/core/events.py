"""Every event the hub emits, as immutable typed values (STYLE.md §7).

Services publish these to the Bus; gateways render them (each client protocol its own way,
once per channel); other instances receive them whole through the bus (``encode_for_bus`` /
``decode_from_bus``), so no receiver ever re-parses a client-facing body to learn what
happened. Each event knows its ``channels`` (from the channel catalogue), the ``key`` a
lagging client conflates on, and its one native serializer ``data()`` (the body of a ``/ws``
event, docs/protocol.md).

Adding an event: a new ``Struct`` with a ``tag``, its ``channels``/``key``/``data``, and an entry
in ``DomainEvent``. Renderers skip types they do not carry.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

import msgspec

from fieldlink.core import channels
from fieldlink.core.alerts import Alert
from fieldlink.core.commands import Command
from fieldlink.core.model import Record


class EventType(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    DEVICE = "device"
    COMMAND = "command"
    ALERT = "alert"
    AGGREGATE = "aggregate"
    DISPATCH = "dispatch"
    PROPOSAL = "proposal"
    RULE = "rule"  # between instances only: an alert rule changed


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


class StatusReason(StrEnum):
    """Why a device's status changed (docs/devices.md#status)."""

    REPORTED = "reported"  # it said it is online
    TELEMETRY = "telemetry"  # it sent telemetry, so it is online
    SILENCE = "silence"  # nothing heard for longer than the silence timeout
    LAST_WILL = "last_will"  # a plain "offline": what devices set as their MQTT last will
    CLEAN_DISCONNECT = "clean_disconnect"  # it said it is going away on purpose
    STATUS_MESSAGE = "status_message"  # it said it is offline, for another reason


class DeviceAction(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class _Event(msgspec.Struct, frozen=True, tag_field="event"):
    """Common shape. ``local_only``: derived identically on every instance (silence-based
    status, catch-up after a bus outage), so never sent to other instances."""

    type: ClassVar[EventType]
    final: ClassVar[bool] = False  # the last event of a private channel


class TelemetryAccepted(_Event, frozen=True, tag="telemetry"):
    """A record passed validation and dedupe (it is being stored)."""

    type: ClassVar[EventType] = EventType.TELEMETRY
    record: Record
    local_only: bool = False

    @property
    def channels(self) -> tuple[str, ...]:
        record = self.record
        return channels.for_device_event(record.device_id, record.tenant_id)

    @property
    def key(self) -> str:
        return self.record.device_id

    def data(self) -> dict[str, Any]:
        return self.record.to_event_data()


class _DeviceEvent(_Event, frozen=True):
    """An event about one device: on its channels, conflated per device."""

    device_id: str
    tenant_id: str

    @property
    def channels(self) -> tuple[str, ...]:
        return channels.for_device_event(self.device_id, self.tenant_id)

    @property
    def key(self) -> str:
        return self.device_id


class StatusChanged(_DeviceEvent, frozen=True, tag="status"):
    type: ClassVar[EventType] = EventType.STATUS
    status: DeviceStatus
    ts_ms: int
    reason: StatusReason
    local_only: bool = False

    def data(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "status": str(self.status),
            "ts": self.ts_ms,
            "reason": str(self.reason),
        }


class DeviceChanged(_DeviceEvent, frozen=True, tag="device"):
    """A device was registered, changed or removed. ``meta`` is the device's whole metadata
    (its attributes) after the change; ``changes`` (updates) holds exactly what changed,
    ``{attribute: [old, new]}``; ``name`` is the kind's name for the event (core/kinds.py:
    ``drone.stream.status``), or "" for a kind without named events."""

    type: ClassVar[EventType] = EventType.DEVICE
    action: DeviceAction
    kind: str
    meta: dict[str, Any]
    created_ms: int
    changes: dict[str, list[Any]] | None = None
    name: str = ""
    local_only: bool = False

    @property
    def channels(self) -> tuple[str, ...]:
        names = channels.for_device_change(self.device_id, self.tenant_id, self.kind)
        if self.changes and "kind" in self.changes:  # it left a kind: that kind hears it too
            old_kind = str(self.changes["kind"][0])
            names = (*names[:3], channels.KIND_PREFIX + old_kind, *names[3:])
        return names

    def data(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "device_id": self.device_id,
            "action": str(self.action),
            "kind": self.kind,
            "meta": self.meta,
            "tenant": self.tenant_id,
        }
        if self.changes is not None:
            body["changes"] = {k: {"old": v[0], "new": v[1]} for k, v in self.changes.items()}
        if self.name:
            body["event"] = self.name
        return body


class CommandMoved(_Event, frozen=True, tag="command"):
    """A command reached a new state (one event per winning transition)."""

    type: ClassVar[EventType] = EventType.COMMAND
    command: Command
    tenant_id: str
    local_only: bool = False

    @property
    def final(self) -> bool:  # type: ignore[override]
        return self.command.terminal

    @property
    def channels(self) -> tuple[str, ...]:
        command = self.command
        return channels.for_command_event(command.id, command.device_id, self.tenant_id)

    @property
    def key(self) -> str:
        return self.command.id

    def data(self) -> dict[str, Any]:
        command = self.command
        body: dict[str, Any] = {
            "id": command.id,
            "device_id": command.device_id,
            "action": command.action,
            "status": str(command.status),
            "ts": command.stages.get(str(command.status), command.created_ms),
        }
        for key in ("reason", "error", "result"):
            value = getattr(command, key)
            if value is not None:
                body[key] = value
        return body


class AlertChanged(_Event, frozen=True, tag="alert"):
    """An alert was raised, escalated, acknowledged or cleared (the alert as it is now)."""

    type: ClassVar[EventType] = EventType.ALERT
    alert: Alert
    local_only: bool = False

    @property
    def channels(self) -> tuple[str, ...]:
        return channels.for_alert(self.alert.device_id, self.alert.tenant_id)

    @property
    def key(self) -> str:
        return self.alert.id

    def data(self) -> dict[str, Any]:
        return self.alert.to_dict()


class AggregateChanged(_Event, frozen=True, tag="aggregate"):
    """A tenant's fleet aggregate now (services/aggregate.py): ``state`` is
    ``{"tenant", "total": {...}, "groups": {...}, "max_age_s"}``. Every instance computes its
    own (``local_only``)."""

    type: ClassVar[EventType] = EventType.AGGREGATE
    tenant_id: str
    state: dict[str, Any]
    local_only: bool = True

    @property
    def channels(self) -> tuple[str, ...]:
        return (channels.aggregate(self.tenant_id),)

    @property
    def key(self) -> str:
        return self.tenant_id

    def data(self) -> dict[str, Any]:
        return self.state


class DispatchChanged(_Event, frozen=True, tag="dispatch"):
    """A dispatch's log entry changed (services/dispatch.py): ``name`` is
    ``dispatch.created|started|command|progress|reallocated|optimized|ended``; ``dispatch`` is the
    whole entry (docs/vpp.md#the-dispatch-log)."""

    type: ClassVar[EventType] = EventType.DISPATCH
    tenant_id: str
    name: str
    dispatch: dict[str, Any]
    local_only: bool = False

    @property
    def channels(self) -> tuple[str, ...]:
        return (channels.dispatch(self.tenant_id),)

    @property
    def key(self) -> str:
        return f"{self.dispatch['id']}#{self.dispatch['version']}"

    def data(self) -> dict[str, Any]:
        return {"event": self.name, "dispatch": self.dispatch}


class ProposalChanged(_Event, frozen=True, tag="proposal"):
    """An agent proposal was made or decided, or ran (services/proposals.py)."""

    type: ClassVar[EventType] = EventType.PROPOSAL
    tenant_id: str
    proposal: dict[str, Any]
    local_only: bool = False

    @property
    def channels(self) -> tuple[str, ...]:
        return (channels.dispatch(self.tenant_id),)

    @property
    def key(self) -> str:
        return f"{self.proposal['id']}#{self.proposal['version']}"

    def data(self) -> dict[str, Any]:
        return self.proposal


class RuleChanged(_Event, frozen=True, tag="rule"):
    """An alert rule was created, replaced (``rule``: its JSON shape) or deleted (None). On
    no channel: it only tells the other instances."""

    type: ClassVar[EventType] = EventType.RULE
    rule_id: str
    tenant_id: str
    rule: dict[str, Any] | None
    local_only: bool = False

    @property
    def channels(self) -> tuple[str, ...]:
        return ()

    @property
    def key(self) -> str:
        return self.rule_id

    def data(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "tenant": self.tenant_id, "rule": self.rule}


DomainEvent = (
    TelemetryAccepted
    | StatusChanged
    | DeviceChanged
    | CommandMoved
    | AlertChanged
    | AggregateChanged
    | DispatchChanged
    | ProposalChanged
    | RuleChanged
)
"""Every event type; the bus carries exactly these."""

_bus_encoder = msgspec.json.Encoder()
_bus_decoder = msgspec.json.Decoder(DomainEvent)


def encode_for_bus(event: DomainEvent) -> bytes:
    """The whole event (every field a receiver needs), tagged with its type."""
    return _bus_encoder.encode(event)


def decode_from_bus(data: bytes) -> DomainEvent:
    """The inverse of ``encode_for_bus``; raises ``msgspec.ValidationError`` /
    ``msgspec.DecodeError`` for anything else."""
    event: DomainEvent = _bus_decoder.decode(data)
    return event
