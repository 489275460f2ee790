"""This listener's own state for the status page: what the database does not hold (its health,
its busy slots, the sender numbers it read, the providers it holds back from). Plain values;
`page.live_state` reads them from the running processor."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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
