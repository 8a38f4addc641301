"""Real servers for tests, each on a free 127.0.0.1 port in a temporary directory, started
and stopped by the test itself (never the machine's own services)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from fieldlink.mqtt.broker import find_mosquitto, free_port


def wait_for_port(port: int, timeout_s: float = 10.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s") from None
            time.sleep(0.02)


class Mosquitto:
    """A mosquitto the test owns. ``stop``/``start`` keep the port, for restart tests."""

    def __init__(self, workdir: Path, port: int | None = None, persistence: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.persistence = persistence
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
            f"log_dest file {self.workdir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([find_mosquitto(), "-c", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        wait_for_port(self.port, process=self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (make test installs it)")
    return str(found[-1])


class Postgres:
    """A private PostgreSQL cluster (initdb in its own temp dir, trust auth, fsync off) on a
    free port. As root it runs as the ``postgres`` system user, which initdb requires, in a
    directory that user owns (pytest's tmp dirs are private to root)."""

    def __init__(self, durable: bool = False) -> None:
        """``durable``: PostgreSQL's default fsync/commit settings (benchmarks); the test
        default trades crash safety for speed."""
        import tempfile

        self.durable = durable
        self.workdir = Path(tempfile.mkdtemp(prefix="fieldlink-pg-"))
        self.datadir = self.workdir / "pgdata"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.as_user, _pg_bin("initdb"), "-D", str(self.datadir), "-A", "trust",
                        "-U", "postgres", "--no-sync"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        fast = "" if self.durable else ("-c fsync=off -c synchronous_commit=off "
                                        "-c full_page_writes=off ")
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 {fast}"
                f"-c shared_buffers=256MB -k {self.workdir}")
        subprocess.run([*self.as_user, _pg_bin("pg_ctl"), "-D", str(self.datadir), "-o", opts,
                        "-l", str(self.workdir / "pg.log"), "-w", "start"],
                       check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self.as_user, _pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", mode,
                        "-w", "stop"], capture_output=True)

    def remove(self) -> None:
        import shutil

        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Redis:
    """A private redis-server (no persistence) on a free port. ``kill`` is SIGKILL."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(self.port, process=self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        process.wait(10)
