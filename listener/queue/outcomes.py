"""Pure: what becomes of a message that did not end `sent`. docs/design.md's failure table as one
function, `outcome(error, job, settings, now)`, with no I/O: the processor applies the answer.

| what happened                              | the message                                     |
| ------------------------------------------ | ----------------------------------------------- |
| 429, a provider hold longer than a minute  | back to pending when it ends, attempt refunded  |
| 401/403/402 (credentials, credits)         | back to pending after the hold, refunded        |
| pacing says not now, an instance down,     | back to pending when it may go, refunded        |
|   the campaign's budget is spent           |   (a budget: until it is raised)                |
| the shutdown's grace is over               | back to pending, due as it was, refunded        |
| empty or unsplittable reply, not on        | failed at once, with the reason                 |
|   WhatsApp, data Postgres refuses          |                                                 |
| a send with no answer, the second time     | failed: the part may have been delivered        |
| anything else (5xx, timeouts, a bug)       | the retry ladder: pending later, or failed      |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from listener.errors import (
    DataRefusedError,
    EmptyReplyError,
    HoldBackError,
    InstanceClosedError,
    InstanceMissingError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    UncertainDeliveryError,
)
from listener.flow import GateClosed, MustWait, Stop, StopBetweenParts, Wait
from listener.jobs import Finish, Job
from listener.phones import BadPhone, fixed_line_note, parse_phone
from listener.queue.retry import after_failure
from listener.queue.split import UnsplittableReply
from listener.settings import Settings

# A part whose send got no answer may have been delivered; it is sent at most this many times.
MAX_UNCERTAIN_SENDS = 2

# A message held by its campaign's budget is woken when the budget is raised (a trigger); it
# also looks again after this long, in case its spend was lowered by hand.
BUDGET_RECHECK = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The write that ends this attempt, and its name for metrics and logs."""

    name: str  # "retry", "failed", "skipped", "deferred", "held", "handed back"
    finish: Finish


def check_start(job: Job, region: str) -> str:
    """The number to send to (international digits, national numbers read in `region`), or
    Stop when the message can never go."""
    ctx: dict[str, Any] | None = job.plan.context
    if job.claim.campaign_status == "archived":
        raise Stop("skipped", "skipped: the campaign is archived")
    if ctx is None:
        raise Stop("failed", f"lead {job.claim.lead_id} does not exist")
    if ctx.get("opted_out"):
        raise Stop("skipped", "skipped: the lead opted out")
    try:
        return parse_phone(ctx.get("phone"), region).digits
    except BadPhone as exc:
        raise Stop("failed", str(exc)) from None


def budget_wait(job: Job, now: datetime) -> Wait | None:
    """A message that needs the LLM waits, spending no attempt, while its campaign's spend (as
    it was at the claim) has reached the campaign's budget."""
    if job.claim.campaign_budget is None or job.claim.campaign_spent < job.claim.campaign_budget:
        return None
    return Wait(now + BUDGET_RECHECK, "budget")


def outcome(error: BaseException, job: Job, settings: Settings, now: datetime) -> Outcome:
    """What the message becomes after `error` ended its attempt."""
    if isinstance(error, Stop):
        return _end(job, error.status, error.reason)
    if isinstance(error, StopBetweenParts):
        return Outcome("handed back", Finish(job.id, "pending", None, 1, None))
    if isinstance(error, MustWait):
        return _defer(job, error.wait)
    if isinstance(error, InstanceMissingError):
        # Evolution's 404 (a mistyped name, a deleted instance) is not a disconnected number.
        closed = isinstance(error, InstanceClosedError)
        reason = "instance down" if closed else "unknown to Evolution"
        return _defer(job, Wait(now + settings.instance_recheck, reason))
    if isinstance(error, GateClosed):
        return _hold(job, now, error.seconds, error.reason, "held back")
    if isinstance(error, RateLimitedError | HoldBackError):
        seconds = error.retry_after or settings.hold.total_seconds()
        note = f"held back by {error.provider} (HTTP {error.status}): {error}"
        reason = "rate limit" if isinstance(error, RateLimitedError) else "held back"
        return _hold(job, now, seconds, note, reason)
    if isinstance(error, EmptyReplyError):
        return _end(job, "failed", f"the LLM gave an empty reply after retries: {error}")
    if isinstance(error, UnsplittableReply):
        what = (
            "the content"
            if job.claim.content is not None and job.claim.content.strip()
            else "the LLM reply"
        )
        why = "has no text to send" if type(error) is UnsplittableReply else "cannot be sent"
        return _end(job, "failed", f"{what} {why}: {error}")
    if isinstance(error, PermanentProviderError):
        note = fixed_line_note((job.plan.context or {}).get("phone"), settings.default_region)
        return _end(job, "failed", f"{error.provider}: {error}{note}")
    if (
        isinstance(error, UncertainDeliveryError)
        and job.plan.uncertain_sends >= MAX_UNCERTAIN_SENDS
    ):
        parts = len(job.plan.parts or ())
        label = f"part {job.plan.parts_sent + 1}" + (f" of {parts}" if parts else "")
        return _end(
            job,
            "failed",
            f"{error.provider}: {label} may have been delivered: its send got no answer "
            f"{job.plan.uncertain_sends} times, so it is not sent again ({error})",
        )
    if isinstance(error, DataRefusedError):
        return _end(job, "failed", str(error))
    if isinstance(error, ProviderError):
        return _retry_or_fail(job, now, settings, f"{error.provider}: {error}")
    return _retry_or_fail(job, now, settings, f"unexpected error: {type(error).__name__}: {error}")


def _end(job: Job, status: str, reason: str) -> Outcome:
    return Outcome(status, Finish(job.id, status, None, 0, reason))


def _defer(job: Job, wait: Wait) -> Outcome:
    return Outcome("deferred", Finish(job.id, "pending", wait.until, 1, None, wait.reason))


def _hold(job: Job, now: datetime, seconds: float, note: str, reason: str) -> Outcome:
    when = now + timedelta(seconds=max(seconds, 0.0))
    return Outcome("held", Finish(job.id, "pending", when, 1, note, reason))


def _retry_or_fail(job: Job, now: datetime, settings: Settings, error: str) -> Outcome:
    decision = after_failure(job.claim.attempts, settings.retry_delays, error)
    if decision.kind == "retry" and decision.delay is not None:
        finish = Finish(job.id, "pending", now + decision.delay, 0, decision.last_error)
        return Outcome("retry", finish)
    return _end(job, "failed", decision.last_error)
