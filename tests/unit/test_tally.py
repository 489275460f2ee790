"""The hot-path metrics (listener/tally.py) scrape exactly as prometheus_client's own."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from listener.tally import FastCounter, FastHistogram

BUCKETS = (0.001, 0.01, 0.1, 1, 10)
VALUES = [0.0, 0.001, 0.0015, 0.01, 0.5, 1.0, 3.0, 10.0, 11.0, 1e9]


def _samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without `_created` (ours has none)."""
    text = generate_latest(registry).decode()
    return sorted(
        line
        for line in text.splitlines()
        if line and not line.startswith("#") and "_created" not in line
    )


def test_histogram_scrapes_like_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("x_seconds", "x", ["provider"], buckets=BUCKETS, registry=ours)
    slow = Histogram("x_seconds", "x", ["provider"], buckets=BUCKETS, registry=theirs)
    plain_fast = FastHistogram("y_seconds", "y", buckets=BUCKETS, registry=ours)
    plain_slow = Histogram("y_seconds", "y", buckets=BUCKETS, registry=theirs)
    for i, value in enumerate(VALUES):
        provider = "llm" if i % 3 else "sender"
        fast.labels(provider=provider).observe(value)
        slow.labels(provider=provider).observe(value)
        plain_fast.observe(value)
        plain_slow.observe(value)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("y_seconds_bucket", {"le": "0.01"}) == 4  # le is inclusive


def test_counter_scrapes_like_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastCounter("m", "m", ["outcome"], registry=ours)
    slow = Counter("m", "m", ["outcome"], registry=theirs)
    plain_fast = FastCounter("n", "n", registry=ours)
    plain_slow = Counter("n", "n", registry=theirs)
    for outcome, amount in [("sent", 1), ("failed", 2.5), ("sent", 3)]:
        fast.labels(outcome=outcome).inc(amount)
        slow.labels(outcome=outcome).inc(amount)
        plain_fast.inc(amount)
        plain_slow.inc(amount)
    assert _samples(ours) == _samples(theirs)
    assert ours.get_sample_value("m_total", {"outcome": "sent"}) == 4


def test_a_counter_never_goes_down() -> None:
    counter = FastCounter("c", "c", registry=CollectorRegistry())
    with pytest.raises(ValueError):
        counter.inc(-1)
    assert counter.value == 0
