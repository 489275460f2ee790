"""The status page: `GET /` on the metrics port, one page an operator keeps open.

It shows what the database and this listener know now: per campaign, what is queued and why
it waits, its runs' progress, today's cap and the last day's sends; per sender instance, its
gap and the health this listener read; the queue (due, in flight per listener, oldest due,
the last hour's throughput as a chart drawn here in SVG) and the last failures. Sections that
need columns of later migrations (delivery funnel, spend, sender pools) appear once those
columns exist: the catalog is read when the page starts and again once a minute.

Read-only (one READ ONLY snapshot), server-rendered with everything escaped (campaign names
are user input), phone numbers masked, no script and nothing fetched from elsewhere: the page
reloads itself with a meta refresh. Every query is served by an index (migrations 0004 and 0008), so
the page costs the same with millions of finished rows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from aiohttp import web
from psycopg.rows import dict_row
from psycopg.types.datetime import TimestamptzLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from listener.phones import mask_phone, mask_phone_like
from listener.queries import q

if TYPE_CHECKING:
    from listener.processor import Processor
    from listener.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between the page's own reloads.
REFRESH_SECONDS = 5
#: Campaigns shown at most (those with queued messages first).
CAMPAIGN_LIMIT = 50
#: Failed and retrying messages shown, each.
FAILURE_LIMIT = 10
#: How often the catalog is read again for the optional sections.
CATALOG_TTL = 60.0

#: The columns (table, column) each optional section needs, as the design names them.
FUNNEL_COLUMNS = frozenset(
    {
        ("campaign_messages", "delivered_at"),
        ("campaign_messages", "read_at"),
        ("campaign_messages", "replied_at"),
        ("campaign_messages", "delivery_error"),
    }
)
SPEND_COLUMNS = frozenset(
    {
        ("campaign_messages", "cost_usd"),
        ("campaign_messages", "prompt_tokens"),
        ("campaign_messages", "completion_tokens"),
    }
)
#: A campaign's budget and the running spend it is checked against (kept by the listener).
BUDGET_COLUMNS = frozenset({("campaigns", "budget_usd"), ("campaigns", "spent_usd")})
POOL_COLUMNS = frozenset({("campaigns", "instances")})
SENDER_TABLE_COLUMNS = frozenset(
    {
        ("sender_instances", "name"),
        ("sender_instances", "daily_cap"),
        ("sender_instances", "hourly_cap"),
        ("sender_instances", "warmup_started_on"),
        ("sender_instances", "enabled"),
    }
)
#: Each sent part and the instance it went through, with its send time (delivery feedback).
PARTS_COLUMNS = frozenset(
    {("message_parts", "instance"), ("message_parts", "part_no"), ("message_parts", "sent_at")}
)
_CATALOG_TABLES = ["campaign_messages", "campaigns", "sender_instances", "message_parts"]


@dataclass(frozen=True)
class InstanceLive:
    """What this listener last read of a sender instance's connection."""

    name: str
    state: str
    checked_at: datetime
    recheck_at: datetime

    @property
    def held(self) -> bool:
        return self.state not in ("open", "unknown")


@dataclass(frozen=True)
class Hold:
    """A provider this listener holds back from, for how long, and why."""

    provider: str
    until: datetime
    reason: str


@dataclass(frozen=True)
class Live:
    """This listener's own state, which the database does not hold."""

    worker_id: str
    health: dict[str, object]
    in_flight: int
    concurrency: int
    default_instance: str | None = None
    instances: tuple[InstanceLive, ...] = ()
    holds: tuple[Hold, ...] = ()


def live_state(settings: Settings, health: dict[str, object], processor: Processor) -> Live:
    """This listener's state for the page: its health, busy slots, the sender instances it
    has read (the held ones until their next check) and the providers it holds back from."""
    wall, mono = datetime.now(UTC), time.monotonic()

    def at(moment: float) -> datetime:
        return wall + timedelta(seconds=moment - mono)

    health_of = processor.instances
    instances = tuple(
        # A hold (a restriction) ends at its own time; any other state is read again after
        # the cache's time to live.
        InstanceLive(name, state, at(read), at(health_of.held_until(name) or read + health_of.ttl))
        for name, (state, read) in sorted(health_of.known().items())
    )
    holds = tuple(
        Hold(gate.name, wall + timedelta(seconds=gate.remaining), gate.reason)
        for gate in (processor.llm_gate, processor.sender_gate)
        if gate.remaining > 0
    )
    return Live(
        worker_id=settings.worker_id,
        health=health,
        in_flight=processor.held,
        concurrency=settings.concurrency,
        default_instance=settings.evolution_instance,
        instances=instances,
        holds=holds,
    )


