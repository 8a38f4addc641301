"""The benchmark machinery at a tiny scale, so bench/ keeps working (numbers are not asserted
beyond "nothing lost": speed is measured by `make bench`, not by tests)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import run as bench  # noqa: E402


def test_bench_step_runs_and_loses_nothing() -> None:
    stack = bench.Stack()
    try:
        clients = bench.Clients(stack, 20, "per-device:5", latency_clients=5)
        try:
            def expected(pub):  # type: ignore[no-untyped-def]
                per_device = list(pub["per_device"].values())
                return [per_device[i % 5] for i in range(20)]

            result = bench.step(stack, clients, 5, 200, 1.0, expected, 0)
        finally:
            clients.close()
    finally:
        stack.close()
    assert result["sent"] == 200
    assert result["lost"] == 0 and result["delivered"] == result["expected"] == 800
    assert result["ingest_caught_up"] and result["stored_total"] == 200
    assert result["p99_ms"] is not None and result["hub_rss_peak_mb"] > 0
