"""Commands to devices: the lifecycle as a table, request validation, and the wire formats of
``edge/{id}/control`` and ``edge/{id}/ack``. Pure: no I/O, no clock reads (times are passed in).

Lifecycle::

    pending ──► sent ──► acked | failed | timeout
       │
       ├──► rejected   (validation, authorization, unknown device: never sent)
       ├──► failed     (the device is known to be offline and the caller did not ask to queue)
       └──► expired    (never sent before its deadline)

Terminal states never change. An acknowledgement that arrives after one (say after
``timeout``) is recorded on the command as ``late_ack`` and leaves the state as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from fieldlink.core.codec import DEFAULT_LIMITS, Limits, check_value
from fieldlink.core.errors import ValidationError
from fieldlink.core.model import is_valid_device_id


class Status(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    EXPIRED = "expired"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.SENT, Status.REJECTED, Status.FAILED, Status.EXPIRED}),
    Status.SENT: frozenset({Status.ACKED, Status.FAILED, Status.TIMEOUT}),
    Status.ACKED: frozenset(),
    Status.FAILED: frozenset(),
    Status.TIMEOUT: frozenset(),
    Status.REJECTED: frozenset(),
    Status.EXPIRED: frozenset(),
}
OPEN = (Status.PENDING, Status.SENT)
TERMINAL = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)

DEFAULT_TIMEOUT_MS = 10_000
MIN_TIMEOUT_MS = 100
MAX_TIMEOUT_MS = 300_000
MAX_QUEUE_MS = 24 * 3_600_000
NOT_RESPONDING = "Device is not responding"

_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ACTION_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class IllegalTransition(Exception):
    def __init__(self, current: Status, target: Status) -> None:
        super().__init__(f"a command cannot go from {current} to {target}")
        self.current = current
        self.target = target


@dataclass(frozen=True, slots=True)
class Command:
    """One command and its history. ``stages`` maps each state reached to its time (ms);
    ``reason`` is a stable code for why it ended (``offline``, ``timeout``, ``device_error``,
    ``unknown_device``, ...), ``error`` the human text."""

    id: str
    device_id: str
    action: str
    params: dict[str, Any]
    timeout_ms: int
    created_ms: int
    deadline_ms: int
    status: Status = Status.PENDING
    stages: dict[str, int] = field(default_factory=dict)
    queue: bool = False
    reason: str | None = None
    error: str | None = None
    result: Any = None
    late_ack: dict[str, Any] | None = None
    origin: str = ""  # the instance that accepted it (diagnostics)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "device_id": self.device_id,
            "action": self.action,
            "params": self.params,
            "status": str(self.status),
            "timeout_ms": self.timeout_ms,
            "created": self.created_ms,
            "deadline": self.deadline_ms,
            "stages": self.stages,
            "queue": self.queue,
        }
        for key in ("reason", "error", "result", "late_ack"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.origin:
            body["origin"] = self.origin
        return body

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Command:
        return cls(
            id=d["id"],
            device_id=d["device_id"],
            action=d["action"],
            params=d.get("params") or {},
            timeout_ms=int(d["timeout_ms"]),
            created_ms=int(d["created"]),
            deadline_ms=int(d["deadline"]),
            status=Status(d["status"]),
            stages={str(k): int(v) for k, v in (d.get("stages") or {}).items()},
            queue=bool(d.get("queue", False)),
            reason=d.get("reason"),
            error=d.get("error"),
            result=d.get("result"),
            late_ack=d.get("late_ack"),
            origin=d.get("origin", ""),
        )


def transition(
    command: Command,
    target: Status,
    now_ms: int,
    *,
    reason: str | None = None,
    error: str | None = None,
    result: Any = None,
) -> Command:
    """The command in ``target``; raises ``IllegalTransition`` if the table forbids it."""
    if target not in TRANSITIONS[command.status]:
        raise IllegalTransition(command.status, target)
    stages = dict(command.stages)
    stages[str(target)] = now_ms
    return replace(
        command,
        status=target,
        stages=stages,
        reason=reason if reason is not None else command.reason,
        error=error if error is not None else command.error,
        result=result if result is not None else command.result,
    )


@dataclass(frozen=True, slots=True)
class Ack:
    command_id: str
    ok: bool
    result: Any = None
    error: str | None = None


def apply_ack(command: Command, ack: Ack, now_ms: int) -> Command:
    """The command after its device answered: ``acked`` or ``failed`` from ``sent`` (or from
    ``pending``: the answer can overtake our own bookkeeping). After a terminal state the answer
    is kept as ``late_ack`` and the state is unchanged."""
    if command.terminal:
        late: dict[str, Any] = {"ts": now_ms, "ok": ack.ok}
        if ack.ok:
            late["result"] = ack.result
        else:
            late["error"] = ack.error
        return replace(command, late_ack=late)
    current = command
    if current.status is Status.PENDING:
        current = transition(current, Status.SENT, now_ms)
    if ack.ok:
        return transition(current, Status.ACKED, now_ms, result=ack.result)
    return transition(
        current,
        Status.FAILED,
        now_ms,
        reason="device_error",
        error=ack.error or "the device reported a failure",
    )


def expire(command: Command, now_ms: int) -> Command:
    """What the deadline does: ``sent`` becomes ``timeout`` (the device is not responding),
    ``pending`` becomes ``expired`` (it never went out)."""
    if command.status is Status.SENT:
        return transition(command, Status.TIMEOUT, now_ms, reason="timeout", error=NOT_RESPONDING)
    return transition(
        command,
        Status.EXPIRED,
        now_ms,
        reason="expired",
        error="the command was not sent before its deadline",
    )


# ---- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRequest:
    id: str | None
    device_id: str
    action: str
    params: dict[str, Any]
    timeout_ms: int
    queue: bool
    queue_ms: int


def parse_request(
    obj: Any,
    *,
    device_id: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    default_timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> CommandRequest:
    """Check a command request (WebSocket message or REST body). ``device_id`` comes from the
    URL for REST. Raises ``ValidationError`` with a stable code and path."""
    if not isinstance(obj, dict):
        raise ValidationError("bad_command", "a command must be a JSON object", "$")
    command_id = obj.get("id")
    if command_id is not None and (
        not isinstance(command_id, str) or not _ID_RE.fullmatch(command_id)
    ):
        raise ValidationError(
            "invalid_command_id", "id must be 1-64 characters of A-Z a-z 0-9 _ . : -", "$.id"
        )
    device = device_id if device_id is not None else obj.get("device")
    if not isinstance(device, str) or not is_valid_device_id(device):
        raise ValidationError("invalid_device_id", "device must be a valid device id", "$.device")
    action = obj.get("action")
    if not isinstance(action, str) or not _ACTION_RE.fullmatch(action):
        raise ValidationError(
            "invalid_action",
            "action must start with a letter and hold up to 64 of A-Z a-z 0-9 _ . -",
            "$.action",
        )
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise ValidationError("invalid_params", "params must be a JSON object", "$.params")
    check_value(params, limits, "$.params")
    timeout_ms = obj.get("timeout_ms", default_timeout_ms)
    if (
        not isinstance(timeout_ms, int)
        or isinstance(timeout_ms, bool)
        or not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS
    ):
        raise ValidationError(
            "invalid_timeout",
            f"timeout_ms must be an integer from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}",
            "$.timeout_ms",
        )
    queue = obj.get("queue", False)
    if not isinstance(queue, bool):
        raise ValidationError("invalid_queue", "queue must be true or false", "$.queue")
    queue_ms = obj.get("queue_ms", timeout_ms)
    if (
        not isinstance(queue_ms, int)
        or isinstance(queue_ms, bool)
        or not MIN_TIMEOUT_MS <= queue_ms <= MAX_QUEUE_MS
    ):
        raise ValidationError(
            "invalid_queue_ms",
            f"queue_ms must be an integer from {MIN_TIMEOUT_MS} to {MAX_QUEUE_MS}",
            "$.queue_ms",
        )
    return CommandRequest(command_id, device, action, params, timeout_ms, queue, queue_ms)


def new_command(request: CommandRequest, command_id: str, now_ms: int, origin: str = "") -> Command:
    """A pending command. A queued command may wait ``queue_ms`` for its device to come online
    and then has ``timeout_ms`` for the answer; otherwise the deadline is ``timeout_ms``."""
    wait = request.queue_ms if request.queue else 0
    return Command(
        id=command_id,
        device_id=request.device_id,
        action=request.action,
        params=request.params,
        timeout_ms=request.timeout_ms,
        created_ms=now_ms,
        deadline_ms=now_ms + wait + request.timeout_ms,
        stages={str(Status.PENDING): now_ms},
        queue=request.queue,
        origin=origin,
    )


# ---- the device side ----------------------------------------------------------------------


def control_message(command: Command) -> dict[str, Any]:
    """The body published on ``edge/{id}/control`` (QoS 1)."""
    return {
        "id": command.id,
        "action": command.action,
        "params": command.params,
        "deadline": command.deadline_ms,
    }


def parse_ack(obj: Any) -> Ack:
    """``{"id", "ok": bool, "result"?, "error"?}`` from ``edge/{id}/ack``."""
    if not isinstance(obj, dict):
        raise ValidationError("bad_ack", "an ack must be a JSON object", "$")
    command_id = obj.get("id")
    if not isinstance(command_id, str) or not _ID_RE.fullmatch(command_id):
        raise ValidationError("invalid_command_id", "id must be a command id", "$.id")
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise ValidationError("invalid_ok", "ok must be true or false", "$.ok")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        error = str(error)
    return Ack(command_id, ok, obj.get("result"), error[:1024] if error else None)
