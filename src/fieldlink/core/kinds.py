"""Named events per device kind (pure): how a registry change of a device of some kind is
announced. A kind with a mapping names its events ``<kind>.created`` / ``.updated`` /
``.deleted``, and attributes it cares about get events of their own; other kinds have none
(their changes are plain ``device`` events).

For ``drone`` (the drone fleet seed): ``streamIsOn`` -> ``drone.stream.status``,
``aiDetection`` -> ``drone.ai.detection.toggled``, ``detectionClasses`` ->
``drone.detection.classes.changed``. An update that changes mapped attributes and others
makes one event per mapped attribute and one ``drone.updated`` with exactly the others.
"""

from __future__ import annotations

from typing import Any

Changes = dict[str, list[Any]]  # attribute -> [old, new]

KIND_EVENTS: dict[str, dict[str, str]] = {
    "drone": {
        "streamIsOn": "stream.status",
        "aiDetection": "ai.detection.toggled",
        "detectionClasses": "detection.classes.changed",
    },
}


def has_named_events(kind: str) -> bool:
    return kind in KIND_EVENTS


def update_events(kind: str, changes: Changes) -> list[tuple[str, Changes]]:
    """The (event name, its changes) an update makes; ``[("", changes)]`` for a kind without
    named events."""
    mapping = KIND_EVENTS.get(kind)
    if mapping is None:
        return [("", changes)]
    events = [
        (f"{kind}.{mapping[key]}", {key: change})
        for key, change in changes.items()
        if key in mapping
    ]
    rest = {key: change for key, change in changes.items() if key not in mapping}
    if rest:
        events.append((f"{kind}.updated", rest))
    return events


def lifecycle_event(kind: str, action: str) -> str:
    """``drone.created`` / ``drone.deleted`` for a kind with named events, else ""."""
    return f"{kind}.{action}" if kind in KIND_EVENTS else ""


def diff(old: dict[str, Any], new: dict[str, Any]) -> Changes:
    """Attributes whose value differs (added and removed ones too: None is the absent side)."""
    return {
        key: [old.get(key), new.get(key)]
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    }
