"""The status page (`GET /` on the metrics port), one page an operator keeps open.

It shows what the database and this listener know now: per campaign, what is queued and why
it waits, its runs' progress, today's cap, the last day's funnel and its spend against its
budget; per sender number, its next slot, the health this listener read, what went through it
and its own limits; the queue (due, in flight per listener, oldest due, the last hour's
throughput as an SVG chart) and the last failures.

- `snapshot`: what the page shows, as plain values;
- `read`: one `REPEATABLE READ, READ ONLY` snapshot through indexed queries (`queries.sql`,
  `status_*`), so the page costs the same with millions of finished rows;
- `live`: this listener's own state (health, slots, numbers read, provider holds);
- `render`: the snapshot as the plain values the templates show, rendered by the Jinja2
  templates of `templates/` (a file per section, autoescaped: campaign names and reasons are
  user input; phone numbers masked);
- `page`: the aiohttp handlers, the page and its stylesheet (`static/status.css`), and this
  listener's state read from its processor.

No script runs and nothing is fetched from elsewhere: the page reloads itself with a meta
refresh. `listener run` refuses a database that lacks a migration, so every section the schema
supports is always there.
"""

from listener.web.format import ago
from listener.web.live import Hold, InstanceLive, Live
from listener.web.page import SECURITY_HEADERS, StatusPage, live_state
from listener.web.render import chart, render, render_unavailable
from listener.web.snapshot import CAMPAIGN_LIMIT, FAILURE_LIMIT, FOREVER, NEVER, Snapshot

__all__ = [
    "CAMPAIGN_LIMIT",
    "FAILURE_LIMIT",
    "FOREVER",
    "NEVER",
    "SECURITY_HEADERS",
    "Hold",
    "InstanceLive",
    "Live",
    "Snapshot",
    "StatusPage",
    "ago",
    "chart",
    "live_state",
    "render",
    "render_unavailable",
]
