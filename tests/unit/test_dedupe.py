from __future__ import annotations

import pytest

from fieldlink.core.dedupe import DedupeWindow


def test_second_sighting_is_a_duplicate_per_device() -> None:
    window = DedupeWindow(10)
    assert window.first_sighting("a", 1)
    assert not window.first_sighting("a", 1)
    assert window.first_sighting("b", 1)  # same seq, other device


def test_window_is_bounded_and_forgets_oldest_first() -> None:
    window = DedupeWindow(3)
    for seq in range(5):
        assert window.first_sighting("a", seq)
    assert len(window) == 3
    assert window.first_sighting("a", 0)  # forgotten: the store's unique index is the backstop
    assert not window.first_sighting("a", 4)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DedupeWindow(0)
