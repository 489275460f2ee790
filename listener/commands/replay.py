"""`listener replay`: put failed (and, if asked, skipped) messages back in the queue, and the
lines the command prints about it. The command line itself is in `listener.commands.cli`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg

from listener.commands.oneshot import connection
from listener.errors import ConfigurationError
from listener.queries import q
from listener.settings import format_duration

#: Statuses a replay takes back into the queue; every other one is refused.
REPLAYABLE = ("failed", "skipped")


@dataclass(frozen=True)
class ReplayFilter:
    """Which messages a replay takes back. Empty filters match everything, which is only
    allowed with `everything` (`--all`), so a bare `listener replay` cannot re-queue it all."""

    campaign_id: UUID | None = None
    run_id: UUID | None = None
    ids: tuple[UUID, ...] = ()
    since: timedelta | None = None
    include_skipped: bool = False
    everything: bool = False

    @property
    def statuses(self) -> tuple[str, ...]:
        return REPLAYABLE if self.include_skipped else ("failed",)

    @property
    def filtered(self) -> bool:
        return bool(self.campaign_id or self.run_id or self.ids or self.since)

    def check(self) -> None:
        """Refuse a replay without any filter unless `everything` says it is meant."""
        if not self.filtered and not self.everything:
            raise ConfigurationError(
                "refusing to re-queue without a filter: give --campaign, --run, --id or "
                "--since, or --all to re-queue every failed message"
            )

    def describe(self) -> str:
        """One line saying what the replay takes back, for the operator to check."""
        what = " and ".join(self.statuses) + " messages"
        conditions = []
        if self.campaign_id:
            conditions.append(f"of campaign {self.campaign_id}")
        if self.run_id:
            conditions.append(f"of run {self.run_id}")
        if self.ids:
            conditions.append(f"among {len(self.ids)} named id(s)")
        if self.since:
            conditions.append(f"that last changed in the last {format_duration(self.since)}")
        if not conditions:
            conditions.append("(all of them)")
        return f"re-queue {what} {', '.join(conditions)}"

    def params(self) -> dict[str, Any]:
        return {
            "statuses": list(self.statuses),
            "campaign_id": self.campaign_id,
            "run_id": self.run_id,
            "ids": list(self.ids) or None,
            "since": self.since,
        }


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did (or, in a dry run, would do)."""

    dry_run: bool
    by_status: dict[str, int]
    #: Named ids left alone, with their status (processing, sent, pending, or skipped
    #: without --include-skipped).
    refused: list[tuple[UUID, str]] = field(default_factory=list)
    #: Named ids with no such message.
    missing: list[UUID] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.by_status.values())


async def replay(url: str, filters: ReplayFilter, *, dry_run: bool = False) -> ReplayResult:
    """Re-queue the messages `filters` selects: pending, due now, attempts back to 0, error
    cleared, stored text and accepted parts kept. The update trigger wakes running listeners."""
    filters.check()
    params = filters.params()
    async with connection(url, "replay") as conn, conn.transaction():
        refused: list[tuple[UUID, str]] = []
        missing: list[UUID] = []
        if filters.ids:
            found = await message_statuses(conn, list(filters.ids))
            for message_id in filters.ids:
                status = found.get(message_id)
                if status is None:
                    missing.append(message_id)
                elif status not in filters.statuses:
                    refused.append((message_id, status))
        by_status = await requeue(conn, params, dry_run=dry_run)
    return ReplayResult(dry_run=dry_run, by_status=by_status, refused=refused, missing=missing)


def report(result: ReplayResult, *, include_skipped: bool) -> Iterator[str]:
    """The lines `listener replay` prints after its plan: refusals, then the count."""
    for message_id, status in result.refused:
        if status == "skipped" and not include_skipped:
            why = "add --include-skipped to re-queue skipped messages"
        else:
            why = "only failed and skipped messages are re-queued"
        yield f"refused {message_id}: it is {status} ({why})"
    for message_id in result.missing:
        yield f"not found {message_id}: no such message"
    verb = "would re-queue" if result.dry_run else "re-queued"
    noun = "message" if result.count == 1 else "messages"
    line = f"{verb} {result.count} {noun}"
    if len(result.by_status) > 1:
        line += " (" + ", ".join(f"{s} {n}" for s, n in sorted(result.by_status.items())) + ")"
    yield line


async def message_statuses(conn: psycopg.AsyncConnection[Any], ids: list[UUID]) -> dict[UUID, str]:
    """The status of each message named (absent: no such message)."""
    cur = await conn.execute(q("replay_named"), {"ids": ids})
    return {row["id"]: row["status"] for row in await cur.fetchall()}


async def requeue(
    conn: psycopg.AsyncConnection[Any], params: dict[str, Any], *, dry_run: bool
) -> dict[str, int]:
    """Put the messages the filters select back in the queue, due now with every attempt back
    (or, with `dry_run`, count them); returns the counts by the status they had."""
    cur = await conn.execute(q("replay_preview" if dry_run else "replay_requeue"), params)
    return {row["status"]: row["n"] for row in await cur.fetchall()}
