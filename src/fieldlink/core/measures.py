"""Metrics declared where they are counted (pure).

A component keeps its counters as plain fields of a dataclass (the hot path pays an integer
increment, nothing more) and declares each exported one with ``counter``/``gauge``/``labelled``
next to the field. ``measures_of`` reads them at scrape time; ``api/metrics.py`` turns the
measures of every component into the Prometheus exposition, merging labelled measures that
several components contribute to under one name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

Kind = Literal["counter", "gauge"]


@dataclass(frozen=True, slots=True)
class Measure:
    """One metric's value (``label`` None) or values by label (``values``)."""

    name: str
    help: str
    kind: Kind
    value: float = 0.0
    label: str | None = None
    values: dict[str, float] | None = None


class Measured(Protocol):
    """A component that exports metrics."""

    def measures(self) -> Iterable[Measure]: ...


def counter(name: str, help: str) -> Any:
    """A dataclass field (default 0) exported as a counter."""
    return field(default=0, metadata={"metric": (name, help, "counter", None)})


def gauge(name: str, help: str) -> Any:
    """A dataclass field (default 0) exported as a gauge."""
    return field(default=0, metadata={"metric": (name, help, "gauge", None)})


def labelled(name: str, help: str, label: str, kind: Kind = "counter") -> Any:
    """A ``dict[str, int]`` field (default empty) exported with one label."""
    return field(default_factory=dict, metadata={"metric": (name, help, kind, label)})


def measures_of(obj: Any) -> Iterator[Measure]:
    """The measures declared on the fields of dataclass instance ``obj``."""
    for f in fields(obj):
        declared = f.metadata.get("metric")
        if declared is None:
            continue
        name, help_text, kind, label = declared
        value = getattr(obj, f.name)
        if label is None:
            yield Measure(name, help_text, kind, float(value))
        else:
            yield Measure(name, help_text, kind, label=label, values=dict(value))


def add(counts: dict[str, int], key: str, n: int = 1) -> None:
    """``counts[key] += n`` for a labelled counter."""
    counts[key] = counts.get(key, 0) + n
