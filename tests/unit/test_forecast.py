"""The load forecast (pure): exact on a clean daily pattern, follows a level shift for a while,
degrades gracefully with little or gappy history, and beats same-time-yesterday on a simulated
fleet."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from fieldlink.core.forecast import (
    DAY_MS,
    HOUR_MS,
    STEP_MS,
    mae,
    naive_same_time_yesterday,
    relative_mae,
    seasonal_forecast,
)
from fieldlink.simulator.model import simulated_history

MIDNIGHT_MS = 1_764_028_800_000  # 2025-11-25 00:00 UTC
SLOTS = DAY_MS // STEP_MS  # 96


def daily(
    days: int, shape: Callable[[int, int], float], start_ms: int = MIDNIGHT_MS
) -> list[tuple[int, float]]:
    """``days`` days of 15-minute points before ``start_ms``; ``shape(slot_of_day, day)``."""
    first = start_ms - days * DAY_MS
    return [(first + i * STEP_MS, shape(i % SLOTS, i // SLOTS)) for i in range(days * SLOTS)]


def sine(slot: int, day: int = 0) -> float:
    return 100.0 * math.sin(2 * math.pi * slot / SLOTS)


def test_a_daily_sine_is_forecast_exactly() -> None:
    forecast = seasonal_forecast(daily(7, sine), MIDNIGHT_MS)
    assert [ts for ts, _ in forecast] == [MIDNIGHT_MS + i * STEP_MS for i in range(SLOTS)]
    assert max(abs(kw - sine(i)) for i, (_, kw) in enumerate(forecast)) < 1e-9


def test_a_level_shift_is_followed_and_the_correction_decays() -> None:
    history = [
        (ts, kw + 50.0 if ts >= MIDNIGHT_MS - 2 * HOUR_MS else kw) for ts, kw in daily(7, sine)
    ]
    forecast = seasonal_forecast(history, MIDNIGHT_MS)
    plain = seasonal_forecast(history, MIDNIGHT_MS, correction_decay_ms=0)
    errors = [kw - sine(i) for i, (_, kw) in enumerate(forecast)]
    assert errors[0] == pytest.approx(50.0)  # the last hour was 50 kW above the profile
    assert 0 < errors[4] < errors[0] and errors[4] == pytest.approx(50.0 * math.exp(-1))
    assert abs(errors[6 * 4]) < 0.2  # six hours on, back to the profile
    # If the shift persists, the correction more than halves the error of the next hour and
    # still helps over the next two.
    shifted = [(ts, sine(i) + 50.0) for i, (ts, _) in enumerate(forecast)]
    assert mae(forecast[:4], shifted[:4]) < 0.5 * mae(plain[:4], shifted[:4])
    assert mae(forecast[:8], shifted[:8]) < 0.6 * mae(plain[:8], shifted[:8])


def test_one_odd_day_does_not_bend_the_profile() -> None:
    history = daily(7, lambda slot, day: 0.0 if day == 3 else sine(slot))  # an outage day
    forecast = seasonal_forecast(history, MIDNIGHT_MS)
    assert max(abs(kw - sine(i)) for i, (_, kw) in enumerate(forecast)) < 1e-9


def test_one_day_of_history_is_same_time_yesterday() -> None:
    history = daily(1, lambda slot, day: float(slot * slot % 17))
    assert seasonal_forecast(history, MIDNIGHT_MS) == naive_same_time_yesterday(
        history, MIDNIGHT_MS
    )
    assert seasonal_forecast(history, MIDNIGHT_MS)[5] == (MIDNIGHT_MS + 5 * STEP_MS, 25 % 17)


def test_no_history_no_forecast() -> None:
    assert seasonal_forecast([], MIDNIGHT_MS) == []
    assert naive_same_time_yesterday([], MIDNIGHT_MS) == []
    # History older than the profile's window counts as none.
    assert seasonal_forecast(daily(1, sine, MIDNIGHT_MS - 8 * DAY_MS), MIDNIGHT_MS) == []


def test_gaps_are_interpolated_and_the_future_is_not_peeked_at() -> None:
    history = [
        (ts, kw)
        for ts, kw in daily(3, lambda slot, day: float(slot))
        if not 10 <= (ts - MIDNIGHT_MS) // STEP_MS % SLOTS <= 12
    ]
    history.append((MIDNIGHT_MS + STEP_MS, 1e9))  # at or after start: ignored
    forecast = seasonal_forecast(history, MIDNIGHT_MS)
    assert [kw for _, kw in forecast[8:15]] == [8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0]


def test_horizon_and_step() -> None:
    history = daily(7, sine)
    two_days = seasonal_forecast(history, MIDNIGHT_MS, horizon_ms=2 * DAY_MS)
    assert len(two_days) == 2 * SLOTS
    assert max(abs(kw - sine(i % SLOTS)) for i, (_, kw) in enumerate(two_days)) < 1e-9
    hourly = seasonal_forecast(history, MIDNIGHT_MS, horizon_ms=6 * HOUR_MS, step_ms=HOUR_MS)
    assert [ts for ts, _ in hourly] == [MIDNIGHT_MS + h * HOUR_MS for h in range(6)]
    with pytest.raises(ValueError):
        seasonal_forecast(history, MIDNIGHT_MS, step_ms=7 * 60_000)


def test_errors() -> None:
    forecast = [(0, 1.0), (1, 3.0), (2, 5.0)]
    actual = [(1, 2.0), (2, 2.0), (3, 9.0)]
    assert mae(forecast, actual) == 2.0  # |3-2| and |5-2| over the common ts 1 and 2
    assert relative_mae(forecast, actual) == 1.0
    assert relative_mae([(1, 1.0)], [(1, 0.0)]) == math.inf
    with pytest.raises(ValueError):
        mae(forecast, [(9, 1.0)])


def test_beats_same_time_yesterday_on_a_simulated_fleet() -> None:
    """20 nodes, 8 days: train on 7, forecast day 8 from its midnight."""
    history = simulated_history(20, 8, 300.0, seed=1, start_ms=MIDNIGHT_MS - 7 * DAY_MS)
    train = [(ts, kw) for ts, kw in history if ts < MIDNIGHT_MS]
    actual = [(ts, kw) for ts, kw in history if ts >= MIDNIGHT_MS]
    assert len(train) == 7 * SLOTS and len(actual) == SLOTS
    seasonal = mae(seasonal_forecast(train, MIDNIGHT_MS), actual)
    naive = mae(naive_same_time_yesterday(train, MIDNIGHT_MS), actual)
    assert seasonal < 0.9 * naive
    assert relative_mae(seasonal_forecast(train, MIDNIGHT_MS), actual) < 0.5
