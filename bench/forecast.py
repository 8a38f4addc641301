"""The VPP load forecast against same-time-yesterday on simulated fleets.

    python bench/forecast.py [--nodes 20,100] [--seeds 1,2,3] [--from-hours 0,12]
        [--train-days 7] [--step-s 60]

For each fleet size and seed it steps that many auto-mode simulated nodes (their daily routine,
fleet-wide weather, per-site randomness; ``simulated_history``) through ``train-days`` + 1.5
days with synthetic timestamps, buckets fleet power to 15 minutes, and forecasts the next 24 h
from each origin hour of the day after the training days (0: train on exactly ``train-days``
whole days, forecast the next). Errors are the MAE in kW and the MAE as a percentage of the
mean absolute actual power. Prints a Markdown table (one row per fleet size, origin and
method; one column per seed and the mean); progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fieldlink.core.forecast import (  # noqa: E402
    DAY_MS,
    HOUR_MS,
    mae,
    naive_same_time_yesterday,
    relative_mae,
    seasonal_forecast,
)
from fieldlink.simulator.model import simulated_history  # noqa: E402

START_MS = 1_763_942_400_000  # 2025-11-24 00:00 UTC: the simulated days start at midnight
Method = Callable[[list[tuple[int, float]], int], list[tuple[int, float]]]
METHODS: dict[str, Method] = {
    "same time yesterday": naive_same_time_yesterday,
    "seasonal, no correction": lambda h, t: seasonal_forecast(h, t, correction_decay_ms=0),
    "seasonal (default)": seasonal_forecast,
}


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=ints, default=[20, 100])
    parser.add_argument("--seeds", type=ints, default=[1, 2, 3])
    parser.add_argument("--from-hours", type=ints, default=[0, 12])
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--step-s", type=float, default=60.0)
    args = parser.parse_args()

    days = args.train_days + 1 + max(args.from_hours) / 24
    # (nodes, origin hour, method) -> per seed (MAE kW, MAE % of mean |power|)
    results: dict[tuple[int, int, str], list[tuple[float, float]]] = {}
    for nodes in args.nodes:
        for seed in args.seeds:
            began = time.perf_counter()
            history = simulated_history(nodes, days, args.step_s, seed, START_MS)
            print(
                f"{nodes} nodes, seed {seed}: {days:g} days simulated in "
                f"{time.perf_counter() - began:.1f} s",
                file=sys.stderr,
            )
            for hour in args.from_hours:
                origin = START_MS + args.train_days * DAY_MS + hour * HOUR_MS
                past = [p for p in history if p[0] < origin]
                actual = [p for p in history if origin <= p[0] < origin + DAY_MS]
                for name, method in METHODS.items():
                    forecast = method(past, origin)
                    results.setdefault((nodes, hour, name), []).append(
                        (mae(forecast, actual), 100.0 * relative_mae(forecast, actual))
                    )

    print(
        f"Training {args.train_days} days, 15-minute buckets, 24 h horizon, step {args.step_s:g} s."
    )
    print()
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"| nodes | from | method | {seeds} | mean |")
    print("|---:|---:|---|" + "---:|" * (len(args.seeds) + 1))
    for (nodes, hour, name), rows in results.items():
        cells = " | ".join(f"{kw:.1f} kW ({pct:.0f} %)" for kw, pct in rows)
        mean_kw = sum(kw for kw, _ in rows) / len(rows)
        mean_pct = sum(pct for _, pct in rows) / len(rows)
        print(
            f"| {nodes} | {hour:02d}:00 | {name} | {cells} | {mean_kw:.1f} kW ({mean_pct:.0f} %) |"
        )


if __name__ == "__main__":
    main()
