"""A seeded battery-site model (pure: no I/O, no clock; ``dt_s`` and host stats are passed in).

Each node has a capacity (kW) and an energy store (kWh). Every step the node picks or keeps a
mode (charge, discharge, idle), its power follows the mode's setpoint with some noise, and the
state of charge integrates the power: ``soc += power_kw * dt_s / 3600 / battery_kwh * 100``.
Positive power means charging. The same seed gives the same sequence of values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["charge", "discharge", "idle"]
NOMINAL_HZ = 50.0


def device_id(index: int, prefix: str = "sim") -> str:
    """``sim-001``, ``sim-002``, ... (1-based)."""
    return f"{prefix}-{index:03d}"


@dataclass
class Battery:
    capacity_kw: float
    battery_kwh: float
    soc: float  # percent, 0..100
    mode: Mode = "idle"
    setpoint_kw: float = 0.0  # magnitude; set with the mode by charge/discharge/setpoint commands
    power_kw: float = 0.0

    @property
    def state(self) -> str:
        if self.power_kw > 0.05:
            return "charging"
        if self.power_kw < -0.05:
            return "discharging"
        return "idle"


@dataclass
class NodeModel:
    """One simulated edge node. ``step`` advances it and returns the next record."""

    device_id: str
    rng: random.Random
    battery: Battery
    seq: int = 0
    auto_dispatch: bool = True  # pick modes by itself (until commands take over)
    _hold_steps: int = field(default=0, repr=False)

    @classmethod
    def create(cls, device_id: str, seed: int) -> NodeModel:
        rng = random.Random(f"{seed}:{device_id}")
        capacity_kw = rng.choice((5.0, 10.0, 25.0, 50.0))
        battery = Battery(
            capacity_kw=capacity_kw,
            battery_kwh=capacity_kw * rng.choice((2.0, 4.0)),
            soc=round(rng.uniform(20.0, 90.0), 1),
        )
        return cls(device_id=device_id, rng=rng, battery=battery)

    @property
    def meta(self) -> dict[str, Any]:
        return {"capacity_kw": self.battery.capacity_kw, "battery_kwh": self.battery.battery_kwh}

    def set_mode(self, mode: Mode, setpoint_kw: float | None = None) -> None:
        """Hook for commands: hold a mode (and setpoint, clamped to capacity)."""
        b = self.battery
        b.mode = mode
        if setpoint_kw is not None:
            b.setpoint_kw = max(0.0, min(abs(setpoint_kw), b.capacity_kw))
        self.auto_dispatch = False

    def execute(self, action: str, params: dict[str, Any]) -> tuple[bool, Any]:
        """Carry out a command (docs/commands.md). ``(True, result)`` or ``(False, reason)``.

        ``charge``/``discharge`` with optional ``setpoint_kw``; ``idle``; ``setpoint`` with
        ``kw`` (positive charges, negative discharges, 0 idles). Setpoints are clamped to the
        battery's capacity."""
        b = self.battery
        if action in ("charge", "discharge"):
            kw = params.get("setpoint_kw", b.setpoint_kw or b.capacity_kw / 2)
            if not isinstance(kw, (int, float)) or isinstance(kw, bool):
                return False, "setpoint_kw must be a number"
            self.set_mode(action, float(kw))  # type: ignore[arg-type]
        elif action == "idle":
            self.set_mode("idle")
        elif action == "setpoint":
            kw = params.get("kw")
            if not isinstance(kw, (int, float)) or isinstance(kw, bool):
                return False, "setpoint needs a number kw"
            mode: Mode = "charge" if kw > 0 else "discharge" if kw < 0 else "idle"
            self.set_mode(mode, abs(float(kw)))
        else:
            return False, f"unknown action {action!r}"
        return True, {"mode": b.mode, "setpoint_kw": b.setpoint_kw}

    def _dispatch(self) -> None:
        b = self.battery
        if self._hold_steps > 0:
            self._hold_steps -= 1
            return
        if b.soc < 15:
            b.mode = "charge"
        elif b.soc > 95:
            b.mode = "discharge"
        else:
            b.mode = self.rng.choice(("charge", "discharge", "idle"))
        b.setpoint_kw = round(self.rng.uniform(0.2, 1.0) * b.capacity_kw, 2)
        self._hold_steps = self.rng.randint(3, 12)

    def step(self, dt_s: float, host: dict[str, float], ts_ms: int) -> dict[str, Any]:
        """Advance ``dt_s`` seconds and return the telemetry record (hub payload shape)."""
        if self.auto_dispatch:
            self._dispatch()
        b = self.battery
        target = {"charge": b.setpoint_kw, "discharge": -b.setpoint_kw, "idle": 0.0}[b.mode]
        noise = self.rng.gauss(0.0, 0.02 * b.capacity_kw) if b.mode != "idle" else 0.0
        power = max(-b.capacity_kw, min(b.capacity_kw, target + noise))
        if (power > 0 and b.soc >= 100.0) or (power < 0 and b.soc <= 0.0):
            power = 0.0  # a full battery cannot charge, an empty one cannot discharge
        b.power_kw = round(power, 3)
        b.soc = max(0.0, min(100.0, b.soc + b.power_kw * dt_s / 3600.0 / b.battery_kwh * 100.0))
        self.seq += 1
        return {
            "seq": self.seq,
            "ts": ts_ms,
            "power_kw": b.power_kw,
            "soc": round(b.soc, 3),
            "freq": round(NOMINAL_HZ + self.rng.gauss(0.0, 0.02), 3),
            "cpu": host["cpu"],
            "ram": host["ram"],
            "disk": host["disk"],
            "battery": b.state,
            "meta": self.meta,
        }


@dataclass
class GasSensorModel:
    """A seeded SubTronics gas sensor (the gas sensor gateway seed): methane in ppm drifting
    around a base level, with an occasional leak that climbs past 400 ppm and now and then past
    800 before it dies down. ``step`` returns the vendor payload (``serial_number`` inside,
    raw temperature and humidity in tenths) for ``SubTronics/data``."""

    serial: str
    rng: random.Random
    ppm: float = 120.0
    leak: float = 0.0  # ppm added by a leak in progress
    leak_steps: int = 0
    leak_peak: float = 0.0

    @classmethod
    def create(cls, serial: str, seed: int) -> GasSensorModel:
        return cls(serial, random.Random(f"{seed}:{serial}"))

    def step(self, now_s: float) -> dict[str, Any]:
        rng = self.rng
        if self.leak_steps == 0 and rng.random() < 0.08:
            self.leak_steps = rng.randint(4, 10)  # a leak starts
            self.leak_peak = rng.choice((450.0, 650.0, 950.0))
        if self.leak_steps > 0:
            self.leak_steps -= 1
            self.leak = self.leak_peak if self.leak_steps > 1 else 0.0
        self.ppm = max(0.0, self.ppm + rng.gauss(0, 6) + (120.0 - self.ppm) * 0.2)
        return {
            "serial_number": self.serial,
            "gas_type": "CH4",
            "gas_val": round(self.ppm + self.leak),
            "temp_raw": round(215 + rng.gauss(0, 3)),
            "hum_raw": round(470 + rng.gauss(0, 8)),
            "time": int(now_s),
            "crc": f"{rng.getrandbits(16):04x}",
            "fw": "2.1.0",
        }
