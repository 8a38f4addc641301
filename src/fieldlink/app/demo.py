"""Demo configurations of ``fieldlink up --demo NAME``: a seed system set up on the running
hub, with simulated devices and what to try printed after the banner.

``tenants`` (the multi-tenant platform, seed 004): tenants ``acme`` and ``bolt``, an operator
and a viewer in ``acme`` and an operator in ``bolt``, each with a password; devices
``acme-001`` (acks commands), ``acme-002`` (fails them), ``acme-003`` (never answers: "Device
is not responding" after the command timeout) and ``bolt-001``, credentialed into their
tenants and reporting every 2 s.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from fieldlink.app.wiring import Runtime
from fieldlink.core.access import Role
from fieldlink.simulator.model import NodeModel
from fieldlink.simulator.runner import CommandBehavior, SimulatedDevice

DEMOS = ("tenants",)


@dataclass(frozen=True)
class DemoUser:
    name: str
    tenant: str
    role: Role


TENANT_USERS = (
    DemoUser("alice", "acme", Role.OPERATOR),
    DemoUser("ann", "acme", Role.VIEWER),
    DemoUser("bob", "bolt", Role.OPERATOR),
)
TENANT_DEVICES: tuple[tuple[str, str, CommandBehavior], ...] = (
    ("acme-001", "acme", "ack"),
    ("acme-002", "acme", "fail"),
    ("acme-003", "acme", "ignore"),
    ("bolt-001", "bolt", "ack"),
)


async def tenants(runtime: Runtime, http_port: int, say: Callable[[str], None]) -> None:
    """Set up the ``tenants`` demo, print what to try, run its devices until cancelled."""
    identity = runtime.identity
    passwords: dict[str, str] = {}
    for user in TENANT_USERS:
        password = f"{user.name}-{secrets.token_hex(4)}"
        if await identity.user_tenant(user.name) is None:
            await identity.create_user(user.name, password, user.role, user.tenant)
            passwords[user.name] = password
    for device_id, tenant, _ in TENANT_DEVICES:
        await identity.create_device_credentials(device_id, tenant)
        runtime.registry.assign_tenant(device_id, tenant)
    base = f"http://{runtime.settings.http_host}:{http_port}"
    lines = ["", "demo: tenants (multi-tenant platform)"]
    for user in TENANT_USERS:
        shown = passwords.get(user.name, "(set on an earlier start)")
        lines.append(
            f"  user {user.name:<6} {user.role:<9} tenant {user.tenant:<5} password {shown}"
        )
    lines += [
        "  devices acme-001 (acks), acme-002 (fails), acme-003 (never answers), bolt-001",
        "  try it:",
        f"    TOKEN=$(curl -s {base}/api/auth/token -H 'Content-Type: application/json' \\",
        '      -d \'{"username":"alice","password":"<alice\'s password>"}\' | jq -r .access_token)',
        "    then, with socket.io-client:",
        f"    const s = io('{base}', {{auth: {{token}}}});",
        "    s.on('device:telemetry', console.log);  // acme's devices only",
        "    s.emit('send:command', {deviceId: 'acme-003', action: 'idle', params: {}},",
        "           (r) => console.log(r));           // 'Device is not responding' after 10 s",
        "    s.emit('subscribe', {deviceId: 'bolt-001'}, console.log);  // refused: other tenant",
    ]
    say("\n".join(lines) + "\n")
    await run_devices(runtime, base, TENANT_DEVICES, interval_s=2.0)


async def run_devices(
    runtime: Runtime,
    http_url: str,
    devices: tuple[tuple[str, str, CommandBehavior], ...],
    interval_s: float,
) -> None:
    async with httpx.AsyncClient(base_url=http_url, timeout=5.0) as http:
        fleet = [
            SimulatedDevice(
                NodeModel.create(device_id, seed=i + 1),
                mqtt_url=runtime.mqtt_url,
                http=http,
                prefix=runtime.settings.topic_prefix,
                command_behavior=behavior,
            )
            for i, (device_id, _, behavior) in enumerate(devices)
        ]
        for device in fleet:
            device.start()
        try:
            next_at = time.monotonic()
            while True:
                await asyncio.gather(*(device.tick() for device in fleet))
                next_at += interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await asyncio.gather(*(d.stop() for d in fleet), return_exceptions=True)


DemoRunner = Callable[[Runtime, int, Callable[[str], None]], Coroutine[Any, Any, None]]
RUNNERS: dict[str, DemoRunner] = {"tenants": tenants}
