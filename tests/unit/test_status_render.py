"""The status page's pure parts: the throughput chart, relative times, the page for an empty
database, and escaping done by the templates (autoescape), not by hand."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import listener.web
from listener.web import FOREVER, NEVER, Snapshot, ago, chart, render, render_unavailable

NOW = datetime(2026, 11, 27, 15, 30, 42, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script> & <b>co</b>'


def _empty(**changes: object) -> Snapshot:
    fields: dict[str, object] = {
        "now": NOW,
        "campaigns": [],
        "waiting": {},
        "queue": {"now": NOW, "due_now": 0, "oldest_due": None},
        "in_flight": [],
        "throughput": [],
        "failures": [],
        "instances": [],
    }
    fields.update(changes)
    return Snapshot(**fields)  # type: ignore[arg-type]


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
    page = render(_empty())
    assert "no campaigns yet" in page and "nothing in flight" in page and "no failures" in page
    assert "nothing sent" in page and "no spend recorded" in page
    assert "<script" not in page and "style=" not in page and "<style" not in page
    assert '<link rel="stylesheet" href="/static/status.css">' in page


def test_values_from_the_database_are_escaped_by_the_templates() -> None:
    campaign = uuid4()
    row = {
        "id": campaign, "name": HOSTILE, "status": "active", "instance": None, "queued": True,
        "daily_cap": None, "cap_today": None, "send_window_start": None, "send_window_end": None,
        "send_timezone": "America/Sao_Paulo", "send_days": None, "gap_min_seconds": None,
        "gap_max_seconds": None, "window_opens": None, "cap_used": None, "total": 0, "sent": 0,
        "failed": 0, "skipped": 0, "runs": 0, "running": 0,
    }  # fmt: skip
    failure = {
        "updated_at": NOW, "status": "failed", "campaign": HOSTILE, "phone": "5511987654321",
        "attempts": 4, "last_error": '<img src=x onerror="alert(1)"> 5511987654321',
    }  # fmt: skip
    page = render(_empty(campaigns=[row], failures=[failure]))
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in page
    assert "5511987654321" not in page and page.count("55119*****321") == 2
    unavailable = render_unavailable("<b>down</b> 5511987654321", None)
    assert "&lt;b&gt;down&lt;/b&gt; 55119*****321" in unavailable


def test_no_html_is_assembled_in_python() -> None:
    """The markup lives in the templates: the package's Python holds no tag."""
    package = Path(listener.web.__file__).parent
    tags = re.compile(r"<(?:/?(?:span|td|tr|th|table|section|div|svg|rect|b|p|h\d)\b)")
    assert [p.name for p in package.glob("*.py") if tags.search(p.read_text())] == []
    templates = {p.name for p in (package / "templates").iterdir()}
    assert {"campaigns.html", "queue.html", "instances.html", "funnel.html"} <= templates
    assert {"spend.html", "failures.html", "chart.svg"} <= templates
    assert (package / "static" / "status.css").is_file()


def test_infinite_times_read_as_words() -> None:
    assert ago(NEVER, NOW) == "never"
    assert ago(FOREVER, NOW) == "not until further notice"
    assert ago(NOW - timedelta(minutes=3, seconds=5), NOW) == "3m 5s ago"
    assert ago(NOW + timedelta(hours=2), NOW) == "in 2h"