@dataclass(frozen=True)
class Features:
    """Which optional sections the schema supports."""

    funnel: bool = False
    spend: bool = False
    budget: bool = False
    pools: bool = False
    sender_table: bool = False
    parts: bool = False

    @classmethod
    def from_columns(cls, columns: set[tuple[str, str]]) -> Features:
        return cls(
            funnel=columns >= FUNNEL_COLUMNS,
            spend=columns >= SPEND_COLUMNS,
            budget=columns >= BUDGET_COLUMNS,
            pools=columns >= POOL_COLUMNS,
            sender_table=columns >= SENDER_TABLE_COLUMNS,
            parts=columns >= PARTS_COLUMNS,
        )


@dataclass
class Snapshot:
    """Everything the page shows, read in one transaction."""

    now: datetime
    features: Features
    campaigns: list[dict[str, Any]]
    waiting: dict[UUID, dict[str, dict[str, Any]]]
    sent_recent: dict[UUID, dict[str, int]]
    queue: dict[str, Any]
    in_flight: list[dict[str, Any]]
    throughput: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    instances: list[dict[str, Any]]
    funnel: dict[UUID, dict[str, int]] = field(default_factory=dict)
    spend: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    budgets: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    pools: dict[UUID, list[str]] = field(default_factory=dict)
    sender_instances: list[dict[str, Any]] = field(default_factory=list)
    instance_sends: dict[str, dict[str, Any]] = field(default_factory=dict)
    live: Live | None = None


#: Postgres' infinite timestamps ('-infinity' is the gap table's default), which datetime lacks.
FOREVER = datetime.max.replace(tzinfo=UTC)
NEVER = datetime.min.replace(tzinfo=UTC)


class _Timestamptz(TimestamptzLoader):
    """Loads `infinity` and `-infinity` as FOREVER and NEVER instead of failing the page."""

    def load(self, data: Any) -> datetime:
        if bytes(data) == b"infinity":
            return FOREVER
        if bytes(data) == b"-infinity":
            return NEVER
        return super().load(data)


