"""The user's rows in an adopted `campaign_messages`: whether a CHECK of theirs on `status`
lets the listener write each of its statuses (`user_checks`), and what becomes of the rows
the old system left behind (`rows_left_behind`: counted, made due, their tries and errors
copied, the ones left `processing` looked up on Evolution before anything is sent)."""

from __future__ import annotations

from typing import Any, LiteralString, cast

import psycopg

from listener.commands.adoption.catalog import Catalog
from listener.commands.adoption.steps import Plan, Step

#: What the listener writes to `campaign_messages.status`.
STATUSES = ("pending", "processing", "sent", "failed", "skipped")

#: The try count a copied `retry_count` is capped at: a row the Edge Function had retried keeps
#: at least its last try (the listener tries a message at most 4 times).
_MOST_COPIED_TRIES = 3


async def user_checks(conn: psycopg.AsyncConnection[Any], catalog: Catalog, result: Plan) -> None:
    """A CHECK of the user's on `campaign_messages.status` must let the listener write each of
    its statuses: evaluated here on the statuses themselves, before anything changes."""
    table = catalog.tables.get("campaign_messages")
    if table is None or "campaign_messages" not in result.tables:
        return
    if "status" not in table.columns:
        result.conflicts.append(
            "campaign_messages.status is missing; the listener needs it (text: pending,"
            " processing, sent, failed, skipped) to tell your sent rows from the ones to send"
        )
        return
    values = ", ".join(f"('{s}'::text)" for s in STATUSES)
    for constraint in table.constraints:
        if constraint["kind"] != "c" or list(constraint["cols"]) != ["status"]:
            continue
        query = (
            f"SELECT string_agg(status, ', ') AS refused FROM (VALUES {values}) AS v(status)"
            f" WHERE ({constraint['expr']}) IS FALSE"
        )
        row = await (await conn.execute(cast(LiteralString, query))).fetchone()  # type: ignore[redundant-cast]
        if row is not None and row["refused"]:
            result.conflicts.append(
                f"campaign_messages.status: your CHECK {constraint['name']} refuses"
                f" {row['refused']}; the listener needs to write pending, processing, sent,"
                " failed and skipped"
            )


async def rows_left_behind(
    conn: psycopg.AsyncConnection[Any], theirs: Catalog, result: Plan
) -> None:
    """What becomes of the rows the old system left in campaign_messages."""

    def _data_step(table: str, what: str, sql: str) -> Step:
        return Step(table, what, sql, phase=1)

    table = theirs.tables.get("campaign_messages")
    if table is None or "campaign_messages" not in result.tables or "status" not in table.columns:
        return
    cols = table.columns
    rows = await (
        await conn.execute(
            "SELECT status, count(*) AS n FROM public.campaign_messages GROUP BY status"
            " ORDER BY status"
        )
    ).fetchall()
    counts = {row["status"]: int(row["n"]) for row in rows}
    for status, n in counts.items():
        if status not in STATUSES:
            result.notes.append(
                f"campaign_messages: {n} row(s) with status {status!r}, which the listener"
                " does not know: left alone (set them to 'pending' to have them sent)"
            )
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    result.notes.append(f"campaign_messages: rows left behind: {summary}")
    if "scheduled_at" in cols and not cols["scheduled_at"]["not_null"]:
        result.steps.append(
            _data_step(
                "campaign_messages",
                "makes pending rows without a due time due when they were created",
                "UPDATE public.campaign_messages SET scheduled_at = "
                + ("COALESCE(created_at, now())" if "created_at" in cols else "now()")
                + " WHERE status = 'pending' AND scheduled_at IS NULL",
            )
        )
    if (
        "retry_count" in cols
        and "attempts" not in cols
        and cols["retry_count"]["base"]
        in (
            "int2",
            "int4",
            "int8",
        )
    ):
        result.steps.append(
            _data_step(
                "campaign_messages",
                "copies retry_count into attempts once, for rows not finished (the listener"
                " counts tries in attempts; retry_count is left as it is)",
                f"UPDATE public.campaign_messages SET attempts = LEAST(retry_count,"
                f" {_MOST_COPIED_TRIES}) WHERE status IN ('pending', 'processing')"
                " AND retry_count > 0",
            )
        )
    if "error_message" in cols and "last_error" not in cols:
        result.steps.append(
            _data_step(
                "campaign_messages",
                "copies error_message into last_error once (replay and stats show it;"
                " error_message is left as it is)",
                "UPDATE public.campaign_messages SET last_error = error_message"
                " WHERE error_message IS NOT NULL",
            )
        )
    touched = [c for c in ("updated_at", "scheduled_at", "created_at") if c in cols]
    since = f"COALESCE({', '.join(touched)}, now())" if touched else "now()"
    result.steps.append(
        _data_step(
            "campaign_messages",
            "rows left processing by the Edge Function: pending, to be looked up on Evolution"
            " (findMessages since the row was last touched) before anything is sent",
            "UPDATE public.campaign_messages SET status = 'pending', scheduled_at = now(),"
            f" look_up_since = {since} - interval '1 minute',"
            " last_error = 'left processing by the Edge Function: looked up before it is sent'"
            " WHERE status = 'processing' AND locked_by IS NULL",
        )
    )
