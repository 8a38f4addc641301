"""``/health``: is each dependency usable right now? ``ok`` only if all are; ``degraded``
(and HTTP 503) otherwise, with which one is down."""

from __future__ import annotations

from typing import Any

from fieldlink.ports import Probe


class Health:
    def __init__(self, *, store: Probe, broker: Probe, bus: Probe) -> None:
        self.checks = {"store": store, "broker": broker, "bus": bus}

    def report(self) -> dict[str, Any]:
        checks = {name: "ok" if probe.ok() else "down" for name, probe in self.checks.items()}
        status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
        return {"status": status, "checks": checks}
