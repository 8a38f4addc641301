"""Demo configurations of ``fieldlink up --demo NAME``: a seed system set up on the running
hub, with simulated devices and what to try printed after the banner.

``gas`` (the gas sensor gateway, seed 003): the ``SubTronics/data`` route on, three simulated
sensors publishing the vendor format every 2 s with now and then a leak past alarm level 1
or 2, and the two-level methane rule (app/demos/gas_*.toml).

``drones`` (drone fleet events, seed 002): three registered drones, the seed's register route,
and Socket.IO also at ``/ws/events``.

``vpp`` (the VPP aggregation platform, seeds 000 and 001): 20 battery nodes of mixed sizes in
two sites reporting every 2 s, manual approval of agent proposals, and a demand-response event
that starts 2 minutes after the hub (reduce 40 kW for 10 minutes), so the demand-response
agent's proposal appears at once and waits for an operator.

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
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson

from fieldlink.app.settings import Settings
from fieldlink.app.wiring import Runtime
from fieldlink.core.access import Role
from fieldlink.simulator.model import GasSensorModel, NodeModel
from fieldlink.simulator.runner import CommandBehavior, SimulatedDevice

DEMOS = ("tenants", "gas", "drones", "vpp")
DEMO_FILES = resources.files("fieldlink.app.demos")


def demo_settings(settings: Settings) -> Settings:
    """What a demo changes in the settings before the hub is built."""
    if settings.demo == "gas":
        return replace(
            settings,
            routes_file=settings.routes_file or Path(str(DEMO_FILES / "gas_routes.toml")),
            alert_rules_file=settings.alert_rules_file or Path(str(DEMO_FILES / "gas_rules.toml")),
        )
    if settings.demo == "vpp":
        return replace(settings, vpp_approval="manual")
    if settings.demo == "drones" and "/ws/events/" not in settings.socketio_paths:
        return replace(settings, socketio_paths=(*settings.socketio_paths, "/ws/events/"))
    return settings


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


GAS_SENSORS = ("ST-4411", "ST-4412", "ST-4413")


async def gas(runtime: Runtime, http_port: int, say: Callable[[str], None]) -> None:
    """Three SubTronics sensors on ``SubTronics/data``; leaks cross the alarm levels."""
    base = f"http://{runtime.settings.http_host}:{http_port}"
    say(
        "\n".join(
            [
                "",
                "demo: gas (gas sensor gateway)",
                f"  sensors {', '.join(GAS_SENSORS)} publish to SubTronics/data every 2 s",
                "  rule gas-ch4: gas_ppm > 400 alarm_level_1, > 800 alarm_level_2,"
                " clears below 380",
                "  try it (token: the admin token above):",
                f"    const s = io('{base}', {{transports: ['websocket','polling'],"
                " auth: {token}});",
                "    s.on('connect', () => s.emit('subscribe:device', 'ST-4411'));",
                "    s.on('device:data', console.log); s.on('device:alerts', console.log);",
                f'    curl -H "Authorization: Bearer $TOKEN" {base}/api/alerts?state=active',
                '    curl -X POST -H "Authorization: Bearer $TOKEN"'
                " -H 'Content-Type: application/json'"
                f' -d \'{{"note":"on it"}}\' \\\n'
                f"      {base}/api/devices/ST-4411/alerts/<alert id>/acknowledge",
                "",
            ]
        )
    )
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from fieldlink.mqtt.connection import parse_mqtt_url

    host, port = parse_mqtt_url(runtime.mqtt_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fieldlink-demo-gas")
    client.connect(host, port)
    client.loop_start()
    sensors = [GasSensorModel.create(serial, seed=1) for serial in GAS_SENSORS]
    try:
        while True:
            for sensor in sensors:
                payload = orjson.dumps(sensor.step(time.time()))
                client.publish("SubTronics/data", payload, qos=1)
            await asyncio.sleep(2.0)
    finally:
        client.loop_stop()
        client.disconnect()


DRONES = (
    ("DRONE-001", "Falcon", "Surveillance"),
    ("DRONE-002", "Heron", "Inspection"),
    ("DRONE-003", "Swift", "Surveillance"),
)


async def drones(runtime: Runtime, http_port: int, say: Callable[[str], None]) -> None:
    """Three registered drones; the registry's changes are the events."""
    now_ms = int(time.time() * 1000)
    for serial, name, category in DRONES:
        if runtime.registry.get(serial) is None:
            runtime.registry.create(
                serial,
                "drone",
                {
                    "name": name,
                    "category": category,
                    "streamIsOn": False,
                    "aiDetection": False,
                    "detectionClasses": ["person", "vehicle"],
                },
                "default",
                now_ms,
            )
    base = f"http://{runtime.settings.http_host}:{http_port}"
    say(
        "\n".join(
            [
                "",
                "demo: drones (drone fleet events)",
                "  drones DRONE-001, DRONE-002, DRONE-003; Socket.IO also at /ws/events",
                "  try it (TOKEN: the admin token above):",
                "    sio = socketio.Client(); sio.on('drone:event', print)",
                f"    sio.connect('{base}', socketio_path='/ws/events', auth={{'token': TOKEN}})",
                "    sio.emit('subscribe', {'all': True})",
                f'    curl -X POST {base}/api/v1/drones/register -H "Authorization: Bearer $TOKEN"'
                " -H 'Content-Type: application/json' \\",
                '      -d \'{"deviceSerialNumber":"TEST123","deviceName":"Test Drone",'
                '"deviceCategory":"Surveillance","streamIsOn":false}\'',
                f'    curl -X PATCH {base}/api/devices/TEST123 -H "Authorization: Bearer $TOKEN"'
                " -H 'Content-Type: application/json' \\",
                '      -d \'{"attributes":{"streamIsOn":true}}\'    # drone.stream.status',
                "",
            ]
        )
    )
    await asyncio.Event().wait()  # the registry is the demo: nothing to run


