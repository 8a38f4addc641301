"""The embedded MQTT broker: Debian's mosquitto run as a child process with a generated config,
bound to 127.0.0.1, persistence in the data directory. It is stopped with the hub."""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerError(RuntimeError):
    pass


_PRCTL: Any
try:
    _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except OSError:  # not glibc Linux: the broker is still stopped by the hub's normal shutdown
    _PRCTL = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the broker if the hub dies, even by SIGKILL, so no orphan holds the port.
    Only calls an already-loaded libc function: nothing in the child may take a lock."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in MOSQUITTO_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(
        "mosquitto is not installed: run `make run` (it installs it), or `apt-get install "
        "mosquitto`, or use an existing broker with --mqtt-url mqtt://HOST:PORT"
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def resolve_port(requested: str | int, default: int, option: str, hint: str) -> int:
    """``"auto"`` -> ``default`` if free, else any free port. A number must be free, or we
    fail with a message naming the options that fix it."""
    if str(requested) == "auto":
        return default if port_is_free(default) else free_port()
    port = int(requested)
    if port != 0 and not port_is_free(port):
        raise BrokerError(
            f"port {port} is already in use: pick another with {option}, "
            f"use {option} auto, or {hint}"
        )
    return port if port != 0 else free_port()


HUB_USER = "fieldlink-hub"


def mosquitto_hash(password: str) -> str:
    """A mosquitto 2 password-file hash (``$7$``: PBKDF2-SHA512, 101 rounds, 12-byte salt),
    the same as ``mosquitto_passwd`` writes."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(prefix: str) -> str:
    """Devices may write only their own telemetry, status and acks and read only their own
    control topic (``%u`` is the user name, which is the device id); the hub reads and writes
    everything."""
    return "\n".join(
        [
            f"pattern write {prefix}/%u/telemetry",
            f"pattern write {prefix}/%u/status",
            f"pattern write {prefix}/%u/ack",
            f"pattern read {prefix}/%u/control",
            "",
            f"user {HUB_USER}",
            "topic readwrite #",
            "",
        ]
    )


class EmbeddedBroker:
    """A mosquitto process owned by the hub. With ``device_auth`` it accepts no anonymous
    clients: each device logs in with its id and key, and an ACL keeps it to its own topics;
    ``set_users`` rewrites the password file and makes mosquitto reload it (SIGHUP)."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        device_auth: bool = False,
        prefix: str = "edge",
    ) -> None:
        self.data_dir = Path(data_dir) / "mosquitto"
        self.port = port
        self.host = host
        self.device_auth = device_auth
        self.prefix = prefix
        self.process: subprocess.Popen[bytes] | None = None
        self.hub_password = secrets.token_urlsafe(24)
        self._users: dict[str, str] = {}

    def add_user(self, device_id: str, broker_hash: str) -> None:
        """New credentials for one device (mosquitto reloads the file)."""
        self.set_users({**self._users, device_id: broker_hash})

    def set_users(self, hashes: dict[str, str]) -> None:
        """Device id -> mosquitto hash; the file is rewritten and mosquitto reloads it."""
        self._users = dict(hashes)
        if not self.device_auth:
            return
        lines = [f"{HUB_USER}:{mosquitto_hash(self.hub_password)}"]
        lines += [f"{user}:{hashed}" for user, hashed in sorted(self._users.items())]
        path = self.data_dir / "passwd"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def config_text(self) -> str:
        return "\n".join(
            [
                f"listener {self.port} {self.host}",
                # Anonymous devices only on loopback (the listener is bound there) unless
                # per-device credentials are on.
                "allow_anonymous false" if self.device_auth else "allow_anonymous true",
                f"password_file {self.data_dir}/passwd" if self.device_auth else "",
                f"acl_file {self.data_dir}/acl" if self.device_auth else "",
                "user root" if os.geteuid() == 0 else "",
                "persistence true",
                f"persistence_location {self.data_dir}/",
                "autosave_interval 5",
                "max_queued_messages 100000",
                "max_inflight_messages 100",
                "message_size_limit 1048576",
                # Small packets (commands, acks) must not wait for Nagle + delayed ACK (40 ms).
                "set_tcp_nodelay true",
                f"log_dest file {self.data_dir}/mosquitto.log",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "",
            ]
        )

    async def start(self, timeout_s: float = 10.0) -> None:
        binary = find_mosquitto()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(self.config_text())
        if self.device_auth:
            (self.data_dir / "acl").write_text(acl_text(self.prefix))
            self.set_users(self._users)
        stderr_path = self.data_dir / "mosquitto.stderr"
        # Opening a file and forking are quick, one-off start-up steps: not worth a thread.
        with open(stderr_path, "wb") as stderr:  # noqa: ASYNC230
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [binary, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                # A terminal's Ctrl-C reaches only the hub, which stops the broker in order.
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - lock-free, see its docstring
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.process.poll() is not None:
                err = stderr_path.read_text(errors="replace")
                raise BrokerError(
                    f"mosquitto exited at start (code {self.process.returncode}): "
                    f"{err.strip()[:500]}"
                )
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                if loop.time() > deadline:
                    await self.stop()
                    raise BrokerError(
                        f"mosquitto did not listen on {self.port} within {timeout_s} s"
                    ) from None
                await asyncio.sleep(0.02)

    async def stop(self, timeout_s: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(process.wait), timeout_s)
        except TimeoutError:
            process.kill()
            await asyncio.to_thread(process.wait)
