"""Pure decisions about failures: when a message is tried again, when it gives up, and how
long the whole listener holds back from a provider that asked it to slow down."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from listener.settings import format_duration

Kind = Literal["retry", "fail"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What becomes of a message whose attempt failed."""

    kind: Kind
    delay: timedelta | None
    last_error: str


def after_failure(attempts: int, delays: tuple[timedelta, ...], error: str) -> RetryDecision:
    """`attempts` tries have been made (the failed one included). The message is tried again
    after `delays[attempts - 1]` while such a delay exists, so every delay is used once and the
    total is len(delays) + 1 tries; then it fails with the reason."""
    if 1 <= attempts <= len(delays):
        delay = delays[attempts - 1]
        return RetryDecision(
            "retry", delay, f"attempt {attempts} failed, retry in {format_duration(delay)}: {error}"
        )
    return RetryDecision("fail", None, f"failed after {attempts} attempts: {error}")


def rate_limit_backoff(episode_hits: int, base: timedelta, cap: timedelta) -> timedelta:
    """How long to hold when a 429 came without Retry-After: exponential in the number of
    429s in this episode, with full jitter, capped."""
    exponent = min(max(episode_hits - 1, 0), 16)
    ceiling = min(base.total_seconds() * (2**exponent), cap.total_seconds())
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))
