"""What the status page shows, as one snapshot of plain values (read by `read`, shown by
`render`), and the limits of what it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from listener.phones import DEFAULT_REGION
from listener.web.live import Live

#: Campaigns shown at most (those with queued messages first).
CAMPAIGN_LIMIT = 50
#: Failed and retrying messages shown, each.
FAILURE_LIMIT = 10
#: Webhook events set aside (webhook_dead_letters) shown, newest first.
DEAD_LETTER_LIMIT = 5

#: Postgres' infinite timestamps ('-infinity' is the gap table's default), which datetime lacks.
FOREVER = datetime.max.replace(tzinfo=UTC)
NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass
class Snapshot:
    """Everything the page shows, read in one transaction."""

    now: datetime
    campaigns: list[dict[str, Any]]
    waiting: dict[UUID, dict[str, dict[str, Any]]]
    queue: dict[str, Any]
    in_flight: list[dict[str, Any]]
    throughput: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    instances: list[dict[str, Any]]
    #: Per campaign, the messages sent in the last day: counts, and how far they got.
    funnel: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    #: Per campaign, the replies received in the last day by kind (and those unclassified,
    #: and the leads handed off).
    replies: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    budgets: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    pools: dict[UUID, list[str]] = field(default_factory=dict)
    sender_instances: list[dict[str, Any]] = field(default_factory=list)
    instance_sends: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The newest webhook events set aside, each with the counts in all and in the last day.
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    live: Live | None = None
    #: The region a stored phone without a country code is read in (LISTENER_DEFAULT_REGION).
    region: str = DEFAULT_REGION


def instance_names(s: Snapshot) -> set[str]:
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
