"""Runs a hub in one process: uvicorn (REST + /ws + page on one port) and the runtime in one
uvloop, optional simulated devices, clean shutdown on Ctrl-C / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from fieldlink.api.app import create_app
from fieldlink.api.http import guarded_http_protocol
from fieldlink.app.settings import Settings
from fieldlink.app.wiring import Runtime, build

log = logging.getLogger("fieldlink")


class HubServer(uvicorn.Server):
    """uvicorn's server without its signal handling: uvicorn re-raises a captured SIGTERM when
    ``serve`` returns, which would kill the process before pending writes are flushed. The
    process installs its own handlers (``serve`` below)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(runtime: Runtime, port: int) -> uvicorn.Config:
    s = runtime.settings
    return uvicorn.Config(
        create_app(runtime.api),
        host=s.http_host,
        port=port,
        ws=runtime.ws_protocol,
        lifespan="off",
        log_level="warning",
        access_log=False,
        loop="none",
        http=guarded_http_protocol(s.handshake_timeout_s, runtime.handshake_stats),
        timeout_graceful_shutdown=5,
    )


@contextlib.asynccontextmanager
async def running_hub(settings: Settings) -> AsyncIterator[tuple[Runtime, uvicorn.Server]]:
    """Start a hub (for tests and embedding) and stop it, flushing writes, on exit."""
    runtime = build(settings)
    await runtime.start()
    server = HubServer(uvicorn_config(runtime, settings.http_port))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("HTTP server failed to start")
            await asyncio.sleep(0.01)
        yield runtime, server
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        await runtime.stop()


def http_port_of(server: uvicorn.Server) -> int:
    for srv in server.servers:
        for sock in srv.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server has no socket")


def redact_url(url: str) -> str:
    """The URL without its password (for banners and logs)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def banner(runtime: Runtime, http_port: int) -> str:
    s = runtime.settings
    host = s.http_host
    lines = [
        "",
        "fieldlink is up",
        f"  dashboard   http://{host}:{http_port}/",
        f"  websocket   ws://{host}:{http_port}{s.ws_path}",
        f"  REST docs   http://{host}:{http_port}/docs",
        f"  MQTT        {redact_url(runtime.mqtt_url or '')}"
        + ("  (embedded mosquitto)" if runtime.broker else "  (external broker)"),
        f"  history     {redact_url(s.resolved_database_url())}",
        "  bus/cache   "
        + (f"{redact_url(s.redis_url)}  (Redis)" if s.redis_url else "in-process (one instance)"),
    ]
    if s.mqtt_shared_group:
        lines.append(f"  ingest      shared subscription $share/{s.mqtt_shared_group}/...")
    if s.simulate:
        lines.append(f"  simulator   {s.simulate} devices every {s.simulate_interval_s:g} s")
    code = runtime.identity.login_code()
    lines.append(f"  log in      http://{host}:{http_port}/login?code={code}")
    lines.append("              (opens the dashboard as admin; one use, valid 10 minutes)")
    lines.append(f"  admin token {runtime.admin_token_path}  (Authorization: Bearer ...)")
    lines.append("  stop with Ctrl-C")
    return "\n".join(lines) + "\n"


async def serve(
    settings: Settings,
    extra: Callable[[Runtime, int], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM. ``extra`` (the simulator) runs alongside and is cancelled first."""
    runtime = build(settings)
    await runtime.start()
    server = HubServer(uvicorn_config(runtime, settings.http_port))

    def on_signal() -> None:
        if server.should_exit:  # a second Ctrl-C: stop waiting for connections to close
            server.force_exit = True
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    serve_task = asyncio.create_task(server.serve())
    extra_task: asyncio.Task[None] | None = None
    try:
        while not server.started:
            if serve_task.done():
                await serve_task
                raise SystemExit("the HTTP server failed to start")
            await asyncio.sleep(0.01)
        port = http_port_of(server)
        sys.stderr.write(banner(runtime, port))
        sys.stderr.flush()
        if extra is not None:
            extra_task = asyncio.create_task(extra(runtime, port))
        await serve_task
    finally:
        if extra_task is not None:
            extra_task.cancel()
            with contextlib.suppress(BaseException):
                await extra_task
        server.should_exit = True
        if not serve_task.done():
            with contextlib.suppress(BaseException):
                await serve_task
        await runtime.stop()
        c = runtime.ingestor.counters
        log.warning(
            "fieldlink stopped: received=%d stored=%d rejected=%d dropped=%d",
            c.received,
            c.stored,
            c.rejected_total,
            c.dropped_total,
        )
