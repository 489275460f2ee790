"""What each section of the status page shows, as plain values (counts, tones, phrases, the
chart's geometry) for its template: the decisions of the page, with no markup."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from listener.kinds import KINDS
from listener.phones import mask_stored
from listener.web.format import ago, masked, number, span
from listener.web.live import InstanceLive
from listener.web.snapshot import Snapshot, instance_names

#: The wait reasons in the order the page lists them; others (from later migrations) follow.
REASON_ORDER = (
    "in flight", "due", "retry", "scheduled", "paused", "window", "cap", "gap",
    "instance down", "instance restricted", "unknown to Evolution", "no sender", "budget",
    "rate limit", "held back", "reply unclassified",
)  # fmt: skip
REASON_HELP = {
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
    "unknown to Evolution": "Evolution does not know the instance (a mistyped or deleted name)",
    "no sender": "no healthy number in the pool",
    "budget": "the campaign's budget is spent",
    "rate limit": "a provider asked to slow down",
    "held back": "a provider refused (credentials, credits)",
    "reply unclassified": "the lead's reply is being classified: its kind may stop the message",
}
_BAD_REASONS = (
    "instance down",
    "instance restricted",
    "unknown to Evolution",
    "no sender",
    "held back",
)
#: The funnel's columns, in order.
FUNNEL_COLUMNS = ("sent", "delivered", "read", "replied", "opted_out", "errors")
#: The replies' columns, in order: each kind, those not classified yet, the leads handed off.
REPLY_COLUMNS = (*KINDS, "unclassified", "handed_off")


def _tone(reason: str) -> str:
    if reason in ("in flight", "due"):
        return "ok"
    if reason == "scheduled":
        return "mute"
    return "bad" if reason in _BAD_REASONS else "warn"


def waits(now: datetime, by_reason: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A campaign's queued messages by reason, in the page's order, each with its tone and
    the help its pill shows on hover."""
    known = [r for r in REASON_ORDER if r in by_reason]
    ordered = known + sorted(r for r in by_reason if r not in REASON_ORDER)
    out = []
    for reason in ordered:
        row = by_reason[reason]
        title = REASON_HELP.get(reason, reason)
        if reason not in ("in flight", "due") and row["next_at"] is not None:
            title += f"; next {ago(row['next_at'], now)}"
        out.append({"reason": reason, "count": row["count"], "tone": _tone(reason), "title": title})
    return out


def progress(row: dict[str, Any]) -> dict[str, Any] | None:
    """A campaign's runs: counts and the bar's parts in percent (None: no run)."""
    if not row["runs"]:
        return None
    total = int(row["total"])
    sent, failed, skipped = int(row["sent"]), int(row["failed"]), int(row["skipped"])
    width = max(total, 1)
    return {
        "total": total,
        "sent": sent,
        "failed": failed,
        "skipped": skipped,
        "done": sent + failed + skipped,
        "runs": row["runs"],
        "running": row["running"],
        "sent_pct": round(100 * sent / width, 2),
        "failed_pct": round(100 * failed / width, 2),
        "skipped_pct": round(100 * skipped / width, 2),
        "skipped_at": round(100 * (sent + failed) / width, 2),
    }


def pacing(now: datetime, row: dict[str, Any]) -> list[str]:
    """A campaign's pacing, a phrase per setting (empty: unpaced)."""
    bits = []
    if row["send_window_start"] is not None:
        window = f"{row['send_window_start']:%H:%M}-{row['send_window_end']:%H:%M}"
        opens = row["window_opens"]
        state = "open" if opens is not None and opens <= now else f"opens {ago(opens, now)}"
        bits.append(f"window {window} {row['send_timezone']} ({state})")
    elif row["send_days"] is not None:
        bits.append("days only")
    if row["send_days"] is not None:
        bits.append("days " + ",".join(str(d) for d in row["send_days"]))
    if row["gap_min_seconds"] is not None:
        bits.append(f"gap {row['gap_min_seconds']}-{row['gap_max_seconds']}s")
    return bits


def cap(row: dict[str, Any], sent: dict[str, Any] | None) -> dict[str, Any]:
    """Today's slots against the daily cap, or the last day's sends when there is none."""
    if row["daily_cap"] is None:
        return {"capped": False, "last_day": sent["last_day"] if sent else 0}
    used, limit = int(row["cap_used"] or 0), int(row["daily_cap"])
    tone = "bad" if used >= limit else "warn" if used >= 0.8 * limit else ""
    return {"capped": True, "used": used, "cap": limit, "tone": tone, "today": row["cap_today"]}


