"""docs/design.md's failure table, as the pure `outcome()` decides it: no Postgres, no HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from listener.errors import (
    DataRefusedError,
    EmptyReplyError,
    HoldBackError,
    InstanceMissingError,
    PermanentProviderError,
    RateLimitedError,
    TransientProviderError,
    UncertainDeliveryError,
)
from listener.flow import GateClosed, MustWait, Stop, StopBetweenParts, Wait
from listener.jobs import Job
from listener.queue.outcomes import check_start, outcome
from listener.queue.split import ReplyTooLong, UnsplittableReply
from listener.settings import Settings, load_settings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def settings() -> Settings:
    return load_settings(llm="sandbox", sender="sandbox", retry_delays="5m,15m,30m", hold="10m")


def job(**fields: object) -> Job:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "campaign_id": uuid.uuid4(),
        "lead_id": uuid.uuid4(),
        "attempts": 1,
        "content": None,
        "parts": None,
        "parts_sent": 0,
        "scheduled_at": NOW,
        "campaign_prompt": None,
        "campaign_model": None,
        "campaign_instance": None,
        "campaign_status": "active",
        "context": {"phone": "+55 11 98765-4321", "opted_out": False},
    }
    values.update(fields)
    return Job.of(**values)


def test_429_spends_nothing_and_waits_for_the_retry_after() -> None:
    error = RateLimitedError("slow down", provider="evolution", status=429, retry_after=120)
    result = outcome(error, job(), settings(), NOW)
    assert result.name == "held"
    assert result.finish.status == "pending" and result.finish.refund == 1
    assert result.finish.scheduled_at == NOW + timedelta(seconds=120)
    assert result.finish.wait_reason == "rate limit"


def test_a_refusal_holds_back_for_the_hold_setting_and_spends_nothing() -> None:
    error = HoldBackError("bad key", provider="openrouter", status=401)
    result = outcome(error, job(), settings(), NOW)
    assert (result.finish.refund, result.finish.wait_reason) == (1, "held back")
    assert result.finish.scheduled_at == NOW + timedelta(minutes=10)


def test_a_closed_gate_hands_the_message_back_until_it_opens() -> None:
    result = outcome(GateClosed(3600, "sender rate limit"), job(parts_sent=1), settings(), NOW)
    assert result.name == "held" and result.finish.refund == 1
    assert result.finish.scheduled_at == NOW + timedelta(hours=1)


def test_an_unknown_instance_defers_the_message_without_spending() -> None:
    error = InstanceMissingError("no such instance", provider="evolution", status=404)
    result = outcome(error, job(), settings(), NOW)
    assert result.name == "deferred"
    assert (result.finish.status, result.finish.refund) == ("pending", 1)
    assert result.finish.wait_reason == "unknown to Evolution"  # a 404, not a closed number
    assert result.finish.scheduled_at == NOW + settings().instance_recheck


def test_pacing_defers_to_when_the_message_may_go() -> None:
    wait = Wait(NOW + timedelta(hours=9), "window")
    result = outcome(MustWait(wait), job(), settings(), NOW)
    assert (result.finish.scheduled_at, result.finish.wait_reason) == (wait.until, "window")
    assert result.finish.refund == 1


def test_a_stop_between_parts_hands_back_due_as_it_was() -> None:
    result = outcome(StopBetweenParts(), job(parts_sent=2), settings(), NOW)
    assert result.name == "handed back"
    assert result.finish == result.finish.__class__(result.finish.id, "pending", None, 1, None)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (EmptyReplyError("empty", provider="openrouter"), "empty reply"),
        (UnsplittableReply("nothing"), "has no text to send"),
        (ReplyTooLong("reply", 9000, 5, 1000), "cannot be sent"),
        (PermanentProviderError("not on WhatsApp", provider="evolution"), "not on WhatsApp"),
        (DataRefusedError("the database refused this message's data: x"), "database refused"),
    ],
)
def test_errors_that_cannot_heal_fail_at_once(error: BaseException, reason: str) -> None:
    result = outcome(error, job(attempts=1), settings(), NOW)
    assert result.name == "failed" and result.finish.status == "failed"
    assert result.finish.refund == 0
    assert reason in (result.finish.last_error or "")


def test_transient_errors_take_every_step_of_the_retry_ladder() -> None:
    error = TransientProviderError("HTTP 502", provider="openrouter", status=502)
    delays = [5, 15, 30]
    for attempt, minutes in enumerate(delays, start=1):
        result = outcome(error, job(attempts=attempt), settings(), NOW)
        assert result.name == "retry" and result.finish.refund == 0
        assert result.finish.scheduled_at == NOW + timedelta(minutes=minutes)
    last = outcome(error, job(attempts=4), settings(), NOW)
    assert last.name == "failed"
    assert "failed after 4 attempts" in (last.finish.last_error or "")


def test_an_unanswered_send_is_retried_once_then_fails_saying_it_may_have_arrived() -> None:
    error = UncertainDeliveryError("timed out", provider="evolution")
    first = outcome(error, job(uncertain_sends=1), settings(), NOW)
    assert first.name == "retry"
    second = outcome(error, job(uncertain_sends=2, parts=["a", "b"], parts_sent=1), settings(), NOW)
    assert second.name == "failed"
    assert "part 2 of 2 may have been delivered" in (second.finish.last_error or "")


def test_a_bug_is_an_unexpected_error_on_the_retry_ladder() -> None:
    result = outcome(KeyError("choices"), job(), settings(), NOW)
    assert result.name == "retry"
    assert "unexpected error: KeyError" in (result.finish.last_error or "")


@pytest.mark.parametrize(
    ("fields", "status", "reason"),
    [
        ({"campaign_status": "archived"}, "skipped", "archived"),
        ({"context": None}, "failed", "does not exist"),
        ({"context": {"phone": "5511987654321", "opted_out": True}}, "skipped", "opted out"),
        ({"context": {"phone": "12-34"}}, "failed", "invalid phone number"),
    ],
)
def test_messages_that_can_never_go_are_stopped_before_any_call(
    fields: dict[str, object], status: str, reason: str
) -> None:
    with pytest.raises(Stop) as caught:
        check_start(job(**fields), "BR")
    result = outcome(caught.value, job(**fields), settings(), NOW)
    assert (result.name, result.finish.status) == (status, status)
    assert reason in (result.finish.last_error or "")


def test_the_number_is_normalized_for_the_sender() -> None:
    assert check_start(job(), "BR") == "5511987654321"