VPP_NODES = 20
VPP_DR = {"in_s": 120, "duration_s": 600, "reduce_kw": 40.0}


async def vpp(runtime: Runtime, http_port: int, say: Callable[[str], None]) -> None:
    """20 nodes in sites north and south, and a DR event 2 minutes ahead."""
    base = f"http://{runtime.settings.http_host}:{http_port}"
    now_ms = int(time.time() * 1000)
    start_ms = now_ms + int(VPP_DR["in_s"] * 1000)
    event = await runtime.agents.add_dr_event(
        "default",
        {
            "start": start_ms,
            "end": start_ms + int(VPP_DR["duration_s"] * 1000),
            "reduce_kw": VPP_DR["reduce_kw"],
        },
        "demo",
    )
    say(
        "\n".join(
            [
                "",
                "demo: vpp (virtual power plant)",
                f"  {VPP_NODES} battery nodes (5-50 kW) in sites north and south, every 2 s",
                f"  DR event {event['id']}: reduce {VPP_DR['reduce_kw']:.0f} kW from 2 min"
                f" after start, for {VPP_DR['duration_s'] // 60} min; approval: manual",
                "  try it (TOKEN: the admin token above):",
                f'    curl -H "Authorization: Bearer $TOKEN" {base}/api/vpp/state',
                f'    curl -H "Authorization: Bearer $TOKEN" '
                f'"{base}/api/vpp/proposals?state=pending"',
                f'    curl -X POST -H "Authorization: Bearer $TOKEN" '
                f"{base}/api/vpp/proposals/<id>/approve",
                '    websocat -H "Authorization: Bearer $TOKEN" ws://'
                f"{runtime.settings.http_host}:{http_port}/ws",
                '      {"type":"subscribe","channel":"aggregate"}'
                '  {"type":"subscribe","channel":"dispatch"}',
                f"  docs: {base}/docs (REST), docs/vpp.md",
                "",
            ]
        )
    )
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as http:
        fleet = []
        for i in range(VPP_NODES):
            model = NodeModel.create(f"node-{i + 1:02d}", seed=runtime.settings.simulate_seed)
            model.site = "north" if i % 2 == 0 else "south"
            fleet.append(
                SimulatedDevice(
                    model,
                    mqtt_url=runtime.mqtt_url,
                    http=http,
                    prefix=runtime.settings.topic_prefix,
                )
            )
        for device in fleet:
            device.start()
        try:
            next_at = time.monotonic()
            while True:
                await asyncio.gather(*(device.tick() for device in fleet))
                next_at += 2.0
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await asyncio.gather(*(d.stop() for d in fleet), return_exceptions=True)


DemoRunner = Callable[[Runtime, int, Callable[[str], None]], Coroutine[Any, Any, None]]
RUNNERS: dict[str, DemoRunner] = {"tenants": tenants, "gas": gas, "drones": drones, "vpp": vpp}
