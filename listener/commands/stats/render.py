"""The figures of `listener stats` as plain-text tables for people (`--json` prints
`Stats.as_json()` instead)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from listener.commands.stats.figures import Funnel, ReplyKinds, SenderNumber, Stats
from listener.kinds import KINDS
from listener.settings import format_duration

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
