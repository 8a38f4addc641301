"""Every page of the dashboard over a realistic scene (battery nodes in two sites with a day of
history, a gas sensor in alarm, a demand-response event waiting for approval), driven as an
operator: the fleet tiles and the 24 h chart extending live, the device page's history zoom,
a proposal approved and a dispatch requested and followed live, keyboard reach and a phone-width
window. Writes the screenshots docs/dashboard.md shows (docs/dashboard-*.png)."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from tests.e2e.conftest import DOCS, VIEWPORT, sign_in
from tests.e2e.fleet import Nodes, backfill
from tests.support.clients import paho_client, publish

pytestmark = pytest.mark.browser

PHONE: ViewportSize = {"width": 390, "height": 844}
GAS_RULE = {
    "name": "Methane",
    "metric": "gas_ppm",
    "op": ">",
    "clear": 380,
    "levels": [
        {"name": "alarm_level_1", "threshold": 400},
        {"name": "alarm_level_2", "threshold": 800},
    ],
    "scope": {"type": "kind", "value": "gas_sensor"},
}


async def shot(page: Page, name: str, full_page: bool = False) -> None:
    await page.evaluate(
        "() => { document.activeElement && document.activeElement.blur(); scrollTo(0, 0); }"
    )
    await page.screenshot(path=str(DOCS / f"dashboard-{name}.png"), full_page=full_page)


async def points(page: Page, testid: str) -> int:
    return int(await page.get_by_test_id(testid).get_attribute("data-points") or 0)


@pytest.mark.timeout(180)
async def test_every_page_live_with_screenshots(dash_hub: Any, browser: Browser) -> None:
    async with (
        dash_hub(vpp_approval="manual", silence_timeout_s=120) as hub,
        paho_client(hub.mqtt_port) as mqtt,
    ):
        nodes = Nodes(hub, interval_s=1.0)
        models = [
            nodes.add(f"node-{i:02d}", site="north" if i % 2 else "south") for i in range(1, 9)
        ]
        await backfill(hub, models, hours=24, step_s=300)
        await nodes.start()
        await publish(
            mqtt, "edge/gas-01/telemetry", {"kind": "gas_sensor", "gas_ppm": 120, "temp": 21.5}
        )
        now_ms = int(time.time() * 1000)
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            assert (await http.post("/api/alert-rules", json=GAS_RULE)).status_code == 201
            event = {"start": now_ms + 120_000, "end": now_ms + 720_000, "reduce_kw": 12}
            response = await http.post("/api/vpp/dr-events", json=event)
            assert response.status_code == 201, response.text
        await publish(
            mqtt, "edge/gas-01/telemetry", {"kind": "gas_sensor", "gas_ppm": 912, "temp": 21.9}
        )
        try:
            context = await browser.new_context(viewport=VIEWPORT, color_scheme="light")
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text) if m.type == "error" and "401" not in m.text else None
                ),
            )

            # ---- sign-in (its own, signed-out context) ---------------------------------------
            visitor = await browser.new_page(viewport=VIEWPORT, color_scheme="light")
            await visitor.goto(hub.http_url + "/")
            await expect(visitor.get_by_test_id("signin-form")).to_be_visible()
            await shot(visitor, "signin")
            await visitor.close()

            # ---- fleet -----------------------------------------------------------------------
            await sign_in(page, hub, "olivia")
            fleet = page.get_by_test_id("fleet")
            await expect(fleet.locator('[data-tile="devices"] .v')).to_have_text("9 / 9")
            await expect(fleet.locator('[data-tile="coverage"] .v')).to_have_text("100 %")
            await expect(fleet.locator('[data-tile="capacity"] .s')).to_contain_text(
                "8/8 nodes online"
            )
            await expect(fleet.locator('[data-tile="alerts"] .v')).to_have_text("1")
            await expect(fleet.locator('[data-tile="power"] .v')).to_have_text(re.compile(r"kW$"))
            await expect(page.get_by_test_id("groups").locator("tbody tr")).to_have_count(2)
            chart = page.get_by_test_id("fleet-chart")
            await page.wait_for_function(
                "() => document.querySelector('[data-testid=fleet-chart]').dataset.points > 200"
            )
            # The 24 h chart's last point is this minute's, and follows the live aggregate with
            # REST cut off.
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url) if "/api/" in r.url else None)
            await page.route("**/api/**", lambda route: route.abort())
            minute_ms = int(time.time() // 60 * 60_000)
            await expect(chart).to_have_attribute(
                "data-last", re.compile(f"^({minute_ms}|{minute_ms + 60_000})$")
            )
            value = await chart.get_attribute("data-last-value")
            await expect(chart).not_to_have_attribute(
                "data-last-value", value or "", timeout=15_000
            )
            assert requests == [], requests
            await page.unroute("**/api/**")
            await shot(page, "fleet")

            # ---- devices ---------------------------------------------------------------------
            await page.get_by_role("link", name="Devices").click()
            await expect(page.get_by_test_id("summary")).to_have_text("9 devices · 9 online")
            kinds = page.get_by_test_id("kind-filter")
            await expect(kinds.locator("option")).to_have_count(3)  # all, edge, gas_sensor
            await kinds.select_option("gas_sensor")
            await expect(page.locator('tr[data-testid="device-row"]:visible')).to_have_count(1)
            await kinds.select_option("")
            await expect(page.locator('tr[data-testid="device-row"]:visible')).to_have_count(9)
            await shot(page, "devices")

            # ---- device: live charts, history zoom, a command ---------------------------------
            await page.locator('tr[data-device-id="node-01"] td.id a').click()
            await expect(page).to_have_url(re.compile(r"#/device/node-01$"))
            await expect(
                page.locator('[data-testid="live-chart"][data-metric="power_kw"]')
            ).to_be_visible()
            history = page.get_by_test_id("history-chart")
            await page.locator('[data-testid="history-metric"]').select_option("soc")
            await page.get_by_role("button", name="24 h").click()
            await expect(page.get_by_test_id("history-note")).to_contain_text("per 15m")
            assert await points(page, "history-chart") > 50
            # Drag across the chart: the zoomed range is read again with finer buckets.
            box = await history.locator(".u-over").bounding_box()
            assert box is not None
            y = box["y"] + box["height"] / 2
            await page.mouse.move(box["x"] + box["width"] * 0.70, y)
            await page.mouse.down()
            await page.mouse.move(box["x"] + box["width"] * 0.80, y, steps=5)
            await page.mouse.up()
            await expect(page.get_by_test_id("history-note")).to_contain_text("per 1m")
            await expect(page.get_by_test_id("history-reset")).to_be_visible()
            await page.get_by_test_id("history-reset").click()
            await expect(page.get_by_test_id("history-note")).to_contain_text("per 15m")
            await page.get_by_test_id("command-action").fill("charge")
            await page.get_by_test_id("command-params").fill('{"setpoint_kw": 4}')
            await page.get_by_test_id("command-send").click()
            await expect(page.get_by_test_id("command-life")).to_have_attribute(
                "data-status", "acked"
            )
            await expect(page.get_by_test_id("live-note")).to_contain_text("points;")
            await shot(page, "device", full_page=True)

            # ---- alerts ----------------------------------------------------------------------
            await page.get_by_role("link", name="Alerts").click()
            active = page.get_by_test_id("alerts-active").locator('[data-testid="alert"]')
            await expect(active).to_have_count(1)
            await expect(active).to_contain_text("gas-01")
            await expect(active).to_contain_text("alarm_level_2")
            await shot(page, "alerts")

            # ---- dispatch: approve the DR proposal, request a dispatch, follow it live ---------
            await page.get_by_role("link", name="Dispatch").click()
            proposal = page.get_by_test_id("proposal")
            await expect(proposal).to_have_count(1, timeout=10_000)
            await expect(proposal).to_contain_text("dispatch 12.0 kW")
            await proposal.get_by_test_id("approve").click()  # a "decide" message on the socket
            await expect(proposal).to_have_count(0)
            await expect(page.locator('[data-testid="dispatch-card"]')).to_have_count(
                1
            )  # scheduled
            await page.get_by_test_id("dispatch-target").fill("15")
            await page.get_by_test_id("dispatch-minutes").fill("3")
            await page.get_by_test_id("dispatch-submit").click()
            running = page.locator('[data-testid="dispatch-card"]').filter(has_text="running")
            await expect(running).to_have_count(1)
            await expect(running.get_by_test_id("allocation").locator("tbody tr")).to_have_count(8)
            await expect(
                running.get_by_test_id("allocation").locator(".badge.succeeded")
            ).to_have_count(8)
            await page.wait_for_function(
                "() => document.querySelector('[data-testid=dispatch-card] .chart')"
                "?.dataset.points >= 3",
                timeout=10_000,
            )
            await expect(running.get_by_test_id("achieved")).to_have_text(re.compile(r"kW$"))
            await expect(page.get_by_test_id("dispatch-log").locator("tbody tr")).to_have_count(2)
            await shot(page, "dispatch", full_page=True)

            # ---- keyboard: every part of the page can be reached with Tab ------------------------
            await page.goto(hub.http_url + "/#/devices")
            await page.keyboard.press("Tab")  # the skip link
            reached = []
            for _ in range(12):
                await page.keyboard.press("Tab")
                reached.append(
                    await page.evaluate(
                        "() => { const e = document.activeElement;"
                        " return (e.dataset.testid || e.textContent || '').trim(); }"
                    )
                )
            for name in (
                "Fleet",
                "Devices",
                "Alerts",
                "Dispatch",
                "logout",
                "search",
                "kind-filter",
                "status-filter",
                "gas-01",
            ):
                assert any(r.startswith(name) for r in reached), (name, reached)
            await context.close()

            # ---- dark and phone-width ------------------------------------------------------------
            dark = await browser.new_context(viewport=VIEWPORT, color_scheme="dark")
            page = await dark.new_page()
            await sign_in(page, hub, "olivia")
            await page.goto(hub.http_url + "/#/device/node-02")
            await expect(
                page.locator('[data-testid="live-chart"][data-metric="soc"]')
            ).to_be_visible()
            await expect(page.get_by_test_id("history-note")).to_contain_text("points")
            await expect(page.get_by_test_id("live-note")).to_contain_text("points;")
            background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(14, 17, 22)", background
            await shot(page, "dark")
            await dark.close()
            phone = await browser.new_context(
                viewport=PHONE, color_scheme="light", is_mobile=True, has_touch=True
            )
            page = await phone.new_page()
            await sign_in(page, hub, "olivia")
            for route in ("devices", "fleet", "device/node-03"):
                await page.goto("about:blank")
                await page.goto(f"{hub.http_url}/#/{route}")
                await page.wait_for_function(
                    "v => performance.getEntriesByName('ready:' + v).length > 0",
                    arg=route.split("/")[0],
                )
                overflow = await page.evaluate("document.documentElement.scrollWidth - innerWidth")
                assert overflow <= 0, (route, overflow)
            await page.goto(f"{hub.http_url}/#/devices")
            await expect(page.get_by_test_id("summary")).to_have_text("9 devices · 9 online")
            await shot(page, "phone")
            await phone.close()
            assert errors == [], errors
        finally:
            await nodes.close()