class StatusPage:
    """The page's handler: reads a snapshot through `pool` and renders it."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        live: Callable[[], Live | None] = lambda: None,
        timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._live = live
        self._timeout = timeout
        self._features: Features | None = None
        self._features_at = 0.0

    async def handle(self, _: web.Request) -> web.Response:
        try:
            snapshot = await self.snapshot()
        except (psycopg.Error, PoolTimeout) as exc:
            # A migration may have changed the columns since the catalog was read: read it
            # again next time.
            self._features = None
            log.warning(
                "status page: could not read the database: %s",
                exc,
                extra={"action": "status_page_failed"},
            )
            body = render_unavailable(" ".join(str(exc).split()), self._live())
            return web.Response(
                text=body,
                status=503,
                content_type="text/html",
                charset="utf-8",
                headers={"Cache-Control": "no-store", **SECURITY_HEADERS},
            )
        return web.Response(
            text=render(snapshot),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", **SECURITY_HEADERS},
        )

    async def snapshot(self) -> Snapshot:
        async with self._pool.connection(timeout=self._timeout) as conn:
            features = await self._catalog(conn)
            async with conn.transaction():
                cur = conn.cursor(row_factory=dict_row)
                cur.adapters.register_loader("timestamptz", _Timestamptz)
                await cur.execute(q("status_begin"))
                await cur.execute(q("status_timeout"))
                return await _read(cur, features, self._live())

    async def _catalog(self, conn: psycopg.AsyncConnection[Any]) -> Features:
        if self._features is None or time.monotonic() - self._features_at > CATALOG_TTL:
            cur = await conn.execute(q("status_catalog"), {"tables": _CATALOG_TABLES})
            columns = {(str(table), str(column)) for table, column in await cur.fetchall()}
            self._features = Features.from_columns(columns)
            self._features_at = time.monotonic()
        return self._features


async def _rows(
    cur: psycopg.AsyncCursor[dict[str, Any]], name: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    await cur.execute(q(name), params or {})
    return await cur.fetchall()


async def _read(
    cur: psycopg.AsyncCursor[dict[str, Any]], features: Features, live: Live | None
) -> Snapshot:
    queue = (await _rows(cur, "status_queue"))[0]
    campaigns = await _rows(cur, "status_campaigns", {"limit": CAMPAIGN_LIMIT})
    waiting: dict[UUID, dict[str, dict[str, Any]]] = {}
    for row in await _rows(cur, "status_open"):
        waiting.setdefault(row["campaign_id"], {})[row["reason"]] = row
    funnel: dict[UUID, dict[str, Any]] = {}
    if features.funnel:
        funnel = {row["campaign_id"]: row for row in await _rows(cur, "status_funnel")}
        sent_recent = funnel  # the funnel's pass counts them too
    else:
        sent_recent = {row["campaign_id"]: row for row in await _rows(cur, "status_sent_recent")}
    snapshot = Snapshot(
        now=queue["now"],
        features=features,
        campaigns=campaigns,
        waiting=waiting,
        sent_recent=sent_recent,
        queue=queue,
        in_flight=await _rows(cur, "status_in_flight"),
        throughput=await _rows(cur, "status_throughput"),
        failures=await _rows(cur, "status_failures", {"limit": FAILURE_LIMIT}),
        instances=await _rows(cur, "status_instances"),
        funnel=funnel,
        live=live,
    )
    ids = [row["id"] for row in campaigns]
    if features.spend and not features.budget:
        # Without the campaigns' running spend, the last day's, summed from the messages.
        snapshot.spend = {row["campaign_id"]: row for row in await _rows(cur, "status_spend")}
    if features.budget:
        rows = await _rows(cur, "status_budgets", {"ids": ids})
        snapshot.budgets = {row["campaign_id"]: row for row in rows}
    if features.pools:
        rows = await _rows(cur, "status_pools", {"ids": ids})
        snapshot.pools = {row["campaign_id"]: list(row["instances"]) for row in rows}
    if features.sender_table:
        snapshot.sender_instances = await _rows(cur, "status_sender_instances")
    if features.parts:
        names = sorted(_instance_names(snapshot))
        rows = await _rows(cur, "status_instance_sends", {"names": names})
        snapshot.instance_sends = {row["instance"]: row for row in rows}
    return snapshot


def _instance_names(s: Snapshot) -> set[str]:
    """Every sender instance the page knows of: the gap table's, the campaigns' and pools',
    the per-number limits', and those this listener has read (and its default one)."""
    names = {str(row["instance"]) for row in s.instances}
    names.update(str(row["name"]) for row in s.sender_instances)
    names.update(str(c["instance"]) for c in s.campaigns if c["instance"])
    for pool in s.pools.values():
        names.update(pool)
    if s.live is not None:
        names.update(item.name for item in s.live.instances)
        if s.live.default_instance:
            names.add(s.live.default_instance)
    return names


# --------------------------------------------------------------------------------------------
# rendering (pure: a snapshot in, HTML out; every value from the database goes through _e)
# --------------------------------------------------------------------------------------------

#: No script runs and nothing is loaded from elsewhere: say so to the browser too.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: The wait reasons in the order the page lists them; others (from later migrations) follow.
REASON_ORDER = (
    "in flight", "due", "retry", "scheduled", "paused", "window", "cap", "gap",
    "instance down", "instance restricted", "no sender", "budget", "rate limit", "held back",
)  # fmt: skip
_REASON_HELP = {
    "in flight": "being worked on now",
    "due": "due, waiting for a free slot",
    "retry": "failed a try, waiting for the next",
    "scheduled": "scheduled for later",
    "paused": "campaign paused",
    "window": "outside the send window",
    "cap": "today's cap is reached",
    "gap": "waiting for the instance's gap",
    "instance down": "the sender instance is disconnected",
    "instance restricted": "the sender instance is restricted",
    "no sender": "no healthy number in the pool",
    "budget": "the campaign's budget is spent",
    "rate limit": "a provider asked to slow down",
    "held back": "a provider refused (credentials, credits)",
}

