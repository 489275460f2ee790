"""The control flow of a message's journey, as exceptions: what a step raises to say the message
waits (MustWait), cannot go (Stop), stops between its parts (StopBetweenParts) or is handed back
because a provider holds everyone (GateClosed). Raised by the queue and pacing, decided on by
`queue.outcomes`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Wait:
    """The message may not go now: come back at `until`, because of `reason`."""

    until: datetime
    reason: str


class StopBetweenParts(Exception):
    """The shutdown's grace period is over: the message stops before its next part."""


class GateClosed(Exception):
    """A provider holds the whole listener back for longer than is worth waiting in place."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds
        self.reason = reason


class MustWait(Exception):
    """Pacing says the message may not go now (a window, a cap, a gap, its instance)."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(wait.reason)
        self.wait = wait


class Stop(Exception):
    """The message cannot go, for a reason known before any provider call."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
