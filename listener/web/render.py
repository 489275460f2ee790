"""The status page's rendering: a snapshot in, HTML out. The markup is in the Jinja2 templates
of `templates/` (a file per section), rendered with autoescaping on, so every value from the
database (campaign names and stored reasons are user input) is escaped by the template engine,
not by hand; the stylesheet is `static/status.css`. The values each template shows come from
`views`; no HTML is assembled in Python."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from listener.web.format import NONE, ago, endless, local_time, masked, money, number, span
from listener.web.live import Live
from listener.web.snapshot import Snapshot
from listener.web.views import (
    FUNNEL_COLUMNS,
    REPLY_COLUMNS,
    campaign_rows,
    chart_view,
    dead_letter_view,
    failure_rows,
    funnel_rows,
    instance_rows,
    queue_view,
    reply_rows,
    spend_rows,
)

#: Seconds between the page's own reloads.
REFRESH_SECONDS = 5
#: Where the daemon serves the stylesheet.
STYLESHEET_PATH = "/static/status.css"

_ENV = Environment(
    loader=PackageLoader("listener.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(
    number=number, ago=ago, local_time=local_time, money=money, masked=masked, span=span
)
_ENV.tests["endless"] = endless
_ENV.globals.update(refresh=REFRESH_SECONDS, stylesheet=STYLESHEET_PATH, dash=NONE)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def render(s: Snapshot) -> str:
    """The whole page."""
    return _ENV.get_template("status.html").render(
        title="listener status",
        now=s.now,
        stamp=local_time(s.now),
        campaigns=campaign_rows(s),
        pools=any(s.pools.values()),
        queue=queue_view(s),
        chart=chart_view(s.now, s.throughput),
        instances=instance_rows(s),
        limits=bool(s.sender_instances),
        holds=s.live.holds if s.live else (),
        funnel=funnel_rows(s),
        funnel_columns=FUNNEL_COLUMNS,
        replies=reply_rows(s),
        reply_columns=REPLY_COLUMNS,
        spend=spend_rows(s),
        failures=failure_rows(s),
        dead_letters=dead_letter_view(s),
    )


def render_unavailable(reason: str, live: Live | None) -> str:
    """The page when the database does not answer: say so, and what this listener knows."""
    return _ENV.get_template("unavailable.html").render(
        title="listener status: database unavailable",
        stamp="",
        reason=masked(reason),
        worker_id=live.worker_id if live else None,
    )


def chart(now: datetime, per_minute: Iterable[dict[str, Any]]) -> str:
    """The last hour's sends per minute alone, as the page draws it (an inline SVG)."""
    return _ENV.get_template("chart.svg").render(chart=chart_view(now, per_minute))
