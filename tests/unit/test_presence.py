"""Presence with a fake clock and the in-process bus: why a device went offline, and flapping
damped for clients while the status table stays exact."""

from __future__ import annotations

import pytest

from fieldlink.backends.memory import MemoryBus, MemoryStore
from fieldlink.core.codec import parse_status_message
from fieldlink.core.events import DomainEvent, StatusChanged
from fieldlink.core.status import StatusBook
from fieldlink.services.presence import Presence
from fieldlink.services.registry import DeviceRegistry


class NoCredentials:
    def credential_tenant(self, device_id: str) -> str | None:
        return None


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.mark.parametrize(("payload", "expected"), [
    (b"online", ("online", "reported")),
    (b"offline", ("offline", "last_will")),
    (b'"offline"', ("offline", "last_will")),
    (b'{"status":"offline","reason":"clean_disconnect"}', ("offline", "clean_disconnect")),
    (b'{"status":"offline"}', ("offline", "status_message")),
    (b'{"status":"offline","reason":"bored"}', ("offline", "status_message")),
    (b'{"status":"online","reason":"clean_disconnect"}', ("online", "reported")),
])
def test_offline_reasons(payload: bytes, expected: tuple[str, str]) -> None:
    assert parse_status_message(payload) == expected


def presence(window_ms: int) -> tuple[Presence, list[StatusChanged], Clock]:
    clock = Clock()
    bus = MemoryBus()
    seen: list[StatusChanged] = []

    def keep(event: DomainEvent) -> None:
        if isinstance(event, StatusChanged):
            seen.append(event)

    bus.subscribe(keep)
    registry = DeviceRegistry(store=MemoryStore(), bus=bus, credentials=NoCredentials(),
                              clock_ms=clock)
    p = Presence(book=StatusBook(60_000), registry=registry, bus=bus, clock_ms=clock,
                 flap_window_ms=window_ms)
    return p, seen, clock


def test_a_flapping_device_shows_one_pair_per_window_and_the_table_stays_exact() -> None:
    p, seen, clock = presence(window_ms=30_000)
    flips = [b"online", b"offline", b"online", b"offline", b"online", b"offline"]
    for payload in flips:  # one second apart: a flapping link
        p.status_message("f1", payload)
        clock.ms += 1000
    assert [str(e.status) for e in seen] == ["online", "offline", "online"]
    assert p.status("f1") == "offline"  # exact, while clients have not been told yet
    assert p.counters.damped == 3
    p.sweep()  # still inside the window: nothing more
    assert len(seen) == 3
    clock.ms += 30_000
    p.sweep()  # the window passed: clients learn where the device stands now
    assert [str(e.status) for e in seen] == ["online", "offline", "online", "offline"]
    assert seen[-1].reason == "last_will"
    p.sweep()
    assert len(seen) == 4


def test_without_a_window_every_change_is_shown() -> None:
    p, seen, clock = presence(window_ms=0)
    for payload in (b"online", b"offline", b"online", b"offline"):
        p.status_message("f2", payload)
        clock.ms += 1000
    assert [str(e.status) for e in seen] == ["online", "offline", "online", "offline"]
    assert p.counters.damped == 0


def test_the_book_keeps_why_each_device_has_its_status() -> None:
    from fieldlink.core.events import DeviceStatus, StatusReason
    from fieldlink.core.status import StatusBook

    book = StatusBook(silence_timeout_ms=1000)
    assert book.reason("d") is None
    book.activity("d", 0)
    assert book.reason("d") is StatusReason.TELEMETRY
    book.sweep(5000)
    assert book.reason("d") is StatusReason.SILENCE
    book.report("d", DeviceStatus.ONLINE, 6000)
    assert book.reason("d") is StatusReason.REPORTED
    book.report("d", DeviceStatus.OFFLINE, 7000, StatusReason.LAST_WILL)
    assert book.reason("d") is StatusReason.LAST_WILL
    book.apply("d", DeviceStatus.OFFLINE, 8000, StatusReason.CLEAN_DISCONNECT)  # another instance's
    assert book.reason("d") is StatusReason.CLEAN_DISCONNECT