_STYLE = """
:root{--fg:#1d2330;--mute:#5d6677;--line:#dfe3ea;--ok:#1f8a4c;--warn:#b7791f;--bad:#c0392b;
--bar:#3b6fd8;--bg:#f6f7f9}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:baseline;padding:.8rem 1.2rem;
background:#fff;border-bottom:1px solid var(--line)}
h1{font-size:1.15rem;margin:0}h2{font-size:1rem;margin:0 0 .6rem}
main{display:grid;gap:1rem;padding:1rem 1.2rem;grid-template-columns:repeat(auto-fit,
minmax(520px,1fr))}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.8rem 1rem;
overflow-x:auto}section.wide{grid-column:1/-1}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;
border-bottom:1px solid var(--line);vertical-align:top}th{font-weight:600;color:var(--mute);
font-size:.8rem;text-transform:uppercase;letter-spacing:.03em}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.mute{color:var(--mute)}.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}
.pill{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:.8rem;
background:#eef1f6;margin:0 .25rem .2rem 0;white-space:nowrap}
.pill.warn{background:#fdf3e1}.pill.bad{background:#fbe7e5}.pill.ok{background:#e5f5ec}
.bar{position:relative;height:.7rem;background:#e8ebf1;border-radius:4px;min-width:8rem;
overflow:hidden}.bar span{position:absolute;inset:0 auto 0 0;background:var(--bar)}
.bar span.f{background:var(--bad)}.bar span.s{background:#9aa3b5}
.stat{display:inline-block;margin-right:1.6rem}.stat b{display:block;font-size:1.35rem}
svg{display:block;width:100%;height:auto}
footer{padding:0 1.2rem 1rem;color:var(--mute);font-size:.8rem}
"""


#: What an empty cell shows.
_NONE = "&ndash;"


def _e(value: object) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def _n(value: int | float | None) -> str:
    return _NONE if value is None else f"{value:,}"


def _ago(now: datetime, then: datetime | None) -> str:
    if then is None or then == NEVER:
        return "never"
    if then == FOREVER:
        return "not until further notice"
    seconds = (now - then).total_seconds()
    return f"{_span(abs(seconds))} ago" if seconds >= 0 else f"in {_span(-seconds)}"


def _span(seconds: float) -> str:
    if seconds < 1:
        return "now" if seconds < 0.5 else "1s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            whole, rest = divmod(int(seconds), size)
            small = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            part = rest // small[1]
            return f"{whole}{unit}" + (f" {part}{small[0]}" if part else "")
    return f"{int(seconds)}s"


def _time(now: datetime, then: datetime | None) -> str:
    """A timestamp as the page shows it: relative, with the UTC time on hover."""
    if then is None:
        return '<span class="mute">&ndash;</span>'
    if then in (NEVER, FOREVER):
        return _e(_ago(now, then))
    iso = then.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return f'<span title="{_e(iso)}">{_e(_ago(now, then))}</span>'


def _mask_text(text: str | None) -> str:
    """A reason as stored, with anything that looks like a phone number masked."""
    return mask_phone_like(text or "")


def _reasons(now: datetime, waits: dict[str, dict[str, Any]]) -> str:
    if not waits:
        return '<span class="mute">nothing queued</span>'
    known = [r for r in REASON_ORDER if r in waits]
    ordered = known + sorted(r for r in waits if r not in REASON_ORDER)
    pills = []
    for reason in ordered:
        row = waits[reason]
        tone = (
            "ok"
            if reason in ("in flight", "due")
            else "mute"
            if reason == "scheduled"
            else "bad"
            if reason in ("instance down", "instance restricted", "no sender", "held back")
            else "warn"
        )
        title = _REASON_HELP.get(reason, reason)
        if reason not in ("in flight", "due") and row["next_at"] is not None:
            title += f"; next {_ago(now, row['next_at'])}"
        pills.append(
            f'<span class="pill {tone}" title="{_e(title)}" data-reason="{_e(reason)}">'
            f"{_e(reason)} <b>{_n(row['count'])}</b></span>"
        )
    return "".join(pills)


