"""The official Engine.IO and Socket.IO protocol compliance suites (socketio/engine.io-protocol and
socketio/socket.io-protocol, vendored in tests/node/*-protocol/test-suite.js), run by mocha on
Debian's Node.js against fieldlink's Engine.IO / Socket.IO layer (tests/support/sio_echo.py, the
echo server the suites expect) on a free port."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldlink.mqtt.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
MOCHA = NODE_DIR / "node_modules" / "mocha" / "bin" / "mocha"

# How many tests each suite had when this file was written: fewer passing means a suite that
# silently lost tests (or ran none).
SUITES = {
    "engine.io-protocol": 24,
    "socket.io-protocol": 32,
}


def wait_for_port(port: int, server: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Until the server accepts TCP connections (it prints nothing when ready)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the echo server exited with {server.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the echo server did not listen on {port} within {timeout} s") from None
            time.sleep(0.05)


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[str]:
    """``python -m tests.support.sio_echo PORT`` on a free port; its URL."""
    port = free_port()
    log = (tmp_path / "sio_echo.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "tests.support.sio_echo", str(port)],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()  # by its PID; nothing else is signalled
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()
        output = (tmp_path / "sio_echo.log").read_text(errors="replace")
        if output.strip():
            print(f"--- echo server output ---\n{output}")


def mocha_summary(output: str) -> dict[str, int]:
    """The counts of mocha's spec reporter summary ("24 passing (3s)", "2 failing", ...)."""
    counts = {"passing": 0, "failing": 0, "pending": 0}
    for line in output.splitlines():
        found = re.fullmatch(r"\s*(\d+) (passing|failing|pending)\b.*", line)
        if found:
            counts[found.group(2)] = int(found.group(1))
    return counts


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_official_protocol_suite_passes(suite: str, echo_server: str) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is missing: run scripts/setup.sh test"
    assert MOCHA.is_file(), "tests/node/node_modules is missing: run scripts/setup.sh test"
    script = NODE_DIR / suite / "test-suite.js"
    started = time.monotonic()
    run = subprocess.run(
        [node, str(MOCHA), "--reporter", "spec", "--no-color", str(script)],
        cwd=ROOT, env={**os.environ, "PROTOCOL_URL": echo_server, "NO_COLOR": "1"},
        capture_output=True, text=True, timeout=180, check=False,
    )
    took = time.monotonic() - started
    print(run.stdout)
    print(run.stderr)
    counts = mocha_summary(run.stdout)
    print(f"{suite}: {counts} in {took:.1f} s against {echo_server}")
    assert run.returncode == 0, f"mocha exited with {run.returncode}"
    assert counts["failing"] == 0, counts
    assert counts["pending"] == 0, counts
    assert counts["passing"] >= SUITES[suite], (
        f"{counts['passing']} passing, expected at least {SUITES[suite]}")
    assert run.stdout.count("✔") == counts["passing"], "every passing test is listed"
