"""Domain values shared by every layer: device ids, telemetry records, devices.

Values only. Timestamps are integer milliseconds since the Unix epoch (``ts_ms``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
"""SPEC §3: 1-128 characters of letters, digits and ``._:-``."""

_VALID_IDS: set[str] = set()
_VALID_IDS_MAX = 1_000_000  # a memo of DEVICE_ID_RE results: a fleet repeats its ids


def is_valid_device_id(value: object) -> bool:
    if value.__class__ is not str:
        return False
    if value in _VALID_IDS:
        return True
    if DEVICE_ID_RE.fullmatch(value) is None:
        return False
    if len(_VALID_IDS) < _VALID_IDS_MAX:
        _VALID_IDS.add(value)
    return True


@dataclass(slots=True)
class Record:
    """One validated telemetry record. ``metrics`` holds only the device's measurements."""

    device_id: str
    ts_ms: int
    metrics: dict[str, Any]
    seq: int | None = None
    meta: dict[str, Any] | None = None
    kind: str = "edge"
    tenant_id: str = "default"  # set by ingest from the device's registration

    def to_event_data(self) -> dict[str, Any]:
        """The wire shape of a record: ``{"device_id", "ts", ...metrics}`` (and ``seq`` if sent)."""
        data: dict[str, Any] = {"device_id": self.device_id, "ts": self.ts_ms}
        if self.seq is not None:
            data["seq"] = self.seq
        data.update(self.metrics)
        return data


@dataclass(slots=True)
class Device:
    """A registered device. ``meta`` is the latest metadata the device reported."""

    id: str
    kind: str = "edge"
    meta: dict[str, Any] = field(default_factory=dict)
    created_ms: int = 0
    last_seen_ms: int | None = None
    tenant_id: str = "default"  # from the device's credentials, never from its topic
