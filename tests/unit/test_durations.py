"""One duration formatter: every place that shows a duration spells it the same way, and the
spelling reads back as a setting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from listener.commands.replay import ReplayFilter
from listener.queue.retry import after_failure
from listener.settings import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (timedelta(seconds=5400), "90m"),
        (timedelta(hours=24), "24h"),
        (timedelta(hours=25), "25h"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(seconds=61), "61s"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(milliseconds=10), "10ms"),
        (timedelta(microseconds=500), "0.5ms"),
        (timedelta(0), "0s"),
        (timedelta(days=3650), "87600h"),
    ],
)
def test_a_duration_is_shown_in_its_largest_exact_unit(value: timedelta, shown: str) -> None:
    assert format_duration(value) == shown


@pytest.mark.parametrize(
    "value",
    [
        timedelta(seconds=5400),
        timedelta(seconds=90061),
        timedelta(milliseconds=1234),
        timedelta(milliseconds=1),
        timedelta(seconds=0.1),
        timedelta(hours=1, milliseconds=1),
        timedelta(0),
    ],
)
def test_a_shown_duration_reads_back_as_the_same_setting(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


def test_the_retry_ladder_and_replay_show_durations_as_the_formatter_does() -> None:
    ninety = timedelta(seconds=5400)
    decision = after_failure(1, (ninety,), "boom")
    assert decision.last_error == "attempt 1 failed, retry in 90m: boom"
    described = ReplayFilter(since=ninety).describe()
    assert described == "re-queue failed messages that last changed in the last 90m"
