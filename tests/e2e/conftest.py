"""The dashboard's browser tests: Debian's Chromium driven by Playwright against a hub each test
starts (tests/conftest.py ``make_hub``), with users made over REST and simulated devices
(tests/e2e/fleet.py). Timeouts are short so that silence and command timeouts happen in
seconds."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"
PASSWORD = "correct-horse-7"
USERS = {"olivia": "operator", "victor": "viewer"}
FAST = {
    "silence_timeout_s": 3.0,
    "status_sweep_s": 0.25,
    "command_timeout_s": 2.0,
    "vpp_agent_interval_s": 0.5,
    "vpp_sample_s": 0.5,
    "vpp_aggregate_hz": 4.0,
}
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


async def add_users(hub: Any) -> None:
    async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
        for name, role in USERS.items():
            response = await http.post(
                "/api/users", json={"username": name, "password": PASSWORD, "role": role}
            )
            assert response.status_code == 201, response.text


@pytest.fixture
def dash_hub(make_hub: Any) -> Any:
    """``async with dash_hub(**settings) as hub``: a hub with short timeouts and the users
    olivia (operator) and victor (viewer)."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Any]:
        async with make_hub(**{**FAST, **overrides}) as hub:
            await add_users(hub)
            yield hub

    return start


async def sign_in(page: Page, hub: Any, user: str, password: str = PASSWORD) -> None:
    """Through the form, as a person would; returns once the page is live."""
    if not page.url.startswith(hub.http_url):
        await page.goto(hub.http_url + "/")
    await expect(page.get_by_test_id("signin-form")).to_be_visible()
    await page.get_by_test_id("username").fill(user)
    await page.get_by_test_id("password").fill(password)
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")


def device_row(page: Page, device_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'tr[data-device-id="{device_id}"]')
