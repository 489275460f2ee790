"""`listener stats`: the seed's monitoring figures over a window (its DEPLOY-V8 step 4.2),
plus retries, the due backlog and what is waiting, and their plain-text tables. The command
line itself is in `listener.commands.cli`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from listener.commands.oneshot import connection, one
from listener.errors import ConfigurationError
from listener.kinds import KINDS
from listener.queries import q
from listener.settings import DEFAULT_WARMUP, format_duration

#: The order statuses are shown in.
STATUS_ORDER = ("pending", "processing", "sent", "failed", "skipped")


@dataclass(frozen=True)
class CampaignSpend:
    """What a campaign's LLM calls cost over the window's messages, and its budget."""

    campaign: str
    campaign_id: UUID
    cost_usd: float
    written: int
    sent: int
    prompt_tokens: int
    completion_tokens: int
    fallback_answers: int
    spent_usd: float
    budget_usd: float | None

    @property
    def per_message(self) -> float | None:
        """Cost per message the LLM wrote."""
        return self.cost_usd / self.written if self.written else None

    @property
    def per_sent(self) -> float | None:
        """Cost per message sent (what was spent on failures included)."""
        return self.cost_usd / self.sent if self.sent else None

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "campaign_id": str(self.campaign_id),
            "cost_usd": self.cost_usd,
            "messages_written": self.written,
            "messages_sent": self.sent,
            "cost_per_message_usd": self.per_message,
            "cost_per_sent_message_usd": self.per_sent,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "fallback_answers": self.fallback_answers,
            "spent_usd": self.spent_usd,
            "budget_usd": self.budget_usd,
        }


@dataclass(frozen=True)
class Funnel:
    """What became of a campaign's messages sent in the window (delivery feedback)."""

    campaign: str
    campaign_id: UUID
    sent: int
    acked: int
    delivered: int
    read: int
    replied: int
    opted_out: int
    errors: int
    median_delivery_seconds: float | None
    median_read_seconds: float | None

    def rate(self, count: int) -> float | None:
        """`count` as a share of the messages sent, in percent."""
        return 100.0 * count / self.sent if self.sent else None

    def as_json(self) -> dict[str, Any]:
        counts = {
            "sent": self.sent,
            "server_acked": self.acked,
            "delivered": self.delivered,
            "read": self.read,
            "replied": self.replied,
            "opted_out": self.opted_out,
            "errors": self.errors,
        }
        return {
            "campaign": self.campaign,
            "campaign_id": str(self.campaign_id),
            **counts,
            "rates_percent": {k: self.rate(v) for k, v in counts.items() if k != "sent"},
            "median_delivery_seconds": self.median_delivery_seconds,
            "median_read_seconds": self.median_read_seconds,
        }


@dataclass(frozen=True)
class ReplyKinds:
    """A campaign's replies received in the window, by kind (replies understood)."""

    campaign: str
    campaign_id: UUID | None
    kinds: dict[str, int]
    unclassified: int
    handed_off: int

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "campaign_id": None if self.campaign_id is None else str(self.campaign_id),
            "kinds": {kind: self.kinds.get(kind, 0) for kind in KINDS},
            "unclassified": self.unclassified,
            "handed_off": self.handed_off,
        }


@dataclass(frozen=True)
class ModelAnswers:
    """A model that answered: for how many messages, how many as a fallback, at what cost."""

    model: str
    messages: int
    fallback_answers: int
    cost_usd: float
    tokens: int


