"""A hold on one provider, shared by every message in flight: when a provider says "slow
down" (429) or "I refuse" (credentials, credits), the whole listener waits instead of five
workers hammering it. An episode runs from the first refusal to the next call that goes
through, however many holds it takes; it is logged once when it starts and once when it ends."""

from __future__ import annotations

import asyncio
import logging
import math
import time

log = logging.getLogger(__name__)


class Gate:
    """Open unless held; `hold` extends the closed period, `wait` sleeps until it opens."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._until = 0.0
        self.episode_hits = 0
        self._reason = ""

    @property
    def remaining(self) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self._until - time.monotonic())

    @property
    def reason(self) -> str:
        return self._reason if self.remaining > 0 else ""

    def hold(self, seconds: float, reason: str, *, loud: bool = False) -> None:
        """Close the gate for `seconds` from now (never shortening a longer hold)."""
        now = time.monotonic()
        starting = self.episode_hits == 0
        self.episode_hits += 1
        self._until = max(self._until, now + seconds)
        self._reason = reason
        if starting or loud:
            level = logging.ERROR if loud else logging.WARNING
            log.log(
                level,
                "holding back from %s for %.1fs: %s",
                self.name,
                seconds,
                reason,
                extra={"action": "provider_hold", "provider": self.name, "seconds": seconds},
            )

    async def wait(self, *, longest: float = math.inf) -> bool:
        """Return True once the gate is open, or False as soon as it would stay closed for
        longer than `longest` seconds (a caller not willing to wait that long)."""
        while (remaining := self.remaining) > 0:
            if remaining > longest:
                return False
            await asyncio.sleep(remaining)  # a hold may be extended meanwhile: look again
        return True

    def passed(self) -> None:
        """A call went through: the episode, if there was one, is over (logged once). A call
        that was already under way when another was refused does not end it."""
        if self.episode_hits and self.remaining <= 0:
            self.episode_hits = 0
            log.info(
                "%s hold is over",
                self.name,
                extra={"action": "provider_hold_over", "provider": self.name},
            )
