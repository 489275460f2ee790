"""Pure decisions: settings parsing, the retry ladder, rate-limit backoff, group commit."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from listener.batch import SETTLE_TURNS, GroupCommit
from listener.errors import ConfigurationError
from listener.phones import normalize_phone
from listener.providers.gate import Gate
from listener.queue.retry import after_failure, rate_limit_backoff
from listener.settings import format_duration, load_settings, parse_duration

LADDER = (timedelta(minutes=5), timedelta(minutes=15), timedelta(minutes=30))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5), ("5m", 300), ("1h", 3600), ("2", 2), (" 1.5s ", 1.5)],
)
def test_durations_take_units(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize(
    "text", ["5x", "", "-1s", "m5", "abc", "999999999999h", "87601h", "1" + "0" * 400]
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_design_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTENER_RETRY_DELAYS", "LISTENER_CONCURRENCY", "LISTENER_PART_DELAY_MS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(llm="sandbox", sender="sandbox")
    assert settings.retry_delays == LADDER
    assert settings.max_attempts == 4
    assert settings.concurrency == 5
    assert settings.openrouter_base_url == "https://openrouter.ai/api/v1"
    assert settings.part_delay == timedelta(seconds=1)
    assert settings.max_parts == 5


def test_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTENER_RETRY_DELAYS", "1s, 2s")
    monkeypatch.setenv("LISTENER_PART_DELAY_MS", "250")
    monkeypatch.setenv("LISTENER_CONCURRENCY", "7")
    monkeypatch.setenv("LISTENER_LLM", "sandbox")
    monkeypatch.setenv("LISTENER_SENDER", "sandbox")
    settings = load_settings()
    assert settings.retry_delays == (timedelta(seconds=1), timedelta(seconds=2))
    assert settings.part_delay == timedelta(milliseconds=250)
    monkeypatch.setenv("LISTENER_PART_DELAY_MS", "2s")  # a unit is taken too
    assert load_settings().part_delay == timedelta(seconds=2)
    assert settings.concurrency == 7


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LISTENER_CONCURRENCY": "zero"}, "LISTENER_CONCURRENCY"),
        ({"LISTENER_CONCURRENCY": "0"}, "LISTENER_CONCURRENCY"),
        ({"LISTENER_RETRY_DELAYS": "5m,soon"}, "LISTENER_RETRY_DELAYS"),
        ({"LISTENER_LLM": "gpt"}, "LISTENER_LLM"),
        ({"LISTENER_SENDER": "sandbox", "LISTENER_LLM": "openrouter"}, "OPENROUTER_API_KEY"),
        ({"LISTENER_LLM": "sandbox", "LISTENER_SENDER": "evolution"}, "EVOLUTION_API_URL"),
        ({"LISTENER_LLM": "openrouter", "OPENROUTER_API_KEY": "  "}, "OPENROUTER_API_KEY"),
        (
            {
                "LISTENER_SENDER": "evolution",
                "EVOLUTION_API_URL": "http://evo",
                "EVOLUTION_API_KEY": "",
                "EVOLUTION_INSTANCE": "main",
            },
            "EVOLUTION_API_KEY",
        ),
        ({"LISTENER_PART_DELAY_MS": "abc"}, "LISTENER_PART_DELAY_MS"),
        ({"LISTENER_PART_DELAY_MS": "99999999999999999"}, "LISTENER_PART_DELAY_MS"),
        ({"LISTENER_LEASE": "999999999999h"}, "LISTENER_LEASE"),
        ({"LISTENER_LEASE": "0"}, "LISTENER_LEASE must be at least 1s"),
        ({"LISTENER_LEASE": "500ms"}, "LISTENER_LEASE"),
        ({"LISTENER_POLL_INTERVAL": "0s"}, "LISTENER_POLL_INTERVAL"),
        ({"LISTENER_POLL_INTERVAL": "2h"}, "LISTENER_POLL_INTERVAL"),
        ({"LISTENER_RESCUE_INTERVAL": "0"}, "LISTENER_RESCUE_INTERVAL"),
        ({"LISTENER_SWEEP_INTERVAL": "0ms"}, "LISTENER_SWEEP_INTERVAL"),
        ({"LISTENER_HEALTH_INTERVAL": "0"}, "LISTENER_HEALTH_INTERVAL"),
        ({"LISTENER_SEND_TIMEOUT": "0"}, "LISTENER_SEND_TIMEOUT"),
        ({"LISTENER_WORKER_ID": " "}, "LISTENER_WORKER_ID"),
        (
            {"LISTENER_LLM": "openrouter", "OPENROUTER_API_KEY": "k", "OPENROUTER_BASE_URL": "x"},
            "OPENROUTER_BASE_URL",
        ),
        (
            {
                "LISTENER_LLM": "openrouter",
                "OPENROUTER_API_KEY": "k",
                "OPENROUTER_BASE_URL": "http://[bad",
            },
            "OPENROUTER_BASE_URL",
        ),
        (
            {
                "LISTENER_SENDER": "evolution",
                "EVOLUTION_API_URL": "evo.example.com",
                "EVOLUTION_API_KEY": "k",
                "EVOLUTION_INSTANCE": "main",
            },
            "EVOLUTION_API_URL",
        ),
    ],
)
def test_bad_settings_give_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name in ("OPENROUTER_API_KEY", "EVOLUTION_API_URL", "EVOLUTION_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LISTENER_LLM", "sandbox")
    monkeypatch.setenv("LISTENER_SENDER", "sandbox")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_secrets_never_show_in_a_repr() -> None:
    settings = load_settings(llm="openrouter", sender="sandbox", openrouter_api_key="sk-top")
    assert "sk-top" not in repr(settings) and "sk-top" not in str(settings.model_dump())


def test_every_delay_of_the_ladder_is_used_then_the_message_fails() -> None:
    decisions = [after_failure(n, LADDER, "boom") for n in (1, 2, 3, 4)]
    assert [d.kind for d in decisions] == ["retry", "retry", "retry", "fail"]
    assert [d.delay for d in decisions[:3]] == list(LADDER)
    assert decisions[0].last_error == "attempt 1 failed, retry in 5m: boom"
    assert decisions[3].last_error == "failed after 4 attempts: boom"


def test_no_delays_means_one_try() -> None:
    assert after_failure(1, (), "x").kind == "fail"


def test_rate_limit_backoff_grows_and_is_capped() -> None:
    base, cap = timedelta(seconds=1), timedelta(seconds=10)
    for hits, ceiling in ((1, 1), (2, 2), (3, 4), (10, 10)):
        value = rate_limit_backoff(hits, base, cap).total_seconds()
        assert ceiling / 2 <= value <= ceiling


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+55 (11) 98765-4321", "5511987654321"),
        ("5511987654321", "5511987654321"),
        ("(11) 98765-4321", "5511987654321"),
        ("12-34", None),
        ("", None),
        (None, None),
        ("1" * 16, None),
        ("\u0665\u0665\u0661\u0661\u0669\u0668\u0667\u0666\u0665\u0664\u0663", None),
    ],
)
def test_phone_numbers_are_digits_with_country_code(raw: str | None, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


async def test_group_commit_batches_writes_that_queue_during_a_flush() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> set[object]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return {i for i in items if i % 2 == 0}

    writer: GroupCommit[int] = GroupCommit(flush, key=lambda i: i)
    first = asyncio.create_task(writer.submit(0))
    # The lone write starts its flush within a few turns of the loop, with no timer.
    for _ in range(SETTLE_TURNS + 3):
        await asyncio.sleep(0)
        if calls:
            break
    assert calls == [[0]]
    rest = await asyncio.gather(*(writer.submit(i) for i in range(1, 10)))
    assert [await first, *rest] == [i % 2 == 0 for i in range(10)]
    # The nine writes that arrived during the first flush went together in the second.
    assert calls == [[0], list(range(1, 10))]


async def test_group_commit_gathers_a_cohort_that_arrives_over_a_few_turns() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> set[object]:
        calls.append(items)
        return set(items)

    async def after(turns: int, item: int) -> bool:
        for _ in range(turns):  # steps before the write (a gate, a pacing check)
            await asyncio.sleep(0)
        return await writer.submit(item)

    writer: GroupCommit[int] = GroupCommit(flush, key=lambda i: i)
    # Fifty writes, arriving over four turns of the loop as a claim's messages do.
    results = await asyncio.gather(*(after(i % 4, i) for i in range(50)))
    assert all(results)
    assert calls == [sorted(range(50), key=lambda i: (i % 4, i))]


async def test_group_commit_cancelled_while_gathering_cancels_its_waiters() -> None:
    async def flush(items: list[int]) -> set[object]:
        raise AssertionError("no flush after a cancel")

    writer: GroupCommit[int] = GroupCommit(flush, key=lambda i: i)
    waiters = [asyncio.create_task(writer.submit(i)) for i in range(3)]
    for _ in range(2):  # the writes are queued and the drain is gathering them
        await asyncio.sleep(0)
    assert writer._task is not None
    writer._task.cancel()
    # At once (the bound only stops a hang): every waiter is cancelled, none waits for ever.
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


async def test_group_commit_hands_an_error_to_every_waiter() -> None:
    async def flush(items: list[int]) -> set[object]:
        raise RuntimeError("db down")

    writer: GroupCommit[int] = GroupCommit(flush, key=lambda i: i)
    results = await asyncio.gather(writer.submit(1), writer.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_gate_holds_everyone_until_it_opens() -> None:
    gate = Gate("llm")
    started = time.monotonic()  # before the hold: the hold runs from its own call
    gate.hold(0.05, "429")
    gate.hold(0.01, "429 again")  # never shortens the longer hold
    assert await asyncio.gather(gate.wait(), gate.wait()) == [True, True]
    assert time.monotonic() - started >= 0.05
    assert gate.remaining == 0


async def test_gate_refuses_at_once_a_wait_longer_than_the_caller_allows() -> None:
    gate = Gate("sender")
    gate.hold(3600, "429 for an hour")
    assert await asyncio.wait_for(gate.wait(longest=60), timeout=5) is False
    assert gate.remaining > 3500


@pytest.mark.parametrize(
    ("text", "shown"),
    [("24h", "24h"), ("5m", "5m"), ("1.5s", "1.5s"), ("250ms", "250ms"), ("90s", "90s")],
)
def test_durations_are_shown_as_they_are_written(text: str, shown: str) -> None:
    assert format_duration(parse_duration(text)) == shown


def test_an_unreadable_database_url_is_refused_without_echoing_its_password() -> None:
    from listener.db import check_url

    with pytest.raises(ConfigurationError) as caught:
        check_url("host=localhost password=s3cret pw dbname=x")
    text = str(caught.value)
    assert text.startswith("bad setting DATABASE_URL") and "\n" not in text
    assert "s3cret" not in text and "pw" not in text


def test_choices_take_any_case() -> None:
    settings = load_settings(llm="Sandbox", sender="SANDBOX", log_level="debug", log_format="JSON")
    assert (settings.llm, settings.sender, settings.log_level, settings.log_format) == (
        "sandbox",
        "sandbox",
        "DEBUG",
        "json",
    )


def test_a_call_that_went_through_while_the_gate_is_closed_does_not_end_the_episode() -> None:
    gate = Gate("sender")
    gate.hold(30, "429")
    gate.passed()  # a call already under way came back fine: the hold still stands
    assert gate.episode_hits == 1 and gate.remaining > 0
