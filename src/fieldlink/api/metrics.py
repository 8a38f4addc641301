"""Prometheus exposition. Components keep plain counters and describe them as ``Measure``s
(core/measures.py); this collector reads every component's measures at scrape time, so the
hot path pays nothing for metrics. Labelled measures that several components report under one
name (authentication refusals from the HTTP layer and from token checks) are summed by label.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fieldlink.core.measures import Measure, Measured


def merged(sources: Sequence[Measured]) -> list[Measure]:
    """Every source's measures, one per name (labelled values summed), in first-seen order."""
    by_name: dict[str, Measure] = {}
    for source in sources:
        for measure in source.measures():
            seen = by_name.get(measure.name)
            if seen is None:
                by_name[measure.name] = measure
            elif seen.values is not None and measure.values is not None:
                values = dict(seen.values)
                for key, n in measure.values.items():
                    values[key] = values.get(key, 0) + n
                by_name[measure.name] = Measure(
                    seen.name, seen.help, seen.kind, label=seen.label, values=values
                )
            else:
                raise ValueError(f"two sources report the unlabelled metric {measure.name}")
    return list(by_name.values())


class MeasuresCollector:
    def __init__(self, sources: Sequence[Measured]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for m in merged(self.sources):
            family = CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily
            if m.values is None:
                yield family(m.name, m.help, value=m.value)
                continue
            labelled = family(m.name, m.help, labels=[m.label or "label"])
            for key, n in sorted(m.values.items()):
                labelled.add_metric([key], n)
            yield labelled


def metrics_registry(sources: Sequence[Measured]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeasuresCollector(sources))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