@dataclass(frozen=True)
class SenderNumber:
    """One sender instance (WhatsApp number): today's sends against its caps and warm-up,
    its next free slot, and its state (`open`, `held` with why and until when, `disabled`,
    `capped` until its cap opens again, `unknown`: not held, but nothing says it is connected:
    it has not sent within a day nor been found back after a hold, e.g. a number never used)."""

    instance: str
    state: str
    reason: str | None
    until: datetime | None
    sent_today: int
    day_cap: int | None
    warming_up: bool
    sent_hour: int
    hour_cap: int | None
    next_slot: datetime | None
    sent_last_day: int

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("until", "next_slot"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        return out


def _sender(row: dict[str, Any]) -> SenderNumber:
    if row["held_reason"] is not None:
        state, reason, until = "held", row["held_reason"], row["held_until"]
    elif not row["enabled"]:
        state, reason, until = "disabled", None, None
    elif row["cap_until"] is not None:
        state, reason, until = "capped", "sender cap", row["cap_until"]
    elif row["seen_up"]:
        state, reason, until = "open", None, None
    else:
        state, reason, until = "unknown", None, None
    day_cap = row["day_cap"]
    warming = (
        row["warmup_started_on"] is not None
        and day_cap is not None
        and (row["daily_cap"] is None or day_cap < row["daily_cap"])
    )
    return SenderNumber(
        instance=row["instance"],
        state=state,
        reason=reason,
        until=until,
        sent_today=row["sent_today"] or 0,
        day_cap=day_cap,
        warming_up=warming,
        sent_hour=row["sent_hour"] or 0,
        hour_cap=row["hour_cap"],
        next_slot=row["next_slot"],
        sent_last_day=row["sent_last_day"],
    )


@dataclass(frozen=True)
class DeadLetters:
    """Webhook events set aside because they could not be applied: in the window, in all, and
    the latest few (kind, instance, error, when)."""

    in_window: int
    total: int
    latest: list[tuple[str, str, str, datetime]]

    def as_json(self) -> dict[str, Any]:
        return {
            "in_window": self.in_window,
            "total": self.total,
            "latest": [
                {"kind": kind, "instance": instance, "error": error, "at": at.isoformat()}
                for kind, instance, error, at in self.latest
            ],
        }


@dataclass(frozen=True)
class Stats:
    """The seed's monitoring figures (DEPLOY-V8 step 4.2) over a window, plus retries and the
    due backlog."""

    window: timedelta
    now: datetime
    total_sent: int
    avg_processing_seconds: float | None
    per_minute: list[tuple[datetime, int]]
    by_status: list[tuple[str, int, float]]
    retried: int
    waiting_retry: int
    due_backlog: int
    oldest_due_seconds: float | None
    waiting: list[tuple[str, UUID, str, int, datetime]] = field(default_factory=list)
    spend: list[CampaignSpend] = field(default_factory=list)
    models: list[ModelAnswers] = field(default_factory=list)
    funnel: list[Funnel] = field(default_factory=list)
    senders: list[SenderNumber] = field(default_factory=list)
    dead_letters: DeadLetters = field(default_factory=lambda: DeadLetters(0, 0, []))
    replies: list[ReplyKinds] = field(default_factory=list)

    @property
    def since(self) -> datetime:
        return self.now - self.window

    @property
    def rate_per_minute(self) -> float:
        """Messages sent per minute, averaged over the whole window."""
        minutes = self.window.total_seconds() / 60
        return self.total_sent / minutes if minutes > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """One JSON-ready object: numbers as numbers, times in ISO 8601."""
        return {
            "window_seconds": self.window.total_seconds(),
            "since": self.since.isoformat(),
            "now": self.now.isoformat(),
            "sent": {
                "total": self.total_sent,
                "avg_processing_seconds": self.avg_processing_seconds,
                "per_minute_rate": round(self.rate_per_minute, 3),
                "per_minute": [
                    {"minute": minute.isoformat(), "count": count}
                    for minute, count in self.per_minute
                ],
            },
            "by_status": {
                status: {"count": count, "percentage": percentage}
                for status, count, percentage in self.by_status
            },
            "retries": {"retried": self.retried, "waiting_retry": self.waiting_retry},
            "queue": {
                "due_backlog": self.due_backlog,
                "oldest_due_seconds": self.oldest_due_seconds,
            },
            "waiting": [
                {
                    "campaign": name,
                    "campaign_id": str(campaign_id),
                    "reason": reason,
                    "count": count,
                    "next_at": next_at.isoformat(),
                }
                for name, campaign_id, reason, count, next_at in self.waiting
            ],
            "spend": [spend.as_json() for spend in self.spend],
            "funnel": [f.as_json() for f in self.funnel],
            "replies": [r.as_json() for r in self.replies],
            "senders": [n.as_json() for n in self.senders],
            "webhook_dead_letters": self.dead_letters.as_json(),
            "models": [
                {
                    "model": m.model,
                    "messages": m.messages,
                    "fallback_answers": m.fallback_answers,
                    "cost_usd": m.cost_usd,
                    "tokens": m.tokens,
                }
                for m in self.models
            ],
        }


async def collect_stats(
    url: str,
    window: timedelta,
    *,
    warmup: tuple[int, ...] = DEFAULT_WARMUP,
    default_instance: str | None = None,
) -> Stats:
    """Run the monitoring queries in one transaction, so they share one `now()`. `warmup` and
    `default_instance` (LISTENER_WARMUP, EVOLUTION_INSTANCE) give each number's caps."""
    if window <= timedelta(0):
        raise ConfigurationError("the stats window must be longer than zero")
    params = {"window": window}
    async with connection(url, "stats") as conn, conn.transaction():
        processing = await one(conn, "stats_processing", params)
        minutes = await (await conn.execute(q("stats_per_minute"), params)).fetchall()
        statuses = await (await conn.execute(q("stats_by_status"), params)).fetchall()
        queue = await one(conn, "stats_queue", params)
        waiting = await (await conn.execute(q("stats_waiting"))).fetchall()
        spend = await (await conn.execute(q("stats_spend"), params)).fetchall()
        models = await (await conn.execute(q("stats_models"), params)).fetchall()
        funnel = await (await conn.execute(q("stats_funnel"), params)).fetchall()
        replies = await (await conn.execute(q("stats_replies"), params)).fetchall()
        numbers = await (
            await conn.execute(
                q("stats_senders"),
                {"warmup": list(warmup), "default_instance": default_instance},
            )
        ).fetchall()
        dead = await (
            await conn.execute(q("stats_dead_letters"), {**params, "limit": _DEAD_SHOWN})
        ).fetchall()
    rank = {status: index for index, status in enumerate(STATUS_ORDER)}
    by_status = sorted(
        ((row["status"], row["count"], row["percentage"]) for row in statuses),
        key=lambda item: (rank.get(item[0], len(rank)), item[0]),
    )
    return Stats(
        window=window,
        now=processing["now"],
        total_sent=processing["total_messages"],
        avg_processing_seconds=processing["avg_processing_seconds"],
        per_minute=[(row["minute"], row["messages_per_minute"]) for row in minutes],
        by_status=by_status,
        retried=queue["retried"],
        waiting_retry=queue["waiting_retry"],
        due_backlog=queue["due_backlog"],
        oldest_due_seconds=queue["oldest_due_seconds"],
        waiting=[
            (r["campaign"], r["campaign_id"], r["reason"], r["count"], r["next_at"])
            for r in waiting
        ],
        spend=[CampaignSpend(**row) for row in spend],
        models=[ModelAnswers(**row) for row in models],
        funnel=[Funnel(**row) for row in funnel],
        senders=[_sender(row) for row in numbers],
        dead_letters=DeadLetters(
            in_window=dead[0]["in_window"] if dead else 0,
            total=dead[0]["total"] if dead else 0,
            latest=[(r["kind"], r["instance"], r["error"], r["dead_at"]) for r in dead],
        ),
        replies=[
            ReplyKinds(
                campaign=row["campaign"] or "(no message of ours)",
                campaign_id=row["campaign_id"],
                kinds=dict(row["kinds"] or {}),
                unclassified=row["unclassified"],
                handed_off=row["handed_off"],
            )
            for row in replies
        ],
    )


#: The latest webhook events set aside shown (the table keeps them all).
_DEAD_SHOWN = 5

#: Per-minute rows shown to people; --json has them all.
_MAX_MINUTES = 15


def _table(rows: Sequence[Sequence[str]], *, indent: str = "  ") -> list[str]:
    """Rows aligned in columns: the first column to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _usd(value: float | None, *, places: int = 6) -> str:
    return "-" if value is None else f"${value:,.{places}f}"


def _minute(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")


def _count(funnel: Funnel, count: int) -> str:
    rate = funnel.rate(count)
    return str(count) if rate is None else f"{count} ({rate:.0f}%)"


def _reply_rows(replies: list[ReplyKinds]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("campaign", *(k.replace("_", " ") for k in KINDS), "unclassified", "handed off")
    ]
    for r in replies:
        counts = (str(r.kinds.get(kind, 0)) for kind in KINDS)
        rows.append((r.campaign, *counts, str(r.unclassified), str(r.handed_off)))
    return rows


def _funnel_rows(funnels: list[Funnel]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        (
            "campaign",
            "sent",
            "acked",
            "delivered",
            "read",
            "replied",
            "opted out",
            "errors",
            "to delivery",
            "to read",
        )
    ]
    for f in funnels:
        rows.append(
            (
                f.campaign,
                str(f.sent),
                *(
                    _count(f, n)
                    for n in (f.acked, f.delivered, f.read, f.replied, f.opted_out, f.errors)
                ),
                _seconds(f.median_delivery_seconds),
                _seconds(f.median_read_seconds),
            )
        )
    return rows


def _sender_rows(numbers: list[SenderNumber]) -> list[tuple[str, ...]]:
    def cap(sent: int, limit: int | None) -> str:
        return f"{sent}/{limit}" if limit is not None else str(sent)

    def when(value: datetime | None) -> str:
        return value.isoformat(timespec="seconds") if value is not None else "-"

    rows: list[tuple[str, ...]] = [
        ("number", "state", "today/cap", "hour/cap", "next free slot", "until")
    ]
    for n in numbers:
        state = n.state if n.reason is None else f"{n.state} ({n.reason})"
        today = cap(n.sent_today, n.day_cap) + (" warm-up" if n.warming_up else "")
        rows.append(
            (
                n.instance,
                state,
                today,
                cap(n.sent_hour, n.hour_cap),
                when(n.next_slot),
                when(n.until),
            )
        )
    return rows


def render(figures: Stats) -> str:
    """The stats as plain-text tables for people."""
    window = format_duration(figures.window)
    lines = [f"last {window} (since {figures.since.isoformat(timespec='seconds')})", ""]
    lines += _table(
        [
            ("sent", str(figures.total_sent)),
            ("average processing time", _seconds(figures.avg_processing_seconds)),
            ("rate over the window", f"{figures.rate_per_minute:.2f} per minute"),
        ],
        indent="",
    )
    lines += ["", "messages per minute (newest first)"]
    if figures.per_minute:
        shown = figures.per_minute[:_MAX_MINUTES]
        lines += _table([("minute", "sent"), *((_minute(m), str(n)) for m, n in shown)])
        if len(figures.per_minute) > len(shown):
            lines.append(f"  ... {len(figures.per_minute) - len(shown)} more (see --json)")
    else:
        lines.append("  none sent")
    lines += ["", "share by status (messages created in the window)"]
    if figures.by_status:
        total = sum(count for _, count, _ in figures.by_status)
        rows = [("status", "count", "percent")]
        rows += [(s, str(n), f"{p:.2f}") for s, n, p in figures.by_status]
        rows.append(("total", str(total), "100.00"))
        lines += _table(rows)
    else:
        lines.append("  none created")
    lines += [""]
    lines += _table(
        [
            ("retried (created in the window, attempts > 1)", str(figures.retried)),
            ("waiting for a retry (pending with an error)", str(figures.waiting_retry)),
            ("due now (backlog)", str(figures.due_backlog)),
            ("oldest due message waiting for", _seconds(figures.oldest_due_seconds)),
        ],
        indent="",
    )
    lines += ["", "waiting, per campaign and why"]
    if figures.waiting:
        waiting = [("campaign", "why", "count", "next at")]
        waiting += [
            (name, reason, str(count), next_at.isoformat(timespec="seconds"))
            for name, _, reason, count, next_at in figures.waiting
        ]
        lines += _table(waiting)
    else:
        lines.append("  nothing pending")
    lines += ["", "delivery funnel per campaign (messages sent in the window)"]
    if figures.funnel:
        lines += _table(_funnel_rows(figures.funnel))
    else:
        lines.append("  none sent")
    lines += ["", "replies per campaign by kind (received in the window)"]
    if figures.replies:
        lines += _table(_reply_rows(figures.replies))
    else:
        lines.append("  none")
    lines += ["", "sender numbers (today: the day of their campaigns' time zone)"]
    if figures.senders:
        lines += _table(_sender_rows(figures.senders))
    else:
        lines.append("  none")
    dead = figures.dead_letters
    lines += [
        "",
        f"webhook events set aside (webhook_dead_letters): {dead.in_window} in the window,"
        f" {dead.total} in all",
    ]
    if dead.latest:
        dead_rows = [("set aside at", "kind", "instance", "error")]
        dead_rows += [
            (at.isoformat(timespec="seconds"), kind, instance, " ".join(error.split())[:100])
            for kind, instance, error, at in dead.latest
        ]
        lines += _table(dead_rows)
    lines += ["", "LLM spend per campaign (messages created in the window)"]
    if figures.spend:
        spend = [
            ("campaign", "cost", "per message", "per sent", "tokens", "fallback", "spent", "budget")
        ]
        spend += [
            (
                s.campaign,
                _usd(s.cost_usd),
                _usd(s.per_message),
                _usd(s.per_sent),
                str(s.prompt_tokens + s.completion_tokens),
                f"{s.fallback_answers}/{s.written}",
                _usd(s.spent_usd),
                _usd(s.budget_usd, places=2),
            )
            for s in figures.spend
        ]
        lines += _table(spend)
    else:
        lines.append("  no LLM spend")
    lines += ["", "models that answered (messages created in the window)"]
    if figures.models:
        models = [("model", "messages", "as fallback", "cost", "tokens")]
        models += [
            (m.model, str(m.messages), str(m.fallback_answers), _usd(m.cost_usd), str(m.tokens))
            for m in figures.models
        ]
        lines += _table(models)
    else:
        lines.append("  none")
    return "\n".join(lines)
