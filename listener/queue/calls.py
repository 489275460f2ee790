"""How a provider call is made: through that provider's gate, shared by every message in
flight. A rate limit holds the whole listener and is waited out in place (spending nothing)
when short; a longer one is raised to the message, and a message that finds the gate closed
for longer is handed back (GateClosed), so no message sits `processing` through a long hold."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from listener.errors import HoldBackError, ProviderError, RateLimitedError
from listener.flow import GateClosed, MustWait, Wait
from listener.metrics import Metrics
from listener.providers.gate import Gate
from listener.queue.retry import rate_limit_backoff
from listener.settings import Settings

T = TypeVar("T")

# Rate-limit waits up to this long are slept through in place (the message keeps its slot and
# its lease); longer ones hand the message back to the queue for when the hold ends.
MAX_IN_PLACE_WAIT = 60.0


class ProviderCalls:
    """The gates of the LLM and the sender, and the policy of a call through them."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.llm = Gate("llm")
        self.sender = Gate("sender")

    async def call(
        self,
        gate: Gate,
        call: Callable[[], Awaitable[T]],
        *,
        check: Callable[[], None],
        before: Callable[[], Awaitable[Wait | None]] | None = None,
    ) -> T:
        """One call through `gate`. `check` runs before each try (it raises when the message
        may no longer go on); `before` too, and a wait it returns defers the message."""
        provider = gate.name
        while True:
            if gate.remaining > 0 and not await gate.wait(longest=MAX_IN_PLACE_WAIT):
                raise GateClosed(gate.remaining, gate.reason)
            check()
            if before is not None and (wait := await before()) is not None:
                raise MustWait(wait)
            started = time.monotonic()
            try:
                result = await call()
            except RateLimitedError as exc:
                self._observe(provider, started, exc)
                seconds = exc.retry_after
                if seconds is None or seconds <= 0:
                    # No usable Retry-After (missing, 0, a date already past): back off
                    # exponentially over the episode rather than ask again at once.
                    seconds = rate_limit_backoff(
                        gate.episode_hits + 1,
                        self.settings.rate_limit_base,
                        timedelta(seconds=MAX_IN_PLACE_WAIT),
                    ).total_seconds()
                gate.hold(seconds, f"{provider} rate limit (HTTP {exc.status})")
                self.metrics.holds.labels(provider=provider, kind="rate_limit").inc()
                if seconds > MAX_IN_PLACE_WAIT:
                    exc.retry_after = seconds
                    raise
                continue
            except HoldBackError as exc:
                self._observe(provider, started, exc)
                seconds = exc.retry_after or self.settings.hold.total_seconds()
                gate.hold(seconds, f"{provider} refused: {exc}", loud=True)
                self.metrics.holds.labels(provider=provider, kind="hold_back").inc()
                exc.retry_after = seconds
                raise
            except ProviderError as exc:
                self._observe(provider, started, exc)
                raise
            self._observe(provider, started, None)
            gate.passed()
            return result

    def _observe(self, provider: str, started: float, error: ProviderError | None) -> None:
        self.metrics.provider_latency(provider).observe(time.monotonic() - started)
        if error is not None:
            status = str(error.status or 0)
            self.metrics.provider_errors.labels(provider=provider, status=status).inc()
