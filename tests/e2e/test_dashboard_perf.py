"""The dashboard under load, measured in the test's Chromium: 200 devices at 5 records a second
each (1,000 msg/s, published with paho from a separate process, tests/e2e/flood.py) through a
hub this test starts, with the Devices page open.

- Main-thread busy share: CDP ``Performance.getMetrics`` ``TaskDuration`` (time the renderer's
  main thread spent in tasks) over a 10 s window, divided by the window. Also for the Fleet
  and Device pages (5 s each), with the events per second the page received and its layout
  shift (CLS, PerformanceObserver ``layout-shift``).
- First paint of each page (a full load of its URL, under the same load): the browser's
  ``first-contentful-paint``, and ``ready``: when the page first showed its data (the page's
  ``ready:<page>`` performance mark).

The numbers are printed (run with ``-s``) for docs/performance.md; the assertions are generous
bounds around the targets (busy < 30 %, first paint < 500 ms), not the measurements."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.e2e.conftest import VIEWPORT

pytestmark = pytest.mark.browser

DEVICES = 200
RATE_HZ = 5.0
ROOT = Path(__file__).resolve().parents[2]
CLS_OBSERVER = """
window.__cls = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if (!e.hadRecentInput) window.__cls += e.value;
}).observe({type: "layout-shift", buffered: true});
"""


async def busy_share(page: Page, seconds: float) -> dict[str, float]:
    """The main thread's busy share over ``seconds``, with what the page received meanwhile."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Performance.enable")

    async def sample() -> tuple[dict[str, float], dict[str, float]]:
        metrics = await cdp.send("Performance.getMetrics")
        stats = await page.evaluate("({...fieldlink.stats, cls: window.__cls || 0})")
        return {m["name"]: m["value"] for m in metrics["metrics"]}, stats

    m0, s0 = await sample()
    await asyncio.sleep(seconds)
    m1, s1 = await sample()
    await cdp.detach()
    wall = m1["Timestamp"] - m0["Timestamp"]

    def share(name: str) -> float:
        return round(100 * (m1[name] - m0[name]) / wall, 1)

    return {
        "busy_pct": share("TaskDuration"),
        "script_pct": share("ScriptDuration"),
        "layout_pct": share("LayoutDuration"),
        "style_pct": share("RecalcStyleDuration"),
        "events_per_s": round((s1["events"] - s0["events"]) / wall),
        "frames_per_s": round((s1["frames"] - s0["frames"]) / wall, 1),
        "cls": round(s1["cls"] - s0["cls"], 4),
        "window_s": round(wall, 1),
    }


async def first_paint(context: BrowserContext, url: str, view: str) -> dict[str, float]:
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_function(
        "v => performance.getEntriesByName('ready:' + v).length > 0", arg=view, timeout=15_000
    )
    timings: dict[str, float] = await page.evaluate(
        """v => {
        const paint = Object.fromEntries(
            performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
        const nav = performance.getEntriesByType('navigation')[0];
        return {fcp_ms: paint['first-contentful-paint'], fp_ms: paint['first-paint'],
                ready_ms: performance.getEntriesByName('ready:' + v)[0].startTime,
                dom_ms: nav.domContentLoadedEventEnd};
    }""",
        view,
    )
    await page.close()
    return {k: round(v) for k, v in timings.items()}


@pytest.mark.timeout(240)
async def test_devices_page_with_200_devices_at_5_msg_per_s(
    make_hub: Any, browser: Browser
) -> None:
    async with make_hub() as hub:
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.e2e.flood",
            "--port",
            str(hub.mqtt_port),
            "--devices",
            str(DEVICES),
            "--rate-hz",
            str(RATE_HZ),
            "--duration",
            "180",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            context = await browser.new_context(viewport=VIEWPORT)
            await context.add_init_script(CLS_OBSERVER)
            page = await context.new_page()
            await page.goto(hub.http_url + "/login?code=" + hub.runtime.identity.login_code())
            await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
            await page.goto(hub.http_url + "/#/devices")
            await expect(page.get_by_test_id("summary")).to_have_text(
                f"{DEVICES} devices · {DEVICES} online", timeout=30_000
            )
            await page.wait_for_timeout(2000)  # settle: every row drawn once, charts idle
            results: dict[str, Any] = {"devices": await busy_share(page, 10)}
            await page.goto(hub.http_url + "/#/fleet")
            await page.wait_for_timeout(1000)
            results["fleet"] = await busy_share(page, 5)
            await page.goto(hub.http_url + "/#/device/load-000")
            await expect(
                page.locator('[data-testid="live-chart"][data-metric="soc"]')
            ).to_be_visible()
            await page.wait_for_timeout(1000)
            results["device"] = await busy_share(page, 5)
            # First paint of each page: a full load of its URL, signed in, under the same load.
            paints = {}
            for view, route in (
                ("fleet", "#/fleet"),
                ("devices", "#/devices"),
                ("device", "#/device/load-000"),
                ("alerts", "#/alerts"),
                ("dispatch", "#/dispatch"),
            ):
                paints[view] = await first_paint(context, f"{hub.http_url}/{route}", view)
            signed_out = await browser.new_context(viewport=VIEWPORT)
            paints["signin"] = await first_paint(signed_out, hub.http_url + "/", "signin")
            await signed_out.close()
            await context.close()
        finally:
            flood.send_signal(signal.SIGTERM)
            out, _ = await flood.communicate()
        sent = json.loads(out.decode().strip().splitlines()[-1])
        print(
            f"\n\nload: {DEVICES} devices x {RATE_HZ:g} msg/s, published {sent['sent']} records at "
            f"{sent['rate']:.0f} msg/s (paho, QoS 0, one process)"
        )
        print("page       busy %  script %  layout %  style %  events/s  frames/s  CLS")
        for name, r in results.items():
            print(
                f"{name:<10} {r['busy_pct']:>6}  {r['script_pct']:>8}  {r['layout_pct']:>8}  "
                f"{r['style_pct']:>7}  {r['events_per_s']:>8}  {r['frames_per_s']:>8}  {r['cls']}"
            )
        print("page       first paint ms  first contentful ms  DOMContentLoaded ms  ready ms")
        for name, p in paints.items():
            print(
                f"{name:<10} {p['fp_ms']:>14}  {p['fcp_ms']:>19}  "
                f"{p['dom_ms']:>19}  {p['ready_ms']:>8}"
            )
        print(json.dumps({"load": sent, "busy": results, "paint": paints, "at": time.time()}))
        devices = results["devices"]
        assert devices["events_per_s"] >= 0.8 * DEVICES * RATE_HZ  # the load reached the page
        assert devices["busy_pct"] < 30
        assert devices["cls"] < 0.05
        for name, p in paints.items():
            assert p["fcp_ms"] < 1000, (name, p)  # target 500 ms; generous bound
