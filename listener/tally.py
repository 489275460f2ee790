"""Counters and histograms for the per-message hot path, kept as plain numbers and turned into
Prometheus samples only when `/metrics` is scraped.

A `prometheus_client` counter takes a lock and three calls per `inc()`, a histogram more per
`observe()`: at thousands of messages a second, with a dozen updates per message, that was a
tenth of the listener's CPU. These are updated only from the event loop's thread (the webhook
receiver, on its own thread, keeps `prometheus_client`'s metrics), so a plain addition is
enough. The exposition is the same: a counter `x` is scraped as `x_total`, a histogram with
its cumulative `_bucket{le=...}`, `_count` and `_sum`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

V = TypeVar("V")


def _child(
    children: dict[tuple[str, ...], V],
    labelnames: tuple[str, ...],
    labels: dict[str, str],
    make: Callable[[], V],
) -> V:
    """The child of a labelled metric for these label values, made on first use."""
    key = tuple(str(labels[n]) for n in labelnames)
    child = children.get(key)
    if child is None:
        child = children[key] = make()
    return child


class CounterValue:
    """One counter's value (a child, for a labelled counter)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class FastCounter(Collector, CounterValue):
    """A counter, `labels(...)` giving one child per label values (cache the children on a
    hot path, as with prometheus_client)."""

    __slots__ = ("_children", "doc", "labelnames", "name")

    def __init__(
        self, name: str, doc: str, labelnames: Sequence[str] = (), *, registry: CollectorRegistry
    ) -> None:
        CounterValue.__init__(self)
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self._children: dict[tuple[str, ...], CounterValue] = {}
        registry.register(self)

    def labels(self, **labels: str) -> CounterValue:
        return _child(self._children, self.labelnames, labels, CounterValue)

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.doc, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        if self.labelnames:
            for key, child in list(self._children.items()):
                family.add_metric(list(key), child.value)
        else:
            family.add_metric([], self.value)
        return [family]


class HistogramValue:
    """One histogram's counts per bucket (the last is +Inf) and sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A value lands in the first bucket whose upper bound is at least the value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class FastHistogram(Collector, HistogramValue):
    """A histogram with fixed buckets, `labels(...)` as for `FastCounter`."""

    __slots__ = ("_children", "doc", "labelnames", "name")

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = sorted(float(b) for b in buckets if b != float("inf"))
        HistogramValue.__init__(self, bounds)
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self._children: dict[tuple[str, ...], HistogramValue] = {}
        registry.register(self)

    def labels(self, **labels: str) -> HistogramValue:
        return _child(self._children, self.labelnames, labels, lambda: HistogramValue(self.bounds))

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        children = list(self._children.items()) if self.labelnames else [((), self)]
        # As prometheus_client writes them: 0.25, 1.0, +Inf.
        edges = [repr(b) for b in self.bounds] + ["+Inf"]
        for key, child in children:
            counts, total = list(child.counts), child.sum
            running, buckets = 0.0, []
            for edge, count in zip(edges, counts, strict=True):
                running += count
                buckets.append((edge, running))
            family.add_metric(list(key), buckets, total)
        return [family]
