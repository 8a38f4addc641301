"""The files in deploy/ agree with the code: every FIELDLINK_* variable is a real option, each
instance has its own MQTT client id, nginx balances every instance, and mosquitto accepts the
shipped config."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

from fieldlink.cli import app
from fieldlink.mqtt.broker import find_mosquitto, free_port
from tests.support.servers import wait_for_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def serve_envvars() -> set[str]:
    import typer.main

    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {p.envvar for p in command.params if getattr(p, "envvar", None)}


def test_compose_uses_real_options_and_distinct_client_ids() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    hubs = {name: svc for name, svc in compose["services"].items()
            if name.startswith("fieldlink-")}
    assert len(hubs) >= 2
    known = serve_envvars() | {"FIELDLINK_DATA_DIR", "FIELDLINK_HOST", "FIELDLINK_HTTP_PORT"}
    ids = set()
    for svc in hubs.values():
        env = svc["environment"]
        assert set(env) <= known, set(env) - known
        assert env["FIELDLINK_MQTT_SHARED_GROUP"] and env["FIELDLINK_REDIS_URL"]
        ids.add(env["FIELDLINK_MQTT_CLIENT_ID"])
    assert len(ids) == len(hubs)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert set(re.findall(r"FIELDLINK_[A-Z_]+", dockerfile)) <= known
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert set(re.findall(r"server (fieldlink-\d+):8000", nginx)) == set(hubs)
    assert "proxy_set_header Upgrade $http_upgrade" in nginx


def test_mosquitto_accepts_the_shipped_config(tmp_path: Path) -> None:
    port = free_port()
    text = (DEPLOY / "mosquitto.conf").read_text()
    text = text.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    text = text.replace("/mosquitto/data/", f"{tmp_path}/")
    text = text.replace("log_dest stdout", f"log_dest file {tmp_path}/m.log")
    if os.geteuid() == 0:
        text += "user root\n"
    (tmp_path / "m.conf").write_text(text)
    broker = subprocess.Popen([find_mosquitto(), "-c", str(tmp_path / "m.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=broker)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        assert client.connect("127.0.0.1", port) == 0
        client.disconnect()
    finally:
        broker.terminate()
        broker.wait(10)
