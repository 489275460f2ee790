"""The status page's pure parts: the throughput chart and the page for an empty database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from listener.status import FOREVER, NEVER, Features, Snapshot, _ago, chart, render

NOW = datetime(2026, 11, 27, 15, 30, 42, tzinfo=UTC)


def test_the_chart_has_a_bar_per_minute_scaled_to_the_busiest() -> None:
    minute = NOW.replace(second=0)
    svg = chart(
        NOW,
        [
            {"minute": minute, "count": 10},
            {"minute": minute - timedelta(minutes=30), "count": 5},
            {"minute": minute - timedelta(minutes=90), "count": 99},  # older than an hour
        ],
    )
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 60
    assert heights[-1] == max(heights) > 0 and heights[29] == heights[-1] / 2
    assert sum(1 for h in heights if h) == 2
    assert "max 10/min" in svg


def test_an_empty_database_gives_a_page_that_says_so() -> None:
    snapshot = Snapshot(
        now=NOW,
        features=Features(),
        campaigns=[],
        waiting={},
        sent_recent={},
        queue={"now": NOW, "due_now": 0, "oldest_due": None},
        in_flight=[],
        throughput=[],
        failures=[],
        instances=[],
    )
    page = render(snapshot)
    assert "no campaigns yet" in page and "nothing in flight" in page and "no failures" in page
    assert 'id="funnel"' not in page and 'id="spend"' not in page
    assert "<script" not in page


def test_infinite_times_read_as_words() -> None:
    assert _ago(NOW, NEVER) == "never"
    assert _ago(NOW, FOREVER) == "not until further notice"
    assert _ago(NOW, NOW - timedelta(minutes=3, seconds=5)) == "3m 5s ago"
    assert _ago(NOW, NOW + timedelta(hours=2)) == "in 2h"
