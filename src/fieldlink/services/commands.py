"""Commands to devices: accept, send on ``edge/{id}/control``, correlate acks, enforce
deadlines, and publish every transition (docs/commands.md).

The command log in the store is the authority. Every state change is a compare-and-set on the
stored status, so when instances race (an ack handled by one, the deadline sweeper on another,
a restart in between) exactly one change wins and each command reaches exactly one terminal
state. Each winning change is published once on the bus as a ``CommandMoved`` event on the
requester's private channel and the device's channels; every instance learns of it from there
(REST waiters resolve, requesters' WebSockets are served).

Flow, one direction each: a request (REST or a gateway session) is ``authorize``d, ``log``ged
and ``send``-t: the control message goes to the ``ControlPublisher``. A device's answer comes
from the MQTT listener to ``handle_ack`` and leaves as an event on the bus. Authorization for
commands lives here only, so REST and WebSocket refuse alike.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from fieldlink.core.access import Principal, can_command, can_read
from fieldlink.core.codec import DEFAULT_LIMITS, Limits, decode_json
from fieldlink.core.commands import (
    Command,
    CommandRequest,
    IllegalTransition,
    Status,
    apply_ack,
    control_message,
    expire,
    new_command,
    parse_ack,
    parse_request,
    transition,
)
from fieldlink.core.errors import Conflict, FieldlinkError, Forbidden, NotFound, ValidationError
from fieldlink.core.events import (
    CommandMoved,
    DeviceAction,
    DeviceChanged,
    DeviceStatus,
    DomainEvent,
    StatusChanged,
)
from fieldlink.core.measures import Measure, counter, measures_of
from fieldlink.core.topics import TopicScheme
from fieldlink.ports import Bus, CommandLog, ControlPublisher, DeviceDirectory, PresenceView

log = logging.getLogger("fieldlink.commands")


class DuplicateCommand(Conflict):
    code = "duplicate_id"


class UnknownDevice(NotFound):
    """Unknown, or another tenant's (a refusal says nothing about existence)."""

    code = "unknown_device"


@dataclass(slots=True)
class CommandCounters:
    accepted: int = counter("fieldlink_commands_accepted", "Commands logged")
    refused: int = counter(
        "fieldlink_commands_refused",
        "Command requests refused before logging (invalid, id taken, not allowed)",
    )
    sent: int = counter("fieldlink_commands_sent", "Commands published to devices")
    acks: int = counter("fieldlink_command_acks", "Command answers received from devices")
    late_acks: int = counter(
        "fieldlink_command_acks_late",
        "Answers after a terminal state (recorded, outcome unchanged)",
    )
    acks_rejected: int = counter(
        "fieldlink_command_acks_rejected",
        "Answers that were malformed, for unknown commands, or from another device",
    )
    terminal: int = counter(
        "fieldlink_commands_terminal", "Commands that reached a terminal state (on this instance)"
    )


def new_command_id() -> str:
    return "c-" + secrets.token_hex(8)


