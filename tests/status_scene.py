"""A database scene for the status page's tests, the counts it should show (read back with plain
SQL, independently of the page's queries) and a reader of the page's marked-up figures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape
from typing import Any
from uuid import UUID

import psycopg

from listener.testing import FakeProviders, http_settings
from tests.helpers import make_campaign, make_leads, make_run

#: User input that must come out as text, never as markup.
HOSTILE_NAME = 'Black Friday <script>alert("x")</script> & <b>co</b>'
PHONE_PREFIX = "55119"


@dataclass(frozen=True)
class Scene:
    hostile: UUID
    paused: UUID
    held: UUID
    phones: list[str]


def held_instance_settings(fakes: FakeProviders, port: int) -> dict[str, Any]:
    """The listener's settings for a status page on 127.0.0.1:`port` whose instances the fake
    Evolution reports closed, checked once (an hour's TTL) so the page shows them held."""
    fakes.state = "close"
    return {
        **http_settings(fakes),
        "metrics_port": port,
        "metrics_host": "127.0.0.1",
        "instance_check_ttl": "1h",
        "instance_recheck": "1h",
    }


def arrange(db: psycopg.Connection[Any], *, held_instance: str = "acme-2") -> Scene:
    """Three campaigns: one with every kind of row (a hostile name, a run, a cap), a paused one,
    and one on `held_instance` with due rows. Nothing in it is due on an open instance, so a
    running listener leaves it as it is (apart from the held instance's rows)."""
    hostile = make_campaign(db, name=HOSTILE_NAME, instance="acme-1", daily_cap=10)
    paused = make_campaign(db, name="Outubro pausado", instance="acme-1")
    held = make_campaign(db, name="Campanha retida", instance=held_instance)
    run = make_run(db, hostile)
    leads = make_leads(db, 20, prefix=PHONE_PREFIX)
    phones = [
        str(row[0]) for row in db.execute("SELECT phone FROM leads ORDER BY phone").fetchall()
    ]

    def add(campaign: UUID, lead_index: int, **cols: Any) -> None:
        values = {"campaign_id": campaign, "lead_id": leads[lead_index], **cols}
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        db.execute(
            f"INSERT INTO campaign_messages ({names}) VALUES ({marks})",  # type: ignore[arg-type]
            list(values.values()),
        )

    for i in range(5):  # sent, in the last hour, holding today's cap slots
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, run_id, status, attempts, "
            "parts_sent, sent_at, updated_at, cap_day, scheduled_at) "
            "VALUES (%s, %s, %s, 'sent', 1, 1, now() - make_interval(mins => %s), now(), "
            "(now() AT TIME ZONE 'America/Sao_Paulo')::date, now() - interval '2 hours')",
            (hostile, leads[i], run, i * 5),
        )
    for i in (5, 6):
        add(
            hostile,
            i,
            run_id=run,
            status="failed",
            attempts=4,
            last_error=f"number {phones[i]} is not on WhatsApp",
        )
    add(hostile, 7, run_id=run, status="skipped", last_error="skipped: the lead opted out")
    for i in (8, 9):  # outside the send window until tomorrow
        db.execute(
            "INSERT INTO campaign_messages (campaign_id, lead_id, run_id, wait_reason, "
            "scheduled_at) VALUES (%s, %s, %s, 'window', now() + interval '20 hours')",
            (hostile, leads[i], run),
        )
    db.execute(  # waiting for its next try
        "INSERT INTO campaign_messages (campaign_id, lead_id, run_id, attempts, last_error, "
        "scheduled_at, updated_at) VALUES (%s, %s, %s, 1, 'sender 503: try again', "
        "now() + interval '20 hours', now())",
        (hostile, leads[10], run),
    )
    for i in (11, 12):  # in flight on another listener
        add(
            hostile,
            i,
            run_id=run,
            status="processing",
            locked_by="other-host:42:abc",
            locked_until="infinity",
            started_at="now",
            attempts=1,
        )
    for i in (13, 14, 15):
        add(paused, i)
    db.execute("UPDATE campaigns SET status = 'paused' WHERE id = %s", (paused,))
    for i in (16, 17):
        add(held, i)
    db.execute(
        "INSERT INTO listener_instances (instance, next_send_at, updated_at) "
        "VALUES ('acme-1', now() + interval '10 minutes', now())"
    )
    return Scene(hostile=hostile, paused=paused, held=held, phones=phones)


def expected(db: psycopg.Connection[Any]) -> dict[str, Any]:
    """What the page should say, from the rows themselves."""
    waits: dict[str, dict[str, int]] = {}
    for campaign, reason, count in db.execute(
        "SELECT m.campaign_id::text, CASE WHEN m.status = 'processing' THEN 'in flight' "
        "WHEN c.status = 'paused' THEN 'paused' WHEN m.wait_reason IS NOT NULL THEN "
        "m.wait_reason WHEN m.last_error IS NOT NULL THEN 'retry' WHEN m.scheduled_at > now() "
        "THEN 'scheduled' ELSE 'due' END, count(*) FROM campaign_messages m "
        "JOIN campaigns c ON c.id = m.campaign_id "
        "WHERE m.status IN ('pending', 'processing') GROUP BY 1, 2"
    ).fetchall():
        waits.setdefault(campaign, {})[reason] = count
    runs = {
        str(campaign): (sent, total)
        for campaign, sent, total in db.execute(
            "SELECT m.campaign_id, count(*) FILTER (WHERE m.status = 'sent'), count(*) "
            "FROM campaign_messages m WHERE m.run_id IS NOT NULL GROUP BY 1"
        ).fetchall()
    }
    row = db.execute(
        "SELECT count(*) FILTER (WHERE status = 'pending' AND scheduled_at <= now() "
        "AND wait_reason IS DISTINCT FROM 'paused'), count(*) FILTER (WHERE status = "
        "'processing'), count(*) FILTER (WHERE status = 'sent' AND sent_at > now() - "
        "interval '1 hour') FROM campaign_messages"
    ).fetchone()
    assert row is not None
    return {"waits": waits, "runs": runs, "due": row[0], "in_flight": row[1], "sent_hour": row[2]}


def _row(page: str, attribute: str, value: str) -> str:
    match = re.search(rf'<tr {attribute}="{re.escape(value)}">(.*?)</tr>', page, re.S)
    assert match is not None, f"no row with {attribute}={value}"
    return match.group(1)


def shown(page: str, campaign: UUID) -> dict[str, Any]:
    """The figures the page shows for one campaign: its wait reasons and its runs' progress."""
    row = _row(page, "data-campaign", str(campaign))
    waits = {
        unescape(reason): int(count.replace(",", ""))
        for reason, count in re.findall(r'data-reason="([^"]+)">[^<]*<b>([\d,]+)</b>', row)
    }
    progress = re.search(r'class="progress" data-sent="(\d+)" data-total="(\d+)"', row)
    return {
        "waits": waits,
        "runs": (int(progress.group(1)), int(progress.group(2))) if progress else None,
    }


def figure(page: str, element_id: str) -> int:
    match = re.search(rf'id="{element_id}">([\d,]+)<', page)
    assert match is not None, f"no figure {element_id}"
    return int(match.group(1).replace(",", ""))


def instance_row(page: str, name: str) -> str:
    return _row(page, "data-instance", name)
