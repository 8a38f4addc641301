"""`fieldlink up` as a user runs it: a real process tree, ports, banner, clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from fieldlink.mqtt.broker import free_port

FIELDLINK = [sys.executable, "-m", "fieldlink.cli"]


def start_up(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*FIELDLINK, "up", "--data-dir", str(tmp_path / "data"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def read_banner(process: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    """Lines up to 'stop with Ctrl-C' (the banner's last line)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "stop with Ctrl-C" in line:
            return "".join(lines)
    process.kill()
    raise AssertionError("no banner:\n" + "".join(lines))


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(20)
    finally:
        if process.stdout is not None:
            process.stdout.close()
    return code


def test_sigterm_flushes_every_accepted_record(tmp_path: Path) -> None:
    http_port, mqtt_port = free_port(), free_port()
    process = start_up(tmp_path, "--http-port", str(http_port), "--mqtt-port", str(mqtt_port))
    try:
        banner = read_banner(process)
        assert f"http://127.0.0.1:{http_port}/" in banner
        assert f"mqtt://127.0.0.1:{mqtt_port}" in banner and "embedded mosquitto" in banner
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", mqtt_port)
        client.loop_start()
        infos = [client.publish(f"edge/cli{i % 5}/telemetry", json.dumps({"seq": i, "v": i}), qos=1)
                 for i in range(500)]
        for info in infos:
            info.wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
        deadline = time.monotonic() + 10
        received = 0.0
        while received < 500 and time.monotonic() < deadline:
            token = (tmp_path / "data" / "admin.token").read_text().strip()
            metrics = httpx.get(f"http://127.0.0.1:{http_port}/metrics",
                                headers={"Authorization": f"Bearer {token}"}).text
            received = next(float(line.split()[1]) for line in metrics.splitlines()
                            if line.startswith("fieldlink_ingest_received_total"))
        assert received == 500
    finally:
        code = stop(process)
    assert code == 0
    with sqlite3.connect(tmp_path / "data" / "fieldlink.db") as db:
        assert db.execute("SELECT count(*) FROM telemetry").fetchone()[0] == 500
        assert db.execute("SELECT count(*) FROM devices").fetchone()[0] == 5
    # The embedded broker went away with the hub.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.5).close()


def test_taken_mqtt_port_fails_with_a_clear_error_and_auto_picks_another(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        result = subprocess.run(
            [*FIELDLINK, "up", "--data-dir", str(tmp_path / "d1"), "--http-port", "auto",
             "--mqtt-port", str(taken)], capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 2
        assert f"port {taken} is already in use" in result.stderr
        assert "--mqtt-url" in result.stderr and "--mqtt-port auto" in result.stderr
    finally:
        holder.close()


def _hold(port: int) -> socket.socket | None:
    """Hold a default port for the test; None if something else already holds it."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def test_auto_ports_fall_back_when_defaults_are_taken(tmp_path: Path) -> None:
    holders = [_hold(8000), _hold(1883)]
    process = start_up(tmp_path, "--http-port", "auto", "--mqtt-port", "auto")
    try:
        banner = read_banner(process)
        http_line = next(line for line in banner.splitlines() if "dashboard" in line)
        mqtt_line = next(line for line in banner.splitlines() if "MQTT" in line)
        http_port = int(http_line.rsplit(":", 1)[1].strip("/\n "))
        mqtt_port = int(mqtt_line.split("mqtt://127.0.0.1:")[1].split()[0])
        assert http_port != 8000 and mqtt_port != 1883
        assert f"port 1883 is in use; the embedded broker uses port {mqtt_port}" in banner
        assert f"port 8000 is in use; HTTP/WebSocket use port {http_port}" in banner
        assert httpx.get(f"http://127.0.0.1:{http_port}/health").json()["status"] == "ok"
    finally:
        assert stop(process) == 0
        for holder in holders:
            if holder is not None:
                holder.close()


def test_embedded_broker_dies_with_a_killed_hub(tmp_path: Path) -> None:
    mqtt_port = free_port()
    process = start_up(tmp_path, "--http-port", "auto", "--mqtt-port", str(mqtt_port))
    try:
        read_banner(process)
    finally:
        process.kill()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.5).close()
        except OSError:
            break  # nothing listens any more: the broker went with the hub
        assert time.monotonic() < deadline, "the embedded broker outlived its hub"
        time.sleep(0.05)


def test_configuration_from_toml_env_and_flags_in_that_order(mosquitto, redis_server,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path) -> None:
    """Flag > FIELDLINK_* environment variable > --config TOML > default."""
    toml_port, env_port = free_port(), free_port()
    db = tmp_path / "from-env.db"
    config = tmp_path / "fieldlink.toml"
    config.write_text(
        f'mqtt_url = "{mosquitto.url}"\n'
        f"http_port = \"{toml_port}\"\n"
        f'redis_url = "{redis_server.url}"\n'
        'mqtt_shared_group = "from-toml"\n'
        'database_url = "sqlite:///ignored-because-env-wins.db"\n'
        'log_level = "error"\n'
    )
    env = {**os.environ, "FIELDLINK_HTTP_PORT": str(env_port),
           "FIELDLINK_DATABASE_URL": f"sqlite:///{db}", "FIELDLINK_LOG_LEVEL": "error"}
    process = subprocess.Popen(
        [*FIELDLINK, "serve", "--config", str(config), "--data-dir", str(tmp_path / "d"),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        banner = read_banner(process)
        assert f"http://127.0.0.1:{env_port}/" in banner  # env beats the file
        assert f"sqlite:///{db}" in banner
        assert f"{redis_server.url}  (Redis)" in banner  # from the file
        assert "$share/from-toml/" in banner
        health = httpx.get(f"http://127.0.0.1:{env_port}/health").json()
        assert health == {"status": "ok", "checks": {"store": "ok", "broker": "ok", "bus": "ok"}}
    finally:
        assert stop(process) == 0
    assert db.exists()


def test_config_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('mqtt_url = "mqtt://127.0.0.1:1"\nredis_ulr = "redis://x"\n')
    result = subprocess.run([*FIELDLINK, "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "unknown keys" in result.stderr and "redis_ulr" in result.stderr


def test_password_in_a_database_url_is_not_printed(tmp_path: Path) -> None:
    from fieldlink.app.server import redact_url

    assert redact_url("postgresql://app:s3cret@db:5432/fl") == "postgresql://app:***@db:5432/fl"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_first_start_is_secure_and_still_one_command(tmp_path: Path) -> None:
    """`fieldlink up --simulate`: auth is on, the banner carries a one-time login link and the
    admin token's path (0600), the simulated devices need no set-up, and `fieldlink token`
    makes working service tokens."""
    http_port, mqtt_port = free_port(), free_port()
    process = start_up(tmp_path, "--http-port", str(http_port), "--mqtt-port", str(mqtt_port),
                       "--simulate", "2", "--interval", "0.2")
    base = f"http://127.0.0.1:{http_port}"
    try:
        banner = read_banner(process)
        link = next(line.split()[-1] for line in banner.splitlines() if "/login?code=" in line)
        assert link.startswith(f"http://127.0.0.1:{http_port}/login?code=")
        token_file = tmp_path / "data" / "admin.token"
        assert str(token_file) in banner
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "data" / "jwt.secret").stat().st_mode & 0o777 == 0o600
        admin = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert httpx.get(f"{base}/api/devices").status_code == 401
        deadline = time.monotonic() + 15
        ids: set[str] = set()
        while ids != {"sim-001", "sim-002"} and time.monotonic() < deadline:
            ids = {d["device_id"] for d in httpx.get(f"{base}/api/devices",
                                                      headers=admin).json()["devices"]}
            time.sleep(0.1)
        assert ids == {"sim-001", "sim-002"}
        with httpx.Client(base_url=base, follow_redirects=False) as browser:
            opened = browser.get(link.replace(base, ""))
            assert opened.status_code == 303 and "fieldlink_session" in browser.cookies
            assert browser.get("/api/devices").status_code == 200
            assert browser.get(link.replace(base, "")).status_code == 401  # one use
        viewer = subprocess.run(
            [*FIELDLINK, "token", "--name", "ci", "--role", "viewer",
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        as_viewer = {"Authorization": f"Bearer {viewer}"}
        assert httpx.get(f"{base}/api/devices", headers=as_viewer).status_code == 200
        command = httpx.post(f"{base}/api/devices/sim-001/commands", headers=as_viewer,
                             json={"action": "idle"})
        assert command.status_code == 403
    finally:
        assert stop(process) == 0