def campaign_rows(s: Snapshot) -> list[dict[str, Any]]:
    rows = []
    for c in s.campaigns:
        cid = c["id"]
        pool = s.pools.get(cid, [])
        rows.append(
            {
                "id": cid,
                "name": c["name"],
                "instance": ", ".join(pool) or c["instance"] or "default instance",
                "status": c["status"],
                "status_tone": {"active": "ok", "paused": "warn"}.get(c["status"], "mute"),
                "progress": progress(c),
                "waits": waits(s.now, s.waiting.get(cid, {})),
                "cap": cap(c, s.funnel.get(cid)),
                "pacing": pacing(s.now, c),
                "pool": ", ".join(pool),
            }
        )
    return rows


def funnel_rows(s: Snapshot) -> list[dict[str, Any]]:
    """Per campaign shown, the messages sent in the last day and how far they got (a share
    of those sent)."""
    names = {c["id"]: c["name"] for c in s.campaigns}
    rows = []
    for cid, row in s.funnel.items():
        if cid not in names:
            continue
        sent = max(int(row["sent"]), 1)
        cells = [
            {"value": int(row[k]), "pct": None if k == "sent" else round(100 * int(row[k]) / sent)}
            for k in FUNNEL_COLUMNS
        ]
        rows.append({"name": names[cid], "cells": cells})
    return rows


def reply_rows(s: Snapshot) -> list[dict[str, Any]]:
    """Per campaign shown, the replies received in the last day by kind (each a share of the
    replies), those not classified yet, and the leads handed off to a person."""
    rows = []
    for c in s.campaigns:
        row = s.replies.get(c["id"])
        if row is None:
            continue
        total = max(int(row["replies"]), 1)
        cells = [
            {
                "kind": k,
                "value": int(row[k]),
                "pct": None if k == "handed_off" else round(100 * int(row[k]) / total),
            }
            for k in REPLY_COLUMNS
        ]
        rows.append(
            {"id": c["id"], "name": c["name"], "replies": int(row["replies"]), "cells": cells}
        )
    return rows


def spend_rows(s: Snapshot) -> list[dict[str, Any]]:
    """The LLM's running spend per campaign against its budget (campaigns with neither are
    left out)."""
    rows = []
    for c in s.campaigns:
        books = s.budgets.get(c["id"])
        if books is None or (not books["spent_usd"] and books["budget_usd"] is None):
            continue
        spent, budget = float(books["spent_usd"]), books["budget_usd"]
        rows.append(
            {
                "name": c["name"],
                "spent": spent,
                "budget": budget,
                "reached": budget is not None and spent >= float(budget),
            }
        )
    return rows


def _slot(now: datetime, gap: dict[str, Any] | None) -> dict[str, Any]:
    if gap is None or gap["next_send_at"] is None:
        return {"kind": "free"}
    if gap["next_send_at"] <= now:
        return {"kind": "free", "booked": gap["updated_at"]}
    refused = gap["refused"] if gap["refused"] and gap["refused_for"] == gap["next_send_at"] else 0
    return {"kind": "at", "at": gap["next_send_at"], "refused": refused}


def instance_rows(s: Snapshot) -> list[dict[str, Any]]:
    """Every sender instance the page knows of: what this listener read of it, its next free
    slot, the messages that wait for it, what went through it, its own limits."""
    live = s.live
    known: dict[str, dict[str, Any]] = {name: {} for name in instance_names(s)}
    for row in s.instances:
        known.setdefault(row["instance"], {})["gap"] = row
    for seen in live.instances if live else ():
        known.setdefault(seen.name, {})["live"] = seen
    for limits in s.sender_instances:
        known.setdefault(limits["name"], {})["limits"] = limits
    default = live.default_instance if live else None
    # Messages held per instance: those of campaigns sending through it (or through the
    # default instance) that wait for the instance itself.
    held: dict[str, dict[str, int]] = {}
    for c in s.campaigns:
        instance = c["instance"] or default
        for reason in ("gap", "instance down", "instance restricted", "unknown to Evolution"):
            wait = s.waiting.get(c["id"], {}).get(reason)
            if instance and wait:
                bucket = held.setdefault(instance, {})
                bucket[reason] = bucket.get(reason, 0) + int(wait["count"])
    rows = []
    for name in sorted(known):
        info = known[name]
        item: InstanceLive | None = info.get("live")
        sends = s.instance_sends.get(name)
        rows.append(
            {
                "name": name,
                "live": item,
                "slot": _slot(s.now, info.get("gap")),
                "waits": [
                    {"why": why, "count": count, "tone": "warn" if why == "gap" else "bad"}
                    for why, count in held.get(name, {}).items()
                ],
                "last_hour": sends["last_hour"] if sends else 0,
                "last_day": sends["last_day"] if sends else 0,
                "limits": limit_phrases(info.get("limits")),
            }
        )
    return rows


