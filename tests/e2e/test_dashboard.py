"""The dashboard in real headless Chromium (Debian's, driven by Playwright) against a hub the
test starts, with simulated devices on its broker: sign-in and sign-out, live badges and the
reason a device went offline, a device's chart growing over the WebSocket while REST is cut off,
commands to their outcome, alerts acknowledged in one browser and moving in another, what a
viewer may not do, and the REST polling fallback while the socket is down."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, Request, Route, WebSocket, WebSocketRoute, expect

from tests.e2e.conftest import FAST, PASSWORD, VIEWPORT, device_row, sign_in
from tests.e2e.fleet import Nodes
from tests.support.clients import paho_client, publish

pytestmark = pytest.mark.browser

NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


async def chart_points(page: Page, metric: str) -> int:
    box = page.locator(f'[data-testid="live-chart"][data-metric="{metric}"]')
    return int(await box.get_attribute("data-points") or 0)


async def test_sign_in_with_a_password_see_devices_and_sign_out(
    dash_hub: Any, browser: Browser
) -> None:
    async with dash_hub() as hub:
        nodes = Nodes(hub)
        nodes.add("node-a")
        nodes.add("node-b")
        await nodes.start()
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            sockets: list[WebSocket] = []
            sent: list[Any] = []

            def opened(ws: WebSocket) -> None:
                sockets.append(ws)
                ws.on("framesent", lambda payload: sent.append(json.loads(payload)))

            page.on("websocket", opened)
            # A visitor without a session gets the sign-in form: no data, no "no devices yet",
            # and no socket retrying forever.
            await page.goto(hub.http_url + "/")
            await expect(page.get_by_test_id("signin-form")).to_be_visible()
            await expect(page.get_by_test_id("connection")).to_have_attribute(
                "data-state", "signed-out"
            )
            await expect(page.get_by_test_id("empty")).to_be_hidden()
            await expect(page.get_by_test_id("username")).to_be_focused()
            # A wrong password: a clear error, still signed out.
            await page.get_by_test_id("username").fill("olivia")
            await page.get_by_test_id("password").fill("not-the-password")
            await page.get_by_test_id("signin-submit").click()
            await expect(page.get_by_test_id("signin-error")).to_have_text(
                "Wrong user name or password."
            )
            await expect(page.get_by_test_id("connection")).to_have_attribute(
                "data-state", "signed-out"
            )
            assert sockets == []
            # The right one: live, who and which tenant, devices with their badges.
            await page.get_by_test_id("password").fill(PASSWORD)
            await page.get_by_test_id("signin-submit").click()
            await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
            await expect(page.get_by_test_id("user")).to_have_text("olivia · default · operator")
            await page.get_by_role("link", name="Devices").click()
            for device_id in ("node-a", "node-b"):
                row = device_row(page, device_id)
                await expect(row.get_by_test_id("status")).to_have_text("online")
                await expect(row.get_by_test_id("status")).to_have_class("badge online")
                await expect(row.locator('[data-metric="soc"] .v')).to_have_text(NUMBER)
            await expect(page.get_by_test_id("summary")).to_have_text("2 devices · 2 online")
            # A device that appears meanwhile gets its row live, in id order.
            async with paho_client(hub.mqtt_port) as mqtt:
                await publish(mqtt, "edge/a-new/telemetry", {"soc": 42.5})
            await expect(page.locator("tbody tr[data-device-id]")).to_have_count(3)
            await expect(page.locator("tbody tr[data-device-id]").first).to_have_attribute(
                "data-device-id", "a-new"
            )
            await expect(device_row(page, "a-new").locator('[data-metric="soc"] .v')).to_have_text(
                "42.5"
            )
            await expect(page.get_by_test_id("summary")).to_have_text("3 devices · 3 online")
            # One socket for the tab, whatever the page; subscriptions carry the display throttle.
            await page.get_by_role("link", name="Alerts").click()
            await page.get_by_role("link", name="Fleet").click()
            assert len(sockets) == 1
            assert {
                "type": "subscribe",
                "channel": "tenant:default",
                "throttle_ms": 200,
                "id": "sub:tenant:default",
            } in sent
            # Signing out closes the socket and brings the form back.
            socket = sockets[0]
            async with socket.expect_event("close", timeout=5000):
                await page.get_by_test_id("logout").click()
            assert socket.is_closed()
            await expect(page.get_by_test_id("signin-form")).to_be_visible()
            await expect(page.get_by_test_id("connection")).to_have_attribute(
                "data-state", "signed-out"
            )
            assert await device_row(page, "node-a").count() == 0
            # The cookie is gone: a reload stays signed out and opens no socket.
            await page.reload()
            await expect(page.get_by_test_id("signin-form")).to_be_visible()
            assert len(sockets) == 1
            # The admin's one-time link keeps working, once.
            code = hub.runtime.identity.login_code()
            first = await page.goto(hub.http_url + "/login?code=" + code)
            assert first is not None and first.ok
            await expect(page.get_by_test_id("user")).to_have_text("admin · default · admin")
            await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
            second = await page.goto(hub.http_url + "/login?code=" + code)
            assert second is not None and second.status == 401
        finally:
            await nodes.close()


async def test_device_chart_gains_points_over_the_websocket_with_rest_cut_off(
    dash_hub: Any, browser: Browser
) -> None:
    async with dash_hub() as hub:
        nodes = Nodes(hub, interval_s=0.4)
        nodes.add("node-c")
        await nodes.start()
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            await sign_in(page, hub, "olivia")
            await page.goto(hub.http_url + "/#/device/node-c")
            await expect(page.get_by_test_id("history-note")).to_contain_text("points")
            chart = page.locator('[data-testid="live-chart"][data-metric="soc"]')
            await expect(chart).to_be_visible()
            # From here on REST is cut off and every request is recorded: whatever the chart
            # gains comes over the WebSocket, and the page must not poll while it is up.
            requests: list[str] = []

            def record(request: Request) -> None:
                if "/api/" in request.url:
                    requests.append(f"{request.method} {request.url}")

            async def refuse(route: Route) -> None:
                await route.abort()

            page.on("request", record)
            await page.route("**/api/**", refuse)
            before = await chart_points(page, "soc")
            started = time.monotonic()
            await page.wait_for_function(
                "n => +document.querySelector('[data-testid=live-chart][data-metric=soc]')"
                ".dataset.points >= n",
                arg=before + 5,
                timeout=10_000,
            )
            gained_in_s = time.monotonic() - started
            after = await chart_points(page, "soc")
            # The newest value shows its age, and is fresh.
            value = page.locator('[data-testid="value"][data-metric="soc"]')
            await expect(value.locator(".age")).to_have_text(re.compile(r"just now|\d s ago"))
            await expect(value).not_to_have_class(re.compile("stale"))
            await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
            assert requests == [], f"REST requests while the socket was up: {requests}"
            print(
                f"\nlive chart: {before} -> {after} points in {gained_in_s:.1f} s, 0 REST requests"
            )
        finally:
            await nodes.close()


async def test_badges_turn_offline_with_the_reason(dash_hub: Any, browser: Browser) -> None:
    async with dash_hub() as hub:
        silence_s = FAST["silence_timeout_s"]
        nodes = Nodes(hub)
        for device_id in ("quiet-1", "leaving-1", "steady-1"):
            nodes.add(device_id)
        await nodes.start()
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            await sign_in(page, hub, "olivia")
            await page.get_by_role("link", name="Devices").click()
            quiet, leaving = device_row(page, "quiet-1"), device_row(page, "leaving-1")
            await expect(quiet.get_by_test_id("status")).to_have_text("online")
            # A device that goes silent (still connected): offline after the silence timeout.
            await nodes.silence("quiet-1")
            silent_at = time.monotonic()
            await expect(quiet.get_by_test_id("status")).to_have_text(
                "offline", timeout=(silence_s + 3) * 1000
            )
            took_s = time.monotonic() - silent_at
            await expect(quiet.get_by_test_id("status")).to_have_class("badge offline")
            await expect(quiet.get_by_test_id("reason")).to_have_attribute("data-reason", "silence")
            await expect(quiet.get_by_test_id("reason")).to_have_text(
                "no data within the silence timeout"
            )
            assert took_s <= silence_s + 2.5, took_s
            await expect(quiet.locator("td.seen")).to_have_text(re.compile(r"^\d+ s ago$"))
            seen = await quiet.locator("td.seen").text_content()
            await expect(quiet.locator("td.seen")).not_to_have_text(seen or "")  # it ticks
            # A device that disconnects cleanly says so at once.
            await nodes.stop("leaving-1")
            await expect(leaving.get_by_test_id("status")).to_have_text("offline", timeout=3000)
            await expect(leaving.get_by_test_id("reason")).to_have_attribute(
                "data-reason", "clean_disconnect"
            )
            await expect(device_row(page, "steady-1").get_by_test_id("status")).to_have_text(
                "online"
            )
            await expect(page.get_by_test_id("summary")).to_have_text("3 devices · 1 online")
            # Filters: offline devices only, then a search.
            await page.get_by_test_id("status-filter").select_option("offline")
            await expect(page.locator('tr[data-testid="device-row"]:visible')).to_have_count(2)
            await page.get_by_test_id("search").fill("quiet")
            await expect(page.locator('tr[data-testid="device-row"]:visible')).to_have_count(1)
            # The device page says the same, and its values look stale.
            await page.goto(hub.http_url + "/#/device/quiet-1")
            await expect(page.get_by_test_id("reason")).to_have_attribute("data-reason", "silence")
            await expect(page.locator('[data-testid="value"][data-metric="soc"]')).to_have_class(
                re.compile("stale")
            )
            print(f"\nsilence timeout {silence_s:g} s: badge offline after {took_s:.1f} s")
        finally:
            await nodes.close()


async def test_commands_acked_and_device_not_responding(dash_hub: Any, browser: Browser) -> None:
    async with dash_hub() as hub:
        nodes = Nodes(hub)
        nodes.add("node-ok")
        nodes.add("node-mute", behavior="ignore")
        await nodes.start()
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            await sign_in(page, hub, "olivia")
            await page.goto(hub.http_url + "/#/device/node-ok")
            life = page.get_by_test_id("command-life")
            await page.get_by_test_id("command-action").fill("charge")
            await page.get_by_test_id("command-params").fill('{"setpoint_kw": 3}')
            await page.get_by_test_id("command-send").click()
            await expect(life).to_have_attribute("data-status", "acked", timeout=5000)
            await expect(life).to_contain_text("Acknowledged by the device")
            await expect(life).to_contain_text('"setpoint_kw":3')
            log = page.get_by_test_id("command-log")
            await expect(log.locator("tr[data-command-id]").first.locator(".badge")).to_have_text(
                "acked"
            )
            # The device's own error, in its words.
            await page.get_by_test_id("command-action").fill("explode")
            await page.get_by_test_id("command-send").click()
            await expect(life).to_have_attribute("data-status", "failed", timeout=5000)
            await expect(life).to_contain_text("Failed: unknown action 'explode'")
            # A device that never answers: "Device is not responding" after the timeout.
            await page.goto(hub.http_url + "/#/device/node-mute")
            await page.get_by_test_id("command-action").fill("charge")
            sent_at = time.monotonic()
            await page.get_by_test_id("command-send").click()
            await expect(life).to_have_attribute("data-status", "sent", timeout=3000)
            await expect(life).to_have_attribute(
                "data-status", "timeout", timeout=(FAST["command_timeout_s"] + 3) * 1000
            )
            took_s = time.monotonic() - sent_at
            await expect(life.locator(".headline")).to_have_text("charge: Device is not responding")
            assert took_s >= FAST["command_timeout_s"] - 0.2, took_s
            await expect(
                page.get_by_test_id("command-log")
                .locator("tr[data-command-id]")
                .first.locator(".badge")
            ).to_have_text("timeout")
            print(
                f"\ncommand timeout {FAST['command_timeout_s']:g} s: "
                f"'Device is not responding' after {took_s:.1f} s"
            )
        finally:
            await nodes.close()


HOT_RULE = {
    "name": "Too hot",
    "metric": "temp",
    "op": ">",
    "clear": 40,
    "levels": [{"name": "alarm_level_1", "threshold": 50}],
    "scope": {"type": "device", "value": "oven-1"},
}


async def test_alert_acknowledged_in_one_browser_moves_in_another(
    dash_hub: Any, browser: Browser
) -> None:
    async with dash_hub() as hub, paho_client(hub.mqtt_port) as mqtt:
        await publish(mqtt, "edge/oven-1/telemetry", {"temp": 21.0})
        async with httpx.AsyncClient(base_url=hub.http_url, headers=hub.auth) as http:
            response = await http.post("/api/alert-rules", json=HOT_RULE)
            assert response.status_code == 201, response.text
        operator_ctx = await browser.new_context(viewport=VIEWPORT)
        viewer_ctx = await browser.new_context(viewport=VIEWPORT)
        operator, viewer = await operator_ctx.new_page(), await viewer_ctx.new_page()
        await sign_in(operator, hub, "olivia")
        await sign_in(viewer, hub, "victor")
        for page in (operator, viewer):
            await page.get_by_role("link", name="Alerts").click()
        await publish(mqtt, "edge/oven-1/telemetry", {"temp": 80.0})
        for page in (operator, viewer):
            item = page.get_by_test_id("alerts-active").locator('[data-testid="alert"]')
            await expect(item).to_have_count(1)
            await expect(item).to_contain_text("temp 80")
            await expect(page.get_by_test_id("nav-alerts")).to_have_text("1")
        # The viewer sees the alert but no way to acknowledge it.
        await expect(viewer.get_by_test_id("ack")).to_have_count(0)
        # The operator acknowledges with a note; the viewer's page moves it, live.
        await operator.get_by_test_id("ack").click()
        await operator.get_by_test_id("ack-note").fill("on my way")
        await operator.get_by_test_id("ack-confirm").click()
        for page in (viewer, operator):
            moved = page.get_by_test_id("alerts-acknowledged").locator('[data-testid="alert"]')
            await expect(moved).to_have_count(1)
            await expect(moved).to_contain_text("on my way")
            await expect(moved).to_contain_text("by olivia")
            await expect(
                page.get_by_test_id("alerts-active").locator('[data-testid="alert"]')
            ).to_have_count(0)
            await expect(page.get_by_test_id("nav-alerts")).to_have_text("")
        # Back to normal: it clears, in both.
        await publish(mqtt, "edge/oven-1/telemetry", {"temp": 30.0})
        for page in (viewer, operator):
            await expect(
                page.get_by_test_id("alerts-cleared").locator('[data-testid="alert"]')
            ).to_have_count(1)
            await expect(
                page.get_by_test_id("alerts-acknowledged").locator('[data-testid="alert"]')
            ).to_have_count(0)
        await operator_ctx.close()
        await viewer_ctx.close()


async def test_a_viewer_sees_no_command_acknowledge_or_approve_controls(
    dash_hub: Any, browser: Browser
) -> None:
    async with dash_hub() as hub:
        nodes = Nodes(hub)
        nodes.add("node-v")
        await nodes.start()
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            await sign_in(page, hub, "victor")
            await expect(page.get_by_test_id("user")).to_have_text("victor · default · viewer")
            await page.goto(hub.http_url + "/#/device/node-v")
            await expect(
                page.locator('[data-testid="live-chart"][data-metric="soc"]')
            ).to_be_visible()
            for control in ("command-panel", "command-form", "command-send", "ack"):
                await expect(page.get_by_test_id(control)).to_have_count(0)
            await page.get_by_role("link", name="Dispatch").click()
            await expect(page.get_by_test_id("dispatch-log")).to_be_visible()
            for control in (
                "dispatch-request",
                "dispatch-submit",
                "approve",
                "reject",
                "dispatch-cancel",
            ):
                await expect(page.get_by_test_id(control)).to_have_count(0)
            # The hub refuses it too, whatever a page shows (403 for the viewer's cookie).
            status = await page.evaluate("""async () => (await fetch('/api/devices/node-v/commands',
                {method: 'POST', headers: {'Content-Type': 'application/json'},
                 body: JSON.stringify({action: 'charge'})})).status""")
            assert status == 403
        finally:
            await nodes.close()


async def test_polls_rest_while_the_socket_is_down_and_stops_when_it_is_back(
    dash_hub: Any, browser: Browser
) -> None:
    async with dash_hub() as hub, paho_client(hub.mqtt_port) as mqtt:
        await publish(mqtt, "edge/p1/telemetry", {"soc": 12.5})
        page = await browser.new_page(viewport=VIEWPORT)
        blocked = True

        async def gate(ws: WebSocketRoute) -> None:
            if blocked:
                await ws.close()
            else:
                ws.connect_to_server()

        polls: list[float] = []
        page.on(
            "request",
            lambda r: polls.append(time.monotonic()) if r.url.endswith("/api/devices") else None,
        )
        await page.route_web_socket("**/ws", gate)
        await page.goto(hub.http_url + "/login?code=" + hub.runtime.identity.login_code())
        await page.goto(hub.http_url + "/#/devices")
        await expect(page.get_by_test_id("connection")).to_have_attribute(
            "data-state", "polling", timeout=10_000
        )
        await expect(device_row(page, "p1").locator('[data-metric="soc"] .v')).to_have_text("12.5")
        await publish(mqtt, "edge/p1/telemetry", {"soc": 13.5})
        await expect(device_row(page, "p1").locator('[data-metric="soc"] .v')).to_have_text(
            "13.5", timeout=10_000
        )
        # The socket comes back: live again, and the polling stops.
        blocked = False
        await expect(page.get_by_test_id("connection")).to_have_attribute(
            "data-state", "live", timeout=20_000
        )
        live_at = time.monotonic()
        await publish(mqtt, "edge/p1/telemetry", {"soc": 14.5})
        await expect(device_row(page, "p1").locator('[data-metric="soc"] .v')).to_have_text("14.5")
        await page.wait_for_timeout(4000)  # more than one polling interval (3 s) with nothing
        assert [t for t in polls if t > live_at + 0.5] == []
