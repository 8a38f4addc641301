"""The online/offline table (pure)."""

from __future__ import annotations

from fieldlink.core.status import StatusBook


def test_only_changes_produce_events() -> None:
    book = StatusBook(silence_timeout_ms=1000)
    assert book.status("d") == "unknown"
    first = book.activity("d", 0)
    assert first is not None and (first.status, first.reason) == ("online", "telemetry")
    assert book.activity("d", 100) is None
    assert book.report("d", "online", 200) is None
    off = book.report("d", "offline", 300)
    assert off is not None and (off.status, off.reason, off.ts_ms) == ("offline", "reported", 300)
    back = book.activity("d", 400)
    assert back is not None and back.status == "online"
    assert book.since_ms("d") == 400 and book.last_seen_ms("d") == 400


def test_silence_sweep() -> None:
    book = StatusBook(silence_timeout_ms=1000)
    book.activity("a", 0)
    book.activity("b", 900)
    assert book.sweep(1000) == []
    changes = book.sweep(1001)
    assert [(c.device_id, c.status, c.reason) for c in changes] == [("a", "offline", "silence")]
    assert book.sweep(5000)[0].device_id == "b"
    assert book.sweep(9000) == []
    assert book.counts() == {"online": 0, "offline": 2}


def test_reported_offline_is_not_swept_again_and_sweep_can_be_disabled() -> None:
    book = StatusBook(silence_timeout_ms=0)
    book.activity("a", 0)
    assert book.sweep(10**9) == []
    book.report("a", "offline", 5)
    assert book.status("a") == "offline"


def test_first_report_offline_registers_the_device() -> None:
    book = StatusBook(1000)
    change = book.report("x", "offline", 7)
    assert change is not None
    assert (change.device_id, change.status, change.ts_ms, change.reason) == (
        "x", "offline", 7, "reported")
