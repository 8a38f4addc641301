"""Commands to devices: accept, send on ``edge/{id}/control``, correlate acks, enforce
deadlines, and publish every transition (docs/commands.md).

The command log in the store is the authority. Every state change is a compare-and-set on the
stored status, so when instances race (an ack handled by one, the deadline sweeper on another,
a restart in between) exactly one change wins and each command reaches exactly one terminal
state. Each winning change is published once on the bus as a ``command`` event on the
requester's private channel and the device's channels; every instance learns of it from there
(REST waiters resolve, requesters' WebSockets are served).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from fieldlink.core import channels
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
from fieldlink.core.errors import FieldlinkError, NotFound, ValidationError
from fieldlink.core.model import Device
from fieldlink.core.status import StatusBook
from fieldlink.core.topics import TopicScheme
from fieldlink.ports import Bus, CommandLog, Event

log = logging.getLogger("fieldlink.commands")

# publish(topic, payload) -> True if handed to a connected MQTT client
PublishFn = Callable[[str, bytes], bool]


class DuplicateCommand(FieldlinkError):
    code = "duplicate_id"
    http_status = 409


@dataclass(slots=True)
class CommandCounters:
    accepted: int = 0
    refused: int = 0  # invalid requests and taken ids: never in the log
    sent: int = 0
    acks: int = 0
    late_acks: int = 0
    acks_rejected: int = 0  # malformed, unknown id, or from another device
    terminal: int = 0


def new_command_id() -> str:
    return "c-" + secrets.token_hex(8)


class CommandService:
    def __init__(
        self,
        *,
        log_store: CommandLog,
        bus: Bus,
        status: StatusBook,
        devices: dict[str, Device],
        tenant_of: Callable[[str], str],
        scheme: TopicScheme,
        clock_ms: Callable[[], int],
        publish: PublishFn,
        connected: Callable[[], bool],
        limits: Limits = DEFAULT_LIMITS,
        default_timeout_ms: int = 10_000,
        origin: str = "",
    ) -> None:
        self.store = log_store
        self.bus = bus
        self.status = status
        self.devices = devices
        self.tenant_of = tenant_of  # the ingestor's: registration, credentials, or default
        self.scheme = scheme
        self.clock_ms = clock_ms
        self.publish_control = publish
        self.connected = connected
        self.limits = limits
        self.default_timeout_ms = default_timeout_ms
        self.origin = origin
        self.counters = CommandCounters()
        self._waiters: dict[str, list[asyncio.Future[Command]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        bus.subscribe(self._on_event)

    # ---- requests -----------------------------------------------------------------------

    def parse(self, obj: Any, device_id: str | None = None) -> CommandRequest:
        """Validate a request (raises ``ValidationError``)."""
        return parse_request(
            obj, device_id=device_id, limits=self.limits, default_timeout_ms=self.default_timeout_ms
        )

    async def submit(
        self,
        request: CommandRequest,
        command_id: str | None = None,
        on_logged: Callable[[Command], None] | None = None,
    ) -> Command:
        """Log the command and send it (or fail it at once for an offline device, or keep it
        pending until the device is back when ``queue`` is set). Returns it as it stands.
        Raises ``DuplicateCommand`` for a taken id; an unknown device is logged as
        ``rejected``. ``on_logged`` runs once the id is ours, before the first event (the
        WebSocket requester joins the command's channel there)."""
        now = self.clock_ms()
        command = new_command(
            request, command_id or request.id or new_command_id(), now, self.origin
        )
        if not await self.store.insert_command(command):
            self.counters.refused += 1
            raise DuplicateCommand(f"command id {command.id!r} is already taken")
        self.counters.accepted += 1
        if on_logged is not None:
            on_logged(command)
        self._publish(command)
        if request.device_id not in self.devices:
            return await self._move(
                command,
                Status.REJECTED,
                reason="unknown_device",
                error=f"device {request.device_id!r} is not registered",
            )
        if self.status.status(request.device_id) == "offline" and not request.queue:
            return await self._move(
                command, Status.FAILED, reason="offline", error="the device is offline"
            )
        if self.status.status(request.device_id) == "offline":
            return command  # queued: sent when the device comes back, or expires
        return await self._send(command)

    async def _send(self, command: Command) -> Command:
        """pending -> sent, then publish on the control topic. Marked sent first, so an answer
        that comes back at once finds it sent. Not connected: stays pending (sent on
        reconnect, or expires)."""
        topic = self.scheme.control(command.device_id)
        payload = orjson.dumps(control_message(command))
        moved = await self._move(command, Status.SENT, only_if_connected=True)
        if moved.status is Status.SENT and moved is not command:
            if self.publish_control(topic, payload):
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
        if only_if_connected and not self.connected():
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
            if self.status.status(command.device_id) == "offline":
                continue
            if (await self._send(command)).status is Status.SENT:
                sent += 1
        return sent

    # ---- events -------------------------------------------------------------------------

    def _publish(self, command: Command) -> None:
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
        if command.terminal:
            self.counters.terminal += 1
        self.bus.publish(
            Event(
                "command",
                channels.for_command_event(
                    command.id, command.device_id, self.tenant_of(command.device_id)
                ),
                orjson.dumps(body),
                command.id,
                final=command.terminal,
            )
        )

    def _on_event(self, event: Event) -> None:
        """Bus handler (this instance's events and others'): wake REST waiters, and send
        queued commands when a device comes online."""
        if event.type == "command" and event.final:
            waiters = self._waiters.pop(event.key, None)
            if waiters:
                self._spawn(self._wake(event.key, waiters))
        elif event.type == "status" and orjson.loads(event.data).get("status") == "online":
            self._spawn(self.send_pending(event.key))

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

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
