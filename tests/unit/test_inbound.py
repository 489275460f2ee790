"""What the receiver refuses or cleans before it decodes, stores or logs (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.feedback.events import BadEvent, ConnectionChange, Reply, SentEvent, StatusUpdate
from listener.feedback.inbound import MAX_DEPTH, check_events, nesting_within, sane_time
from listener.text import cut

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, derandomize=True, database=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=60,
    ),
    st.integers(min_value=0, max_value=12),
)
def test_nesting_is_measured_without_decoding(value: object, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert nesting_within(raw, limit) == (depth(value) <= limit)


def test_a_body_nested_thousands_deep_is_refused_and_brackets_in_strings_do_not_count() -> None:
    assert not nesting_within(b"[" * 5000 + b"]" * 5000)
    assert nesting_within(json.dumps({"text": "[" * 5000 + '\\"{'}).encode())
    assert nesting_within(json.dumps([[[]]] * 100).encode(), 3)
    assert not nesting_within(json.dumps([[[[]]]]).encode(), 3)
    assert MAX_DEPTH >= 16  # Evolution's own bodies nest about ten deep


@pytest.mark.parametrize(
    ("at", "sane"),
    [
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), False),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))), False),
        (datetime(2014, 12, 31, tzinfo=UTC), False),
        (NOW + timedelta(days=2), False),
        (datetime(2026, 12, 6, 9, tzinfo=timezone(timedelta(hours=-3))), True),
        (NOW + timedelta(hours=3), True),  # Evolution's local time with a `Z`
        (datetime(2026, 12, 6), False),  # naive
    ],
)
def test_event_times_in_a_sane_range(at: datetime, sane: bool) -> None:
    assert sane_time(at, NOW) is sane


def test_events_out_of_bounds_are_refused_and_the_rest_cleaned() -> None:
    good = StatusUpdate("ma\x00in", "3EB0\udc00", "READ")
    assert check_events([good], NOW) == [StatusUpdate("main", "3EB0\ufffd", "READ")]
    # A reply's own time no phone reported is dropped (at its receipt), the reply kept.
    year_one = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    for at in (year_one, NOW + timedelta(days=2)):
        reply = Reply("main", ("5511987654321",), "Sair", at)
        assert check_events([reply], NOW) == [Reply("main", ("5511987654321",), "Sair", None)]
    ahead = Reply("main", ("5511987654321",), "Sair", NOW + timedelta(hours=3))
    assert check_events([ahead], NOW) == [ahead]  # clamped when applied, and counted
    for bad in (
        StatusUpdate("main", "K" * 12_000, "READ"),
        StatusUpdate("i" * 200_000, "3EB0", "READ"),
        Reply("main", ("9" * 40,), "Sair", NOW),
        Reply("main", ("5511987654321",), "x" * 70_000, NOW),
        SentEvent("main", "3EB0", "9" * 40, "hi"),
        SentEvent("main", "3EB0", "5511987654321", "x" * 70_000),
        ConnectionChange("main", "c" * 1000, 401),
    ):
        with pytest.raises(BadEvent):
            check_events([bad], NOW)
    change = ConnectionChange("lone\ud800", "close", 401)
    assert check_events([change], NOW) == [ConnectionChange("lone\ufffd", "close", 401)]


def test_outside_text_is_cut_and_cleaned_for_a_log_line() -> None:
    assert cut("main") == "main"
    shown = cut("a\x00b\ud800\n" + "x" * 500)
    assert "\x00" not in shown and "\ud800" not in shown and "\n" not in shown
    assert shown.endswith("(504 chars)") and len(shown) < 120
    assert cut(b"\xff") == repr(b"\xff")