def _progress(row: dict[str, Any]) -> str:
    total = int(row["total"])
    if not row["runs"]:
        return '<span class="mute">no runs</span>'
    done = int(row["sent"]) + int(row["failed"]) + int(row["skipped"])
    width = max(total, 1)
    bar = (
        '<div class="bar" role="img" aria-label="'
        + _e(f"{row['sent']} of {total} sent")
        + '">'
        + f'<span style="width:{100 * int(row["sent"]) / width:.2f}%"></span>'
        + f'<span class="f" style="left:{100 * int(row["sent"]) / width:.2f}%;'
        f'width:{100 * int(row["failed"]) / width:.2f}%"></span>'
        + f'<span class="s" style="left:{100 * (done - int(row["skipped"])) / width:.2f}%;'
        f'width:{100 * int(row["skipped"]) / width:.2f}%"></span></div>'
    )
    running = f", {row['running']} running" if row["running"] else ""
    return (
        f'{bar}<span class="progress" data-sent="{int(row["sent"])}" data-total="{total}">'
        f"{_n(int(row['sent']))} / {_n(total)} sent</span>"
        f' <span class="mute">({_n(done)} done: {_n(int(row["failed"]))} failed, '
        f"{_n(int(row['skipped']))} skipped; {row['runs']} runs{running})</span>"
    )


def _pacing(now: datetime, row: dict[str, Any]) -> str:
    bits = []
    if row["send_window_start"] is not None:
        window = f"{row['send_window_start']:%H:%M}-{row['send_window_end']:%H:%M}"
        opens = row["window_opens"]
        state = "open" if opens is not None and opens <= now else f"opens {_ago(now, opens)}"
        bits.append(f"window {_e(window)} {_e(row['send_timezone'])} ({_e(state)})")
    elif row["send_days"] is not None:
        bits.append("days only")
    if row["send_days"] is not None:
        bits.append("days " + _e(",".join(str(d) for d in row["send_days"])))
    if row["gap_min_seconds"] is not None:
        bits.append(f"gap {row['gap_min_seconds']}-{row['gap_max_seconds']}s")
    return "; ".join(bits) if bits else '<span class="mute">unpaced</span>'


def _cap(row: dict[str, Any], sent: dict[str, int] | None) -> str:
    last_day = sent["last_day"] if sent else 0
    if row["daily_cap"] is None:
        return f'{_n(last_day)} <span class="mute">/ no cap (last 24 h)</span>'
    used, cap = int(row["cap_used"] or 0), int(row["daily_cap"])
    tone = "bad" if used >= cap else "warn" if used >= 0.8 * cap else ""
    return (
        f'<span class="cap {tone}" data-used="{used}" data-cap="{cap}">{_n(used)} / {_n(cap)}'
        f'</span> <span class="mute">today ({_e(row["cap_today"])})</span>'
    )


