"""A bounded window of recently seen ``(device_id, seq)`` pairs.

It catches redeliveries (MQTT QoS 1 resends, HTTP retries) before they are fanned out twice;
the store's unique ``(device_id, seq)`` constraint is the durable guarantee behind it. One
window for the whole fleet keeps memory bounded by ``capacity``, not by the number of devices:
at 20,000 records/s, 100,000 entries remember the last 5 s (about 15 MB).
"""

from __future__ import annotations

from collections import deque


class DedupeWindow:
    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._seen: set[tuple[str, int]] = set()
        self._order: deque[tuple[str, int]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def first_sighting(self, device_id: str, seq: int) -> bool:
        """Record the pair; False if it is already in the window (a duplicate)."""
        key = (device_id, seq)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
        return True

    def forget_device(self, device_id: str) -> int:
        """Drop every pair of one device (it was deleted: its history may be gone). O(window);
        the eviction order keeps stale slots, which is harmless. Returns how many."""
        mine = [key for key in self._seen if key[0] == device_id]
        self._seen.difference_update(mine)
        return len(mine)

    def forget(self, device_id: str, seq: int) -> None:
        """Drop a pair whose record was not stored, so its redelivery is accepted. (Its slot in
        the eviction order stays; evicting it later is harmless.)"""
        self._seen.discard((device_id, seq))