class CommandService:
    def __init__(
        self,
        *,
        log_store: CommandLog,
        bus: Bus,
        devices: DeviceDirectory,
        presence: PresenceView,
        publisher: ControlPublisher,
        scheme: TopicScheme,
        clock_ms: Callable[[], int],
        limits: Limits = DEFAULT_LIMITS,
        default_timeout_ms: int = 10_000,
        origin: str = "",
    ) -> None:
        self.store = log_store
        self.bus = bus
        self.devices = devices
        self.presence = presence
        self.publisher = publisher
        self.scheme = scheme
        self.clock_ms = clock_ms
        self.limits = limits
        self.default_timeout_ms = default_timeout_ms
        self.origin = origin
        self.counters = CommandCounters()
        self._waiters: dict[str, list[asyncio.Future[Command]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connections_seen = 0  # the publisher's connects we have sent pending commands for

    # ---- requests -----------------------------------------------------------------------

    def parse(self, obj: Any, device_id: str | None = None) -> CommandRequest:
        """Validate a request (raises ``ValidationError``, counted as refused)."""
        try:
            return parse_request(
                obj,
                device_id=device_id,
                limits=self.limits,
                default_timeout_ms=self.default_timeout_ms,
            )
        except ValidationError:
            self.counters.refused += 1
            raise

    def authorize(self, principal: Principal, device_id: str) -> None:
        """May ``principal`` command this device? ``UnknownDevice`` for another tenant's
        device (alike an unknown one), ``Forbidden`` for a role that may not send commands.
        A device nobody registered yet passes (it is logged and ``rejected``) if the caller
        may command in its own tenant."""
        device = self.devices.get(device_id)
        if device is not None and not can_read(principal, device.tenant_id):
            self.counters.refused += 1
            raise UnknownDevice(f"device {device_id!r} is not registered")
        if not can_command(principal, device.tenant_id if device else principal.tenant_id):
            self.counters.refused += 1
            raise Forbidden("your role may not send commands", code="forbidden")

    async def log(self, request: CommandRequest, command_id: str | None = None) -> Command:
        """Put the command in the log (no event yet). Raises ``DuplicateCommand`` for a taken
        id. The caller then ``send``s it (a WebSocket requester joins the command's private
        channel in between, so it sees every transition)."""
        command = new_command(
            request, command_id or request.id or new_command_id(), self.clock_ms(), self.origin
        )
        if not await self.store.insert_command(command):
            self.counters.refused += 1
            raise DuplicateCommand(f"command id {command.id!r} is already taken")
        self.counters.accepted += 1
        return command

    async def send(self, command: Command) -> Command:
        """Publish the command as pending, then send it (or fail it at once for an offline
        device, keep it pending until the device is back when ``queue`` is set, or reject it
        for an unknown device). Returns it as it stands."""
        self._publish(command)
        device_id = command.device_id
        if self.devices.get(device_id) is None:
            return await self._move(
                command,
                Status.REJECTED,
                reason="unknown_device",
                error=f"device {device_id!r} is not registered",
            )
        if self.presence.status(device_id) == DeviceStatus.OFFLINE:
            if command.queue:
                return command  # sent when the device comes back, or expires
            return await self._move(
                command, Status.FAILED, reason="offline", error="the device is offline"
            )
        return await self._send(command)

    async def submit(self, request: CommandRequest) -> Command:
        """``log`` then ``send`` (REST)."""
        return await self.send(await self.log(request))

    async def _send(self, command: Command) -> Command:
        """pending -> sent, then publish on the control topic. Marked sent first, so an answer
        that comes back at once finds it sent. Not connected: stays pending (sent on
        reconnect, or expires)."""
        topic = self.scheme.control(command.device_id)
        payload = orjson.dumps(control_message(command))
        moved = await self._move(command, Status.SENT, only_if_connected=True)
        if moved.status is Status.SENT and moved is not command:
            if self.publisher.publish(topic, payload):
                self.counters.sent += 1
            else:
                log.warning("command %s marked sent but the broker went away", command.id)
        return moved

    async def _move(
        self,
        command: Command,
        target: Status,
        *,
        reason: str | None = None,
        error: str | None = None,
        only_if_connected: bool = False,
    ) -> Command:
        """Compare-and-set one transition; returns the stored command (ours, or whatever won)."""
        if only_if_connected and not self.publisher.connected:
            return command
        try:
            moved = transition(command, target, self.clock_ms(), reason=reason, error=error)
        except IllegalTransition:
            return command
        if await self.store.replace_command(moved, command.status):
            self._publish(moved)
            return moved
        return await self.store.get_command(command.id) or command

    # ---- answers from devices -----------------------------------------------------------

    def handle_ack(self, device_id: str, payload: bytes) -> asyncio.Future[Any]:
        """An ``edge/{id}/ack`` message. The returned future resolves once the answer is in
        the log (the MQTT listener acknowledges the message then)."""
        return self._spawn(self._ack(device_id, payload))

    async def _ack(self, device_id: str, payload: bytes) -> None:
        self.counters.acks += 1
        try:
            ack = parse_ack(decode_json(payload, self.limits))
        except ValidationError as exc:
            self.counters.acks_rejected += 1
            log.info("ack from %r rejected: %s", device_id[:130], exc.message)
            return
        for _ in range(5):  # another instance may move it between our read and our write
            command = await self.store.get_command(ack.command_id)
            if command is None or command.device_id != device_id:
                self.counters.acks_rejected += 1
                log.info("ack from %r for unknown command %r", device_id[:130], ack.command_id)
                return
            answered = apply_ack(command, ack, self.clock_ms())
            if await self.store.replace_command(answered, command.status):
                if answered.status is command.status:
                    self.counters.late_acks += 1  # recorded; the outcome stands
                else:
                    self._publish(answered)
                return

    # ---- deadlines, reconnects, devices coming back ------------------------------------

    async def run_sweeper(self, interval_s: float) -> None:
        """Until cancelled, every ``interval_s``: enforce deadlines, and once the broker
        connection is back after a loss, send what waited for it."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                connections = self.publisher.connections
                if connections != self._connections_seen and self.publisher.connected:
                    self._connections_seen = connections
                    await self.send_pending(None)
                await self.sweep()
            except FieldlinkError as exc:
                log.warning("command sweep: %s", exc)

    async def sweep(self, limit: int = 500) -> int:
        """Time out or expire every open command past its deadline. Returns how many moved."""
        moved = 0
        for command in await self.store.due_commands(self.clock_ms(), limit):
            ended = expire(command, self.clock_ms())
            if await self.store.replace_command(ended, command.status):
                self._publish(ended)
                moved += 1
        return moved

    async def send_pending(self, device_id: str | None = None) -> int:
        """Send what waits: the device's queued commands when it comes online, or every
        pending command after the broker connection is back."""
        sent = 0
        for command in await self.store.pending_commands(device_id):
            if self.presence.status(command.device_id) == DeviceStatus.OFFLINE:
                continue
            if (await self._send(command)).status is Status.SENT:
                sent += 1
        return sent

    # ---- events -------------------------------------------------------------------------

    def _publish(self, command: Command) -> None:
        if command.terminal:
            self.counters.terminal += 1
        self.bus.publish(CommandMoved(command, self.devices.tenant_of(command.device_id)))

    def on_event(self, event: DomainEvent) -> None:
        """Bus handler (this instance's events and others'): wake REST waiters, and send
        queued commands when a device comes online."""
        if isinstance(event, CommandMoved) and event.final:
            waiters = self._waiters.pop(event.command.id, None)
            if waiters:
                self._spawn(self._wake(event.command.id, waiters))
        elif isinstance(event, StatusChanged) and event.status == DeviceStatus.ONLINE:
            self._spawn(self.send_pending(event.device_id))
        elif isinstance(event, DeviceChanged) and event.action is DeviceAction.DELETED:
            self._spawn(self.fail_open(event.device_id, "device_deleted", "the device was deleted"))

    async def fail_open(self, device_id: str, reason: str, error: str) -> int:
        """End every open command of a device as ``failed`` (every instance may try: the
        compare-and-set lets one win). Returns how many this call moved."""
        moved = 0
        for command in await self.store.list_commands(device_id, 1000):
            if command.status in (Status.PENDING, Status.SENT):
                ended = await self._move(command, Status.FAILED, reason=reason, error=error)
                moved += ended is not command and ended.status is Status.FAILED
        return moved

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wake(self, command_id: str, waiters: list[asyncio.Future[Command]]) -> None:
        command = await self.store.get_command(command_id)
        for waiter in waiters:
            if not waiter.done() and command is not None:
                waiter.set_result(command)

    async def wait(self, command: Command, extra_s: float = 1.0) -> Command:
        """The command once terminal (for ``?wait=true``); as it stands if its deadline plus
        ``extra_s`` passes first."""
        if command.terminal:
            return command
        waiter: asyncio.Future[Command] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command.id, []).append(waiter)
        current = await self.store.get_command(command.id)  # it may have ended meanwhile
        if current is not None and current.terminal:
            return current
        left_s = max(0.0, (command.deadline_ms - self.clock_ms()) / 1000) + extra_s
        try:
            return await asyncio.wait_for(waiter, left_s)
        except TimeoutError:
            return await self.store.get_command(command.id) or command

    async def get(self, command_id: str) -> Command:
        command = await self.store.get_command(command_id)
        if command is None:
            raise NotFound(f"command {command_id!r} not found")
        return command

    def measures(self) -> Iterator[Measure]:
        return measures_of(self.counters)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