def _campaigns(s: Snapshot) -> str:
    f = s.features
    head = ["campaign", "status", "progress (runs)", "queued, and why", "today / cap", "pacing"]
    if f.pools:
        head.append("pool")
    rows = []
    for c in s.campaigns:
        cid = c["id"]
        status_tone = {"active": "ok", "paused": "warn"}.get(c["status"], "mute")
        instance = ", ".join(s.pools.get(cid, [])) or c["instance"]
        cells = [
            f'<td><b class="name">{_e(c["name"])}</b><br><span class="mute">'
            f"{_e(instance or 'default instance')}</span></td>",
            f'<td class="{status_tone}">{_e(c["status"])}</td>',
            f"<td>{_progress(c)}</td>",
            f"<td>{_reasons(s.now, s.waiting.get(cid, {}))}</td>",
            f"<td>{_cap(c, s.sent_recent.get(cid))}</td>",
            f"<td>{_pacing(s.now, c)}</td>",
        ]
        if f.pools:
            cells.append(f"<td>{_e(', '.join(s.pools.get(cid, []))) or _NONE}</td>")
        rows.append(f'<tr data-campaign="{_e(cid)}">{"".join(cells)}</tr>')
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}" class="mute">no campaigns yet</td></tr>')
    return (
        '<section class="wide" id="campaigns"><h2>Campaigns</h2><table><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _funnel(s: Snapshot) -> str:
    if not s.features.funnel:
        return ""
    names = {c["id"]: c["name"] for c in s.campaigns}
    cols = ("sent", "delivered", "read", "replied", "opted_out", "errors")
    rows = []
    for cid, row in s.funnel.items():
        if cid not in names:
            continue
        sent = max(int(row["sent"]), 1)
        cells = "".join(
            f'<td class="n">{_n(int(row[k]))}'
            + (f' <span class="mute">{100 * int(row[k]) / sent:.0f}%</span>' if k != "sent" else "")
            + "</td>"
            for k in cols
        )
        rows.append(f"<tr><td>{_e(names[cid])}</td>{cells}</tr>")
    if not rows:
        rows.append(f'<tr><td colspan="{len(cols) + 1}" class="mute">nothing sent</td></tr>')
    return (
        '<section id="funnel"><h2>Delivery funnel <span class="mute">(sent in the last 24 h)'
        "</span></h2><table><thead><tr><th>campaign</th>"
        + "".join(f'<th class="n">{_e(k.replace("_", " "))}</th>' for k in cols)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


_NUMERIC = ' class="n"'


def _money(value: object) -> str:
    return _e(f"${float(value):,.4f}")  # type: ignore[arg-type]


def _spend(s: Snapshot) -> str:
    """The LLM's cost per campaign: the running spend against the budget where the campaigns
    keep one, else what the messages sent in the last day cost."""
    if not s.features.spend:
        return ""
    rows = []
    if s.features.budget:
        head = ("campaign", "spent", "budget")
        for c in s.campaigns:
            books = s.budgets.get(c["id"])
            if books is None or (not books["spent_usd"] and books["budget_usd"] is None):
                continue
            spent, budget = float(books["spent_usd"]), books["budget_usd"]
            cell = _NONE
            if budget is not None:
                cell = _e(f"${float(budget):,.4f}")
                if spent >= float(budget):
                    cell = f'<span class="bad">{cell} reached</span>'
            rows.append(
                f'<tr><td>{_e(c["name"])}</td><td class="n">{_e(f"${spent:,.4f}")}</td>'
                f'<td class="n">{cell}</td></tr>'
            )
    else:
        head = ("campaign", "cost, sent in 24 h", "tokens")
        for c in s.campaigns:
            day = s.spend.get(c["id"])
            if day is None:
                continue
            tokens = int(day["prompt_tokens"]) + int(day["completion_tokens"])
            rows.append(
                f"<tr><td>{_e(c['name'])}</td>"
                f'<td class="n">{_money(day["cost_usd"])}</td>'
                f'<td class="n">{_n(tokens)}</td></tr>'
            )
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}" class="mute">no spend recorded</td></tr>')
    return (
        '<section id="spend"><h2>LLM spend</h2><table><thead><tr>'
        + "".join(f"<th{_NUMERIC if i else ''}>{_e(h)}</th>" for i, h in enumerate(head))
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _instances(s: Snapshot) -> str:
    live = s.live
    known: dict[str, dict[str, Any]] = {}
    for row in s.instances:
        known.setdefault(row["instance"], {}).update(gap=row)
    for seen in live.instances if live else ():
        known.setdefault(seen.name, {})["live"] = seen
    for limits in s.sender_instances:
        known.setdefault(limits["name"], {})["limits"] = limits
    default = live.default_instance if live else None
    for name in _instance_names(s):
        known.setdefault(name, {})
    # Messages held per instance: those of campaigns sending through it (or through the
    # default instance) that wait for the instance itself.
    held: dict[str, dict[str, int]] = {}
    for c in s.campaigns:
        instance = c["instance"] or default
        for reason in ("gap", "instance down", "instance restricted"):
            wait = s.waiting.get(c["id"], {}).get(reason)
            if instance and wait:
                bucket = held.setdefault(instance, {})
                bucket[reason] = bucket.get(reason, 0) + int(wait["count"])
    head = ["instance", "state", "next free slot (gap)", "waiting for it"]
    if s.features.parts:
        head.append("sent 1 h / 24 h")
    if s.sender_instances:
        head.append("limits")
    rows = []
    for name in sorted(known):
        info = known[name]
        item: InstanceLive | None = info.get("live")
        if item is None:
            state = '<span class="mute">not checked by this listener</span>'
        elif item.held:
            state = (
                f'<span class="bad held" data-instance="{_e(name)}">held: {_e(item.state)}'
                f'</span> <span class="mute">(read {_e(_ago(s.now, item.checked_at))}; '
                f"checked again {_e(_ago(s.now, item.recheck_at))})</span>"
            )
        else:
            state = (
                f'<span class="{"ok" if item.state == "open" else "mute"}">{_e(item.state)}</span>'
            )
        gap = info.get("gap")
        if gap is None or gap["next_send_at"] is None:
            slot = '<span class="mute">free</span>'
        elif gap["next_send_at"] <= s.now:
            slot = f'free <span class="mute">(last booked {_time(s.now, gap["updated_at"])})</span>'
        else:
            slot = _time(s.now, gap["next_send_at"])
            if gap["refused"] and gap["refused_for"] == gap["next_send_at"]:
                slot += f' <span class="mute">({_n(gap["refused"])} turned away for it)</span>'
        waits = held.get(name, {})
        waiting = (
            "".join(
                f'<span class="pill {"warn" if why == "gap" else "bad"}">{_e(why)} '
                f"<b>{_n(count)}</b></span>"
                for why, count in waits.items()
            )
            or '<span class="mute">&ndash;</span>'
        )
        cells = [f"<td><b>{_e(name)}</b></td>", f"<td>{state}</td>", f"<td>{slot}</td>",
                 f"<td>{waiting}</td>"]  # fmt: skip
        if s.features.parts:
            sends = s.instance_sends.get(name)
            cells.append(
                f'<td class="n sends">{_n(sends["last_hour"] if sends else 0)} / '
                f"{_n(sends['last_day'] if sends else 0)}</td>"
            )
        if s.sender_instances:
            cells.append(f"<td>{_limits(info.get('limits'))}</td>")
        rows.append(f'<tr data-instance="{_e(name)}">{"".join(cells)}</tr>')
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}" class="mute">no sender instance yet</td></tr>')
    holds = ""
    if live and live.holds:
        holds = (
            "<p>"
            + "".join(
                f'<span class="pill bad hold">holding back from {_e(h.provider)} until '
                f"{_time(s.now, h.until)}: {_e(_mask_text(h.reason))}</span>"
                for h in live.holds
            )
            + "</p>"
        )
    return (
        '<section id="instances"><h2>Sender instances</h2>'
        + holds
        + "<table><thead><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _limits(row: dict[str, Any] | None) -> str:
    if row is None:
        return '<span class="mute">no own limits</span>'
    bits = []
    if not row["enabled"]:
        bits.append('<span class="bad">disabled</span>')
    if row["daily_cap"] is not None:
        bits.append(f"{_n(row['daily_cap'])}/day")
    if row["hourly_cap"] is not None:
        bits.append(f"{_n(row['hourly_cap'])}/hour")
    if row["warmup_started_on"] is not None:
        bits.append(f"warming up since {_e(row['warmup_started_on'])}")
    return ", ".join(bits) or '<span class="mute">none</span>'


def _queue(s: Snapshot) -> str:
    q_ = s.queue
    oldest = q_["oldest_due"]
    late = (s.now - oldest).total_seconds() if oldest is not None else 0.0
    tone = "bad" if late > 600 else "warn" if late > 60 else ""
    in_flight = sum(int(row["count"]) for row in s.in_flight)
    sent_hour = sum(int(row["count"]) for row in s.throughput)
    stats = (
        f'<span class="stat">due now<b id="due-now">{_n(q_["due_now"])}</b></span>'
        f'<span class="stat">in flight<b id="in-flight">{_n(in_flight)}</b></span>'
        f'<span class="stat">oldest due<b class="{tone}">{_e(_span(late)) if oldest else _NONE}'
        f"</b></span>"
        f'<span class="stat">sent, last hour<b id="sent-hour">{_n(sent_hour)}</b></span>'
    )
    rows = (
        "".join(
            f'<tr><td>{_e(row["locked_by"])}</td><td class="n">{_n(row["count"])}</td>'
            f"<td>{_time(s.now, row['since'])}</td><td>{_time(s.now, row['lease_until'])}</td></tr>"
            for row in s.in_flight
        )
        or '<tr><td colspan="4" class="mute">nothing in flight</td></tr>'
    )
    me = ""
    if s.live is not None:
        health = s.live.health
        checks = " ".join(
            f'<span class="pill {"ok" if health.get(k) else "bad"}">{k}</span>'
            for k in ("database", "listen", "loop")
        )
        me = (
            f"<p>this listener: <b>{_e(s.live.worker_id)}</b>, {s.live.in_flight} of "
            f"{s.live.concurrency} slots busy {checks}</p>"
        )
    return (
        '<section id="queue"><h2>Queue</h2>'
        + stats
        + me
        + '<table><thead><tr><th>listener (locked_by)</th><th class="n">in flight</th>'
        "<th>oldest claim</th><th>lease until</th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
        + '<h2 style="margin-top:1rem">Sent per minute, last hour</h2>'
        + chart(s.now, s.throughput)
        + "</section>"
    )


def chart(now: datetime, per_minute: Iterable[dict[str, Any]]) -> str:
    """The last hour's sends per minute as an inline SVG bar chart (60 bars, oldest left)."""
    end = now.replace(second=0, microsecond=0)
    counts = {row["minute"]: int(row["count"]) for row in per_minute}
    values = [counts.get(end - timedelta(minutes=59 - i), 0) for i in range(60)]
    top = max(values) or 1
    width, height, pad, head = 600, 130, 18, 16
    bar = width / 60
    bars = []
    for i, value in enumerate(values):
        h = (height - pad - head) * value / top
        minute = end - timedelta(minutes=59 - i)
        bars.append(
            f'<rect x="{i * bar + 0.5:.1f}" y="{height - pad - h:.1f}" width="{bar - 1:.1f}" '
            f'height="{h:.1f}" fill="#3b6fd8"><title>{minute.astimezone():%H:%M}: '
            f"{value}</title></rect>"
        )
    return (
        f'<svg id="throughput" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="messages sent per minute over the last hour, at most {top}" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="0" y1="{height - pad}" x2="{width}" y2="{height - pad}" stroke="#c5cbd6"/>'
        + "".join(bars)
        + f'<text x="0" y="{height - 4}" font-size="11" fill="#5d6677">60 min ago</text>'
        f'<text x="{width}" y="{height - 4}" font-size="11" fill="#5d6677" '
        f'text-anchor="end">now</text>'
        f'<text x="{width}" y="11" font-size="11" fill="#5d6677" text-anchor="end">'
        f"max {top}/min</text></svg>"
    )


def _failures(s: Snapshot) -> str:
    rows = []
    for row in sorted(
        s.failures, key=lambda r: r["updated_at"] or datetime.min.replace(tzinfo=s.now.tzinfo)
    )[::-1]:
        phone = mask_phone(row["phone"]) if row["phone"] else "lead gone"
        tone = "bad" if row["status"] == "failed" else "warn"
        rows.append(
            f"<tr><td>{_time(s.now, row['updated_at'])}</td>"
            f'<td class="{tone}">{_e(row["status"])}</td><td>{_e(row["campaign"])}</td>'
            f'<td class="phone">{_e(phone)}</td><td class="n">{row["attempts"]}</td>'
            f"<td>{_e(_mask_text(row['last_error']))}</td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="6" class="mute">no failures</td></tr>')
    return (
        '<section class="wide" id="failures"><h2>Last failures</h2><table><thead><tr>'
        '<th>when</th><th>state</th><th>campaign</th><th>lead</th><th class="n">tries</th>'
        "<th>reason</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
    )


def _page(title: str, body: str, now: datetime | None) -> str:
    stamp = f"{now.astimezone():%Y-%m-%d %H:%M:%S %Z}" if now else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # No favicon request (a 404 in the browser's console): an empty icon, inline.
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1>listener</h1><span class="mute">status at {_e(stamp)}; refreshes every '
        f"{REFRESH_SECONDS}s</span></header>{body}"
        "<footer>Read-only. Progress counts the messages of campaign runs (kept by the "
        "database); queued counts, today's cap and the last day are read from the queue. "
        "Phone numbers are masked.</footer></body></html>"
    )


def render(s: Snapshot) -> str:
    """The whole page."""
    body = (
        "<main>"
        + _campaigns(s)
        + _queue(s)
        + _instances(s)
        + _funnel(s)
        + _spend(s)
        + _failures(s)
        + "</main>"
    )
    return _page("listener status", body, s.now)


def render_unavailable(reason: str, live: Live | None) -> str:
    """The page when the database does not answer: say so, and what this listener knows."""
    who = f"this listener: {_e(live.worker_id)}; " if live else ""
    body = (
        '<main><section class="wide"><h2 class="bad">Could not read the database</h2>'
        f'<p>{_e(_mask_text(reason))}</p><p class="mute">{who}see /healthz.</p></section></main>'
    )
    return _page("listener status: database unavailable", body, None)
