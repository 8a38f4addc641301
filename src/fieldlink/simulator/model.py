"""A seeded battery-site model (pure: no I/O, no clock; ``dt_s``, ``ts_ms`` and host stats are
passed in, so the runner drives it in real time and the forecast bench drives it through
synthetic days without sleeping).

Each node has a capacity (kW) and an energy store (kWh); positive power means charging. Every
step the node's power moves toward its target (a commanded setpoint, or in auto mode its own
daily routine) by at most ``ramp_kw_per_s * dt_s``; it never takes the state of charge out of
``[soc_min, soc_max]`` (at a limit it delivers only what lands it there, then 0), and the state
of charge integrates what it delivered: ``soc += power_kw * dt_s / 3600 / battery_kwh * 100``.
Records report what the node did, not what it was asked. The same seed gives the same values.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["charge", "discharge", "idle"]
NOMINAL_HZ = 50.0
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# In auto mode a node keeps a decision for 2-10 minutes, like a site controller that does not
# chatter, and does not start a discharge this close to ``soc_min`` (a reserve real sites keep).
HOLD_MINUTES = (2, 10)
DISCHARGE_RESERVE_PCT = 2.0


def device_id(index: int, prefix: str = "sim") -> str:
    """``sim-001``, ``sim-002``, ... (1-based)."""
    return f"{prefix}-{index:03d}"


@dataclass
class Battery:
    """The physical side of a node.

    ``ramp_kw_per_s``: how fast the power may change, None for ``capacity_kw / 4`` per second
    (0 to full power in 4 s). ``soc_min``/``soc_max`` (percent) bound where the node takes its
    state of charge; one put outside them by hand may only move back toward them."""

    capacity_kw: float
    battery_kwh: float
    soc: float  # percent, 0..100
    mode: Mode = "idle"
    setpoint_kw: float = 0.0  # magnitude; set with the mode by charge/discharge/setpoint commands
    power_kw: float = 0.0  # what the node delivered over the last step
    ramp_kw_per_s: float | None = None
    soc_min: float = 10.0
    soc_max: float = 95.0

    @property
    def ramp_rate_kw_per_s(self) -> float:
        return self.capacity_kw / 4.0 if self.ramp_kw_per_s is None else self.ramp_kw_per_s

    @property
    def state(self) -> str:
        if self.power_kw > 0.05:
            return "charging"
        if self.power_kw < -0.05:
            return "discharging"
        return "idle"

    def deliverable_kw(self, wanted_kw: float, dt_s: float) -> float:
        """What the node can deliver over the next ``dt_s`` when it wants ``wanted_kw``: within
        the ramp from its last delivered power, and no more than lands the SoC on its limit."""
        if dt_s <= 0:
            return self.power_kw
        ramp_kw = self.ramp_rate_kw_per_s * dt_s
        power = max(self.power_kw - ramp_kw, min(self.power_kw + ramp_kw, wanted_kw))
        kw_per_pct = self.battery_kwh / 100.0 * 3600.0 / dt_s  # the power that moves SoC 1 %
        if power > 0:
            power = min(power, max(0.0, (self.soc_max - self.soc) * kw_per_pct))
        elif power < 0:
            power = max(power, min(0.0, (self.soc_min - self.soc) * kw_per_pct))
        return power

    def integrate(self, dt_s: float) -> None:
        """Move the SoC by the delivered power over ``dt_s``. The reported power is rounded,
        which may overshoot a limit by a hair: the SoC stops at the limit it was inside of."""
        soc = self.soc + self.power_kw * dt_s / 3600.0 / self.battery_kwh * 100.0
        if self.power_kw > 0:
            soc = min(soc, max(self.soc, self.soc_max))
        elif self.power_kw < 0:
            soc = max(soc, min(self.soc, self.soc_min))
        self.soc = max(0.0, min(100.0, soc))


@dataclass(frozen=True)
class DailyRoutine:
    """A node's habits in auto mode, in hours of the day and fractions of its capacity.

    Hours are UTC: the simulator takes UTC as the sites' local time. Around ``solar_peak_h``
    the site stores its solar surplus (a cos² bell ``solar_half_width_h`` wide on each side),
    from ``evening_start_h`` to ``evening_end_h`` it covers the evening peak (half-hour ramps
    at both ends), at night it idles, and if ``night_charge_below`` > 0 it charges from the grid
    between 01 and 05 h while its SoC is below that (an off-peak tariff)."""

    solar_peak_h: float = 12.5
    solar_half_width_h: float = 4.0
    solar_share: float = 0.7
    evening_start_h: float = 17.0
    evening_end_h: float = 21.0
    evening_share: float = 0.6
    night_charge_below: float = 0.0
    night_charge_share: float = 0.3
    participation: float = 0.9  # chance that a decision follows the routine (else: idle)

    @classmethod
    def draw(cls, rng: random.Random) -> DailyRoutine:
        """Per-node habits: the same shape for every site, each a little different."""
        return cls(
            solar_peak_h=12.5 + rng.uniform(-1.0, 1.0),
            solar_half_width_h=rng.uniform(3.0, 4.5),
            solar_share=rng.uniform(0.5, 0.9),
            evening_start_h=17.0 + rng.uniform(-0.5, 0.5),
            evening_end_h=21.0 + rng.uniform(-0.5, 0.5),
            evening_share=rng.uniform(0.4, 0.9),
            night_charge_below=rng.choice((0.0, 0.0, 40.0, 60.0)),
            night_charge_share=rng.uniform(0.2, 0.4),
            participation=rng.uniform(0.75, 0.97),
        )


@dataclass(frozen=True)
class DayVariation:
    """How one day differs for one node: ``solar`` and ``evening`` scale the routine's charge
    and discharge, ``shift_h`` moves its hours."""

    solar: float
    evening: float
    shift_h: float

    @classmethod
    def draw(cls, seed: int, device: str, day: int) -> DayVariation:
        """From the day alone (not from the steps taken), so a day looks the same however it
        was stepped. The sky and the evening demand are shared by every node of a ``seed`` (a
        cloudy day is cloudy for the whole fleet, which no forecast can know the day before);
        each site adds its own spread."""
        sky = random.Random(f"weather:{seed}:{day}")
        sun = min(1.0, sky.uniform(0.3, 1.25))
        demand = sky.uniform(0.8, 1.15)
        own = random.Random(f"{seed}:{device}:day:{day}")
        return cls(
            solar=sun * own.uniform(0.85, 1.15),
            evening=demand * own.uniform(0.8, 1.2),
            shift_h=own.uniform(-0.5, 0.5),
        )


def _bell(hour: float, peak_h: float, half_width_h: float) -> float:
    x = (hour - peak_h) / half_width_h
    return math.cos(math.pi / 2.0 * x) ** 2 if abs(x) < 1.0 else 0.0


def _window(hour: float, start_h: float, end_h: float, edge_h: float = 0.5) -> float:
    """1 inside ``[start_h + edge_h, end_h - edge_h]``, linear ramps to 0 at the ends."""
    return max(0.0, min(1.0, (hour - start_h) / edge_h, (end_h - hour) / edge_h))


def routine_fraction(routine: DailyRoutine, day: DayVariation, hour: float, soc: float) -> float:
    """The power the routine asks for at ``hour`` (0-24), as a signed fraction of capacity."""
    charge = (
        routine.solar_share
        * day.solar
        * _bell(hour, routine.solar_peak_h + day.shift_h, routine.solar_half_width_h)
    )
    discharge = (
        routine.evening_share
        * day.evening
        * _window(hour, routine.evening_start_h + day.shift_h, routine.evening_end_h + day.shift_h)
    )
    if 1.0 <= hour < 5.0 and soc < routine.night_charge_below:
        charge += routine.night_charge_share
    return charge - discharge


@dataclass
class NodeModel:
    """One simulated edge node. ``step`` advances it and returns the next record.

    In auto mode (``auto_dispatch``, the default, and again after an ``auto`` command) it
    follows its ``routine`` with day-to-day variation and some randomness; a command holds a
    mode and setpoint until the next command."""

    device_id: str
    rng: random.Random
    battery: Battery
    seq: int = 0
    auto_dispatch: bool = True  # follow the daily routine (until commands take over)
    seed: int = 0  # with device_id, picks the day-to-day variation
    routine: DailyRoutine = field(default_factory=DailyRoutine)
    site: str = ""  # reported in meta when set (the VPP groups nodes by it)
    _hold_until_ms: int = field(default=0, repr=False)
    _day: tuple[int, DayVariation] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, device_id: str, seed: int) -> NodeModel:
        rng = random.Random(f"{seed}:{device_id}")
        capacity_kw = rng.choice((5.0, 10.0, 25.0, 50.0))
        battery = Battery(
            capacity_kw=capacity_kw,
            battery_kwh=capacity_kw * rng.choice((2.0, 4.0)),
            soc=round(rng.uniform(20.0, 90.0), 1),
        )
        # The habits come from their own stream so the step noise does not depend on them.
        routine = DailyRoutine.draw(random.Random(f"routine:{seed}:{device_id}"))
        return cls(device_id=device_id, rng=rng, battery=battery, seed=seed, routine=routine)

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "capacity_kw": self.battery.capacity_kw,
            "battery_kwh": self.battery.battery_kwh,
        }
        if self.site:
            meta["site"] = self.site
        return meta

    def set_mode(self, mode: Mode, setpoint_kw: float | None = None) -> None:
        """Hook for commands: hold a mode (and setpoint, clamped to capacity) and leave auto
        mode."""
        b = self.battery
        b.mode = mode
        if setpoint_kw is not None:
            b.setpoint_kw = max(0.0, min(abs(setpoint_kw), b.capacity_kw))
        self.auto_dispatch = False

    def execute(self, action: str, params: dict[str, Any]) -> tuple[bool, Any]:
        """Carry out a command (docs/commands.md). ``(True, result)`` or ``(False, reason)``.

        ``charge``/``discharge`` with optional ``setpoint_kw``; ``idle``; ``setpoint`` with
        ``kw`` (positive charges, negative discharges, 0 idles and holds); ``auto`` (params
        ignored) returns the node to its own routine, result ``{"mode": "auto"}``. Setpoints
        are clamped to the battery's capacity; the power follows within the ramp and the SoC
        limits."""
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
            if kw == 0 and params.get("release") is True:
                # the end of a dispatch: back to the node's own routine (docs/vpp.md)
                return self.execute("auto", {})
            mode: Mode = "charge" if kw > 0 else "discharge" if kw < 0 else "idle"
            self.set_mode(mode, abs(float(kw)))
        elif action == "auto":
            self.auto_dispatch = True
            self._hold_until_ms = 0  # decide afresh at the next step
            return True, {"mode": "auto"}
        else:
            return False, f"unknown action {action!r}"
        return True, {"mode": b.mode, "setpoint_kw": b.setpoint_kw}

    def _variation(self, ts_ms: int) -> DayVariation:
        day = ts_ms // DAY_MS
        if self._day is None or self._day[0] != day:
            self._day = (day, DayVariation.draw(self.seed, self.device_id, day))
        return self._day[1]

    def _decide(self, ts_ms: int) -> None:
        """Auto mode: pick mode and setpoint for the next few minutes from the routine."""
        b = self.battery
        rng = self.rng
        hour = (ts_ms % DAY_MS) / HOUR_MS
        fraction = routine_fraction(self.routine, self._variation(ts_ms), hour, b.soc)
        if rng.random() > self.routine.participation:
            fraction = 0.0  # this site sits the period out (its own load, maintenance, ...)
        elif abs(fraction) < 0.02 and rng.random() < 0.03:
            fraction = rng.choice((-1.0, 1.0)) * rng.uniform(0.1, 0.4)  # a stray action
        else:
            fraction *= rng.uniform(0.8, 1.2)
        full = fraction > 0 and b.soc >= b.soc_max
        empty = fraction < 0 and b.soc <= b.soc_min + DISCHARGE_RESERVE_PCT
        if full or empty:
            fraction = 0.0
        b.mode = "charge" if fraction > 0.01 else "discharge" if fraction < -0.01 else "idle"
        b.setpoint_kw = round(min(1.0, abs(fraction)) * b.capacity_kw, 2)
        self._hold_until_ms = ts_ms + rng.randint(*HOLD_MINUTES) * MINUTE_MS

    def advance(self, dt_s: float, ts_ms: int) -> float:
        """Move the node ``dt_s`` seconds on at ``ts_ms`` and return the power it delivered."""
        if self.auto_dispatch and ts_ms >= self._hold_until_ms:
            self._decide(ts_ms)
        b = self.battery
        if b.mode == "idle":
            wanted = 0.0
        else:
            target = b.setpoint_kw if b.mode == "charge" else -b.setpoint_kw
            noise = self.rng.gauss(0.0, 0.02 * b.capacity_kw)
            wanted = max(-b.capacity_kw, min(b.capacity_kw, target + noise))
        b.power_kw = round(b.deliverable_kw(wanted, dt_s), 3)
        b.integrate(dt_s)
        return b.power_kw

    def step(self, dt_s: float, host: dict[str, float], ts_ms: int) -> dict[str, Any]:
        """Advance ``dt_s`` seconds and return the telemetry record (hub payload shape)."""
        self.advance(dt_s, ts_ms)
        b = self.battery
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


def simulated_history(
    nodes: int,
    days: float,
    step_s: float,
    seed: int,
    start_ms: int,
    bucket_s: int = 900,
    warmup_days: float = 2.0,
) -> list[tuple[int, float]]:
    """Fleet power of ``nodes`` auto-mode nodes (``NodeModel.create(device_id(i), seed)``, the
    usual mix of sizes) stepped every ``step_s`` from ``start_ms`` for ``days``, with synthetic
    timestamps: ``[(bucket_start_ms, kW)]``, the sum of the nodes' power averaged over each
    ``bucket_s`` bucket (buckets on the epoch grid, as the store's fleet power has them).

    The fleet runs ``warmup_days`` before ``start_ms`` unrecorded: new nodes start with random
    states of charge, and their first days are a transient that a real fleet's history, taken
    from a fleet that has been running, would not have."""
    fleet = [NodeModel.create(device_id(i + 1), seed) for i in range(nodes)]
    step_ms = round(step_s * 1000)
    bucket_ms = bucket_s * 1000
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    first = -round(warmup_days * DAY_MS / step_ms)
    for i in range(first, round(days * DAY_MS / step_ms)):
        ts = start_ms + i * step_ms
        power = sum(node.advance(step_s, ts) for node in fleet)
        if i < 0:
            continue
        bucket = ts // bucket_ms * bucket_ms
        sums[bucket] = sums.get(bucket, 0.0) + power
        counts[bucket] = counts.get(bucket, 0) + 1
    return [(bucket, sums[bucket] / counts[bucket]) for bucket in sorted(sums)]


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