def limit_phrases(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A number's own limits (`sender_instances`) as phrases; None when it has no row."""
    if row is None:
        return None
    bits = []
    if row["daily_cap"] is not None:
        bits.append(f"{number(row['daily_cap'])}/day")
    if row["hourly_cap"] is not None:
        bits.append(f"{number(row['hourly_cap'])}/hour")
    if row["warmup_started_on"] is not None:
        bits.append(f"warming up since {row['warmup_started_on']}")
    return {"disabled": not row["enabled"], "bits": bits}


def queue_view(s: Snapshot) -> dict[str, Any]:
    oldest = s.queue["oldest_due"]
    late = (s.now - oldest).total_seconds() if oldest is not None else 0.0
    view: dict[str, Any] = {
        "due_now": s.queue["due_now"],
        "in_flight": sum(int(row["count"]) for row in s.in_flight),
        "oldest": span(late) if oldest is not None else None,
        "oldest_tone": "bad" if late > 600 else "warn" if late > 60 else "",
        "sent_hour": sum(int(row["count"]) for row in s.throughput),
        "listeners": s.in_flight,
        "me": None,
    }
    if s.live is not None:
        view["me"] = {
            "worker_id": s.live.worker_id,
            "in_flight": s.live.in_flight,
            "concurrency": s.live.concurrency,
            "checks": [(k, bool(s.live.health.get(k))) for k in ("database", "listen", "loop")],
        }
    return view


def chart_view(now: datetime, per_minute: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The geometry of the last hour's bar chart: 60 bars, oldest left, scaled to the busiest
    minute."""
    end = now.replace(second=0, microsecond=0)
    counts = {row["minute"]: int(row["count"]) for row in per_minute}
    minutes = [end - timedelta(minutes=59 - i) for i in range(60)]
    values = [counts.get(minute, 0) for minute in minutes]
    top = max(values) or 1
    width, height, pad, head = 600, 130, 18, 16
    bar = width / 60
    bars = []
    for i, (minute, value) in enumerate(zip(minutes, values, strict=True)):
        h = (height - pad - head) * value / top
        bars.append(
            {
                "x": f"{i * bar + 0.5:.1f}",
                "y": f"{height - pad - h:.1f}",
                "width": f"{bar - 1:.1f}",
                "height": f"{h:.1f}",
                "label": f"{minute.astimezone():%H:%M}: {value}",
            }
        )
    return {"width": width, "height": height, "base": height - pad, "top": top, "bars": bars}


def dead_letter_view(s: Snapshot) -> dict[str, Any] | None:
    """Webhook events set aside because they could not be applied (None: there are none):
    acknowledged to Evolution and never applied, they need an operator's look."""
    if not s.dead_letters:
        return None
    first = s.dead_letters[0]
    return {
        "total": first["total"],
        "last_day": first["last_day"],
        "rows": [
            {
                "at": row["dead_at"],
                "kind": row["kind"],
                "instance": row["instance"],
                "error": masked(row["error"]),
            }
            for row in s.dead_letters
        ],
    }


def failure_rows(s: Snapshot) -> list[dict[str, Any]]:
    """The newest failures first, the lead's phone masked."""
    oldest = datetime.min.replace(tzinfo=s.now.tzinfo)
    rows = []
    for row in sorted(s.failures, key=lambda r: r["updated_at"] or oldest, reverse=True):
        rows.append(
            {
                "at": row["updated_at"],
                "status": row["status"],
                "tone": "bad" if row["status"] == "failed" else "warn",
                "campaign": row["campaign"],
                "phone": mask_stored(row["phone"], s.region) if row["phone"] else "lead gone",
                "attempts": row["attempts"],
                "reason": masked(row["last_error"]),
            }
        )
    return rows
