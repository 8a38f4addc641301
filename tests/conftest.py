"""Shared fixtures: real mosquitto brokers and running hubs on free ports in tmp dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fieldlink.app.server import http_port_of, running_hub
from fieldlink.app.settings import Settings
from fieldlink.app.wiring import Runtime
from fieldlink.mqtt.broker import free_port
from tests.support.servers import Mosquitto, Postgres, Redis


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long soak/load tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    items[:] = [item for item in items if "slow" not in item.keywords]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One private PostgreSQL for the session; each test gets its own database (pg_url)."""
    server = Postgres()
    server.start()
    yield server
    server.remove()


async def fresh_database(postgres: Postgres) -> str:
    """Create an empty database on the session's PostgreSQL; returns its URL."""
    import secrets

    import asyncpg

    name = "t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return postgres.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def pg_url(postgres: Postgres) -> str:
    """A fresh empty database on the session's PostgreSQL."""
    return await fresh_database(postgres)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class RunningHub:
    def __init__(self, runtime: Runtime, http_port: int) -> None:
        self.runtime = runtime
        self.http_port = http_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def mqtt_url(self) -> str:
        assert self.runtime.mqtt_url is not None
        return self.runtime.mqtt_url

    @property
    def mqtt_port(self) -> int:
        return int(self.mqtt_url.rsplit(":", 1)[1])

    @property
    def token(self) -> str:
        """The admin service token the hub wrote to <data-dir>/admin.token."""
        assert self.runtime.admin_token_path is not None
        return self.runtime.admin_token_path.read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        """Headers that authenticate as the admin (REST and the WebSocket handshake)."""
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def hub_settings(tmp_path: Path) -> Settings:
    """Settings for a hub with its embedded broker, on free ports, data in tmp_path."""
    return Settings(http_port=free_port(), mqtt_port=free_port(), data_dir=tmp_path / "data")


@pytest.fixture
async def hub(hub_settings: Settings) -> AsyncIterator[RunningHub]:
    """A running hub with the embedded broker (mosquitto child process) and SQLite."""
    async with running_hub(hub_settings) as (runtime, server):
        yield RunningHub(runtime, http_port_of(server))


@pytest.fixture
def make_hub(tmp_path: Path) -> Any:
    """Factory: ``async with make_hub(mqtt_url=..., **settings) as hub`` for custom hubs."""
    import contextlib

    @contextlib.asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[RunningHub]:
        base = Settings(http_port=free_port(), mqtt_port=free_port(), data_dir=tmp_path / "data")
        async with running_hub(replace(base, **overrides)) as (runtime, server):
            yield RunningHub(runtime, http_port_of(server))

    return factory
