"""Campaign pacing that needs the database's atomicity (send windows, daily caps, gaps per
sender instance; the SQL lives in migrations/0003_pacing.sql) and the
cached health of each sender instance.

A message that may not go now is never failed or skipped for it: it goes back to `pending`,
its attempt refunded, due when it may go, with `wait_reason` saying why. It holds no slot of
the window meanwhile, so other campaigns and instances keep flowing."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from listener.errors import InstanceMissingError, ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Wait:
    """The message may not go now: come back at `until`, because of `reason`."""

    until: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class PickedSender:
    """listener_pick_sender's answer: the number (None: none available), whether the message
    may go (at `slot_at`), else until when it waits and why."""

    instance: str | None
    go: bool
    slot_at: datetime | None
    wait_until: datetime | None
    reason: str | None


class InstanceHealth:
    """Each sender instance's connection state, asked of the provider at most once per `ttl`
    seconds. A state check that fails says nothing (the send itself will tell); only a state
    other than `open` holds the instance's messages. Logged once per episode."""

    def __init__(self, check: Callable[[str], Awaitable[str]], ttl: float) -> None:
        self._check = check
        self._ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}
        self._down: set[str] = set()
        # Holds with their own end (monotonic): a number WhatsApp restricts while it still
        # says `open` (delivery feedback). After the hold, the state is asked again.
        self._holds: dict[str, tuple[str, float]] = {}

    async def state(self, instance: str) -> str:
        now = time.monotonic()
        held = self._holds.get(instance)
        if held is not None:
            if now < held[1]:
                return held[0]
            del self._holds[instance]
            self._cache.pop(instance, None)
        cached = self._cache.get(instance)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        try:
            state = await self._check(instance)
        except InstanceMissingError:
            state = "missing"
        except ProviderError as exc:
            log.warning(
                "could not read the state of instance %s: %s",
                instance,
                exc,
                extra={"action": "instance_state_unknown", "instance": instance},
            )
            state = "unknown"
        self._cache[instance] = (state, now)
        self._note(instance, state)
        return state

    def held_until(self, instance: str) -> float | None:
        """When the instance's hold ends (monotonic), while it is held."""
        held = self._holds.get(instance)
        return held[1] if held is not None and held[1] > time.monotonic() else None

    def read_at(self, instance: str) -> float | None:
        """When (monotonic) the instance's cached state was read."""
        cached = self._cache.get(instance)
        return None if cached is None else cached[1]

    def forget(self, instance: str) -> None:
        """Drop the cached state (not a timed hold): the next `state` asks the provider."""
        self._cache.pop(instance, None)

    def known(self) -> dict[str, tuple[str, float]]:
        """Each instance's last state and when it was read (monotonic), for the status page."""
        return dict(self._cache)

    @property
    def ttl(self) -> float:
        return self._ttl

    async def is_down(self, instance: str) -> bool:
        return await self.state(instance) not in ("open", "unknown")

    def wait_reason(self, instance: str) -> str:
        """Why a held instance's messages wait: restricted by WhatsApp, or not connected."""
        cached = self._cache.get(instance)
        restricted = cached is not None and cached[0].startswith("restricted")
        return "instance restricted" if restricted else "instance down"

    def hold(self, instance: str, state: str, seconds: float) -> bool:
        """Hold the instance in `state` for `seconds`, whatever its connection says; False
        when it is already held so."""
        now = time.monotonic()
        held = self._holds.get(instance)
        if held is not None and now < held[1]:
            return False
        self._holds[instance] = (state, now + seconds)
        self._cache[instance] = (state, now)
        self._note(instance, state)
        return True

    def mark(self, instance: str, state: str) -> None:
        """What a send found out (e.g. `missing`), held for `ttl` like a state check's."""
        self._cache[instance] = (state, time.monotonic())
        self._note(instance, state)

    def _note(self, instance: str, state: str) -> None:
        down = state not in ("open", "unknown")
        if down and instance not in self._down:
            self._down.add(instance)
            log.error(
                "sender instance %s is %s: holding its messages until it reconnects",
                instance,
                state,
                extra={"action": "instance_down", "instance": instance, "state": state},
            )
        elif not down and instance in self._down:
            self._down.discard(instance)
            log.info(
                "sender instance %s is open again",
                instance,
                extra={"action": "instance_up", "instance": instance},
            )
