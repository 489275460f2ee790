"""Campaign pacing that needs the database's atomicity (send windows, daily caps, gaps per
sender instance; the SQL lives in migrations/functions/) and the cached health of each sender
instance.

A message that may not go now is never failed or skipped for it: it goes back to `pending`,
its attempt refunded, due when it may go, with `wait_reason` saying why. It holds no slot of
the window meanwhile, so other campaigns and instances keep flowing."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import phonenumbers
from phonenumbers import timezone as phone_timezone

from listener.errors import InstanceMissingError, ProviderError

log = logging.getLogger(__name__)


def phone_zones(digits: str) -> list[str]:
    """The time zones a phone number (digits with the country code) may be in, from the
    `phonenumbers` package's data: one for most Brazilian area codes (68: Rio Branco, 92:
    Manaus); every zone of its country when it cannot place the area (a window must then be
    open in all of them); none when not even the country can be told (the campaign's
    default zone is used then)."""
    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return []
    known = _known_zones()
    zones = [z for z in phone_timezone.time_zones_for_number(number) if z in known]
    if not zones:
        # The country's zones (the package's own fallback, typed in its stubs).
        country = phone_timezone._country_level_time_zones_for_number(number)
        zones = [z for z in country if z in known]
    return sorted(set(zones))


@functools.cache
def _known_zones() -> frozenset[str]:
    """The IANA zones this Python knows (phonenumbers' "Etc/Unknown" is not one)."""
    return frozenset(zoneinfo.available_timezones())


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
    seconds, and one call per instance at a time: callers that miss the cache while a call is
    on its way wait for that call's answer (a batch of 100 messages for a closed number asks
    once, not 100 times). A state check that fails says nothing (the send itself will tell);
    only a state other than `open` holds the instance's messages. Logged once per episode."""

    def __init__(self, check: Callable[[str], Awaitable[str]], ttl: float) -> None:
        self._check = check
        self._ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}
        self._down: set[str] = set()
        # Holds with their own end (monotonic): a number WhatsApp restricts while it still
        # says `open` (delivery feedback). After the hold, the state is asked again.
        self._holds: dict[str, tuple[str, float]] = {}
        # The state call on its way per instance, shared by every caller that misses the cache
        # meanwhile; dropped when it ends, or when what is known changes (`forget`, `mark`,
        # `hold`: a call begun before is not trusted by later callers, nor written to the cache).
        self._reading: dict[str, asyncio.Future[str]] = {}

    def fresh(self, instance: str) -> str | None:
        """What `state` answers now without a call (a hold, or the cache within its ttl), else
        None (ask `state`): the common case, without a coroutine per message. A hold that has
        ended is forgotten here, with what was cached under it."""
        now = time.monotonic()
        held = self._holds.get(instance)
        if held is not None:
            if now < held[1]:
                return held[0]
            del self._holds[instance]
            self._cache.pop(instance, None)
        cached = self._cache.get(instance)
        return cached[0] if cached is not None and now - cached[1] < self._ttl else None

    async def state(self, instance: str) -> str:
        if (known := self.fresh(instance)) is not None:
            return known
        now = time.monotonic()
        reading = self._reading.get(instance)
        if reading is None:
            reading = asyncio.ensure_future(self._read(instance, now))
            self._reading[instance] = reading
            reading.add_done_callback(lambda done: self._read_done(instance, done))
        # Shielded: a caller that is cancelled (its message's lease lost, a stop) does not
        # cancel the call the others wait for.
        return await asyncio.shield(reading)

    async def _read(self, instance: str, now: float) -> str:
        """Ask the provider once; the answer goes to the cache unless what is known changed
        while it was on its way."""
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
        if self._reading.get(instance) is asyncio.current_task():
            self._cache[instance] = (state, now)
            self._note(instance, state)
        return state

    def _read_done(self, instance: str, done: asyncio.Future[str]) -> None:
        if self._reading.get(instance) is done:
            del self._reading[instance]
        if not done.cancelled():
            done.exception()  # retrieved: an error reaches the callers, not the loop's log

    def held_until(self, instance: str) -> float | None:
        """When the instance's hold ends (monotonic), while it is held."""
        held = self._holds.get(instance)
        return held[1] if held is not None and held[1] > time.monotonic() else None

    def read_at(self, instance: str) -> float | None:
        """When (monotonic) the instance's cached state was read."""
        cached = self._cache.get(instance)
        return None if cached is None else cached[1]

    def forget(self, instance: str) -> None:
        """Drop the cached state (not a timed hold): the next `state` asks the provider (a
        call already on its way is not waited for: it began before)."""
        self._cache.pop(instance, None)
        self._reading.pop(instance, None)

    def known(self) -> dict[str, tuple[str, float]]:
        """Each instance's last state and when it was read (monotonic), for the status page."""
        return dict(self._cache)

    @property
    def ttl(self) -> float:
        return self._ttl

    async def is_down(self, instance: str) -> bool:
        return await self.state(instance) not in ("open", "unknown")

    def wait_reason(self, instance: str) -> str:
        """Why a held instance's messages wait: restricted by WhatsApp, unknown to Evolution
        (its 404: a mistyped name, a deleted instance), or not connected."""
        cached = self._cache.get(instance)
        state = cached[0] if cached is not None else ""
        if state.startswith("restricted"):
            return "instance restricted"
        return "unknown to Evolution" if state == "missing" else "instance down"

    def hold(self, instance: str, state: str, seconds: float) -> bool:
        """Hold the instance in `state` for `seconds`, whatever its connection says; False
        when it is already held so."""
        now = time.monotonic()
        held = self._holds.get(instance)
        if held is not None and now < held[1]:
            return False
        self._holds[instance] = (state, now + seconds)
        self._cache[instance] = (state, now)
        self._reading.pop(instance, None)
        self._note(instance, state)
        return True

    def mark(self, instance: str, state: str) -> None:
        """What a send found out (e.g. `missing`), held for `ttl` like a state check's."""
        self._cache[instance] = (state, time.monotonic())
        self._reading.pop(instance, None)
        self._note(instance, state)

    def _note(self, instance: str, state: str) -> None:
        down = state not in ("open", "unknown")
        if down and instance not in self._down:
            self._down.add(instance)
            log.error(
                "sender instance %s is %s: holding its messages until it reconnects",
                instance,
                "unknown to Evolution (404: a mistyped name or a deleted instance)"
                if state == "missing"
                else state,
                extra={"action": "instance_down", "instance": instance, "state": state},
            )
        elif not down and instance in self._down:
            self._down.discard(instance)
            log.info(
                "sender instance %s is open again",
                instance,
                extra={"action": "instance_up", "instance": instance},
            )
