"""The figures of `listener stats` over a window: the seed's monitoring figures (its DEPLOY-V8
step 4.2), plus retries, the due backlog, what is waiting, LLM spend, the delivery funnel,
replies by kind, sender numbers and webhook events set aside, read in one transaction
(`collect_stats`) as plain values that also give their JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from listener.commands.oneshot import connection, one
from listener.errors import ConfigurationError
from listener.kinds import KINDS
from listener.queries import q
from listener.settings import DEFAULT_WARMUP

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
