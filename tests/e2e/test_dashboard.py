"""The page at / in real headless Chromium (Debian's, driven by Playwright): live values and
badges over the WebSocket, and the REST polling fallback when the WebSocket is unavailable."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.support.clients import paho_client, publish

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


def row(page: Page, device_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'tr[data-device-id="{device_id}"]')


async def test_live_values_and_status_badges(hub, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    page = await browser.new_page()
    await page.goto(hub.http_url + "/login?code=" + hub.runtime.identity.login_code())
    await expect(page.get_by_test_id("connection")).to_have_text("live")
    await expect(page.get_by_test_id("empty")).to_be_visible()
    async with paho_client(hub.mqtt_port) as client:
        await publish(client, "edge/n1/telemetry", {"soc": 55.5, "power_kw": 3.2, "seq": 1})
        n1 = row(page, "n1")
        await expect(n1.locator('[data-metric="soc"] .v')).to_have_text("55.5")
        await expect(n1.locator('[data-metric="power_kw"] .v')).to_have_text("3.2")
        await expect(n1.get_by_test_id("status")).to_have_text("online")
        await publish(client, "edge/n1/telemetry", {"soc": 56.25, "seq": 2})
        await expect(n1.locator('[data-metric="soc"] .v')).to_have_text("56.25")
        await publish(client, "edge/n1/status", "offline")
        await expect(n1.get_by_test_id("status")).to_have_text("offline")
        await expect(n1.get_by_test_id("status")).to_have_class("badge offline")
        # a second device appears live, in id order
        await publish(client, "edge/a0/telemetry", {"temp": 20})
        await expect(page.locator("tbody tr")).to_have_count(2)
        assert await page.locator("tbody tr").first.get_attribute("data-device-id") == "a0"
    await expect(page.get_by_test_id("summary")).to_have_text("2 devices · 1 online")
    await page.screenshot(path=str(hub.runtime.settings.data_dir / "dashboard.png"))


async def test_falls_back_to_rest_polling_when_websocket_is_down(hub, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    async with paho_client(hub.mqtt_port) as client:
        await publish(client, "edge/p1/telemetry", {"soc": 12.5})
    page = await browser.new_page()
    # Refuse every WebSocket: the page must show it is polling and still show REST data.
    blocked = True

    def gate(ws):  # type: ignore[no-untyped-def]
        if blocked:
            return ws.close()
        ws.connect_to_server()

    await page.route_web_socket("**/ws", gate)
    await page.goto(hub.http_url + "/login?code=" + hub.runtime.identity.login_code())
    await expect(page.get_by_test_id("connection")).to_have_text("polling", timeout=10_000)
    await expect(row(page, "p1").locator('[data-metric="soc"] .v')).to_have_text("12.5")
    async with paho_client(hub.mqtt_port) as client:
        await publish(client, "edge/p1/telemetry", {"soc": 13.5})
    await expect(row(page, "p1").locator('[data-metric="soc"] .v')).to_have_text("13.5", timeout=10_000)
    # The WebSocket comes back: the page goes live again.
    blocked = False
    await expect(page.get_by_test_id("connection")).to_have_text("live", timeout=20_000)


async def test_signed_out_page_says_how_to_sign_in_and_gets_no_data(hub, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    async with paho_client(hub.mqtt_port) as client:
        await publish(client, "edge/secret1/telemetry", {"v": 1})
    page = await browser.new_page()
    await page.goto(hub.http_url + "/")
    await expect(page.get_by_test_id("connection")).to_contain_text("signed out", timeout=10_000)
    assert await page.locator('tr[data-device-id="secret1"]').count() == 0
    # A used login link does not work twice.
    code = hub.runtime.identity.login_code()
    first = await page.goto(hub.http_url + "/login?code=" + code)
    assert first is not None and first.ok
    second = await page.goto(hub.http_url + "/login?code=" + code)
    assert second is not None and second.status == 401
