"""The fleet load forecast, pure: fleet power history in, the next day's power out. No I/O and
no clock (the time to forecast from is passed in); it does not fetch history or schedule itself.

Method: a seasonal daily profile with a decaying level correction. For each time-of-day slot
the profile is a robust average of the same slot over the last ``days`` days (up to 7, whatever
exists): the median for 3-4 values, the mean without the highest and lowest quarter above that,
the mean of 2, the value itself for 1. Fleet power is driven by the clock (solar charging at
midday, the evening peak, quiet nights), so the same slot on earlier days is the best single
predictor; averaging several days cancels one day's weather and one site's whims, and trimming
keeps one odd day (an outage, a long dispatch) from bending the profile, which a plain mean or
yesterday alone cannot do. What the profile cannot know is how today differs from the typical
day; the last hour tells: the mean of actual minus profile over the last ``correction_window_ms``
is added to the forecast with weight ``exp(-(t - start) / correction_decay_ms)``, because such
deviations (cloud cover, a dispatch running, a cold evening) persist for a while, not for a day.
The default decay of 1 h did best on the simulated fleet (bench/forecast.py; 0.5-1 h about
equal, 2 h and more carry a noon deviation into the evening peak, where it does not belong).

With one day of history the profile is the same time yesterday (and there is no correction: the
last hour has no earlier day to be compared with); slots
without any value in the window (gaps) are interpolated linearly between their neighbours in
the forecast; with no usable history at all the forecast is empty (unknown, not zero).

Timestamps are bucket starts in ms; history points are placed on the ``step_ms`` grid anchored at
``start_ms`` (a point belongs to the slot holding its timestamp), so history on the same grid as
the forecast (e.g. 15-minute buckets from the store) maps one to one. Points at or after
``start_ms`` are ignored: a forecast never sees what it predicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
STEP_MS = 15 * MINUTE_MS
PROFILE_DAYS = 7

Series = Sequence[tuple[int, float]]


def seasonal_forecast(
    history: Series,
    start_ms: int,
    horizon_ms: int = DAY_MS,
    step_ms: int = STEP_MS,
    *,
    days: int = PROFILE_DAYS,
    correction_window_ms: int = HOUR_MS,
    correction_decay_ms: int = HOUR_MS,
) -> list[tuple[int, float]]:
    """``[(ts_ms, kW)]`` at ``start_ms + i * step_ms`` for ``i < horizon_ms // step_ms`` (see the
    module doc). ``days`` (>= 1) is how many past days the profile averages; a correction
    window or decay of 0 turns the level correction off. Empty when no history falls in the
    profile's window. Raises ``ValueError`` if ``step_ms`` does not divide a day."""
    period = _period(step_ms)
    if days < 1:
        raise ValueError("days must be at least 1")
    grid = _grid(history, start_ms, step_ms)
    count = max(0, horizon_ms // step_ms)

    def profile(i: int) -> float | None:
        first = _first_lag(i, period)
        values = [grid[j] for d in range(first, first + days) if (j := i - d * period) in grid]
        return _robust_mean(values) if values else None

    values = _fill_gaps([profile(i) for i in range(count)])
    if values is None:
        return []
    level = 0.0
    window = correction_window_ms // step_ms
    if window > 0 and correction_decay_ms > 0:
        residuals = [
            grid[j] - p for j in range(-window, 0) if j in grid and (p := profile(j)) is not None
        ]
        level = sum(residuals) / len(residuals) if residuals else 0.0
    return [
        (
            start_ms + i * step_ms,
            value + level * math.exp(-i * step_ms / correction_decay_ms) if level else value,
        )
        for i, value in enumerate(values)
    ]


def naive_same_time_yesterday(
    history: Series, start_ms: int, horizon_ms: int = DAY_MS, step_ms: int = STEP_MS
) -> list[tuple[int, float]]:
    """The baseline: each slot gets the value of the same slot one day earlier (for horizons
    past a day, of the latest day that is history). Gaps are interpolated like the seasonal
    forecast's; empty when there is nothing to copy."""
    period = _period(step_ms)
    grid = _grid(history, start_ms, step_ms)
    count = max(0, horizon_ms // step_ms)
    values = _fill_gaps([grid.get(i - _first_lag(i, period) * period) for i in range(count)])
    if values is None:
        return []
    return [(start_ms + i * step_ms, value) for i, value in enumerate(values)]


def mae(forecast: Series, actual: Series) -> float:
    """Mean absolute error over the timestamps both have. Raises ``ValueError`` if none."""
    pairs = _pairs(forecast, actual)
    return sum(abs(f - a) for f, a in pairs) / len(pairs)


def relative_mae(forecast: Series, actual: Series) -> float:
    """MAE divided by the mean absolute actual power over the common timestamps (0.1 = 10 %).
    A MAPE stand-in that stays defined when fleet power crosses zero, as it does twice a day.
    ``inf`` if the actual power is zero throughout; ``ValueError`` if nothing is common."""
    pairs = _pairs(forecast, actual)
    scale = sum(abs(a) for _, a in pairs) / len(pairs)
    error = sum(abs(f - a) for f, a in pairs) / len(pairs)
    return error / scale if scale > 0 else math.inf


def _period(step_ms: int) -> int:
    if step_ms <= 0 or DAY_MS % step_ms:
        raise ValueError("step_ms must divide a day")
    return DAY_MS // step_ms


def _grid(history: Series, start_ms: int, step_ms: int) -> dict[int, float]:
    """History by slot index relative to ``start_ms`` (negative: the past); several points in
    one slot are averaged."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for ts, kw in history:
        if ts < start_ms and math.isfinite(kw):
            slot = (ts - start_ms) // step_ms
            sums[slot] = sums.get(slot, 0.0) + kw
            counts[slot] = counts.get(slot, 0) + 1
    return {slot: total / counts[slot] for slot, total in sums.items()}


def _first_lag(i: int, period: int) -> int:
    """The smallest whole number of days back from slot ``i`` that lands in the past (< 0)."""
    return max(1, i // period + 1)


def _robust_mean(values: list[float]) -> float:
    """Median for 3-4 values, else the mean without ``len // 4`` (at least 1 for 3+) from each
    end; the plain mean of 1-2."""
    ordered = sorted(values)
    n = len(ordered)
    cut = 0 if n < 3 else max(1, n // 4)
    kept = ordered[cut : n - cut]
    return sum(kept) / len(kept)


def _fill_gaps(values: list[float | None]) -> list[float] | None:
    """Linear interpolation across missing slots, the nearest value at the ends; None if every
    slot is missing."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if not known:
        return None
    out: list[float] = []
    k = 0  # the first known slot at or after i
    for i in range(len(values)):
        while k < len(known) and known[k][0] < i:
            k += 1
        if k < len(known) and known[k][0] == i:
            out.append(known[k][1])
        elif k == 0:
            out.append(known[0][1])
        elif k == len(known):
            out.append(known[-1][1])
        else:
            (i0, v0), (i1, v1) = known[k - 1], known[k]
            out.append(v0 + (v1 - v0) * (i - i0) / (i1 - i0))
    return out


def _pairs(forecast: Series, actual: Series) -> list[tuple[float, float]]:
    by_ts = dict(actual)
    pairs = [(kw, by_ts[ts]) for ts, kw in forecast if ts in by_ts]
    if not pairs:
        raise ValueError("the forecast and the actual series share no timestamp")
    return pairs
