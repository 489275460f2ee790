"""JSON on the hot path (orjson, with the standard library wherever orjson refuses)."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import psycopg

from listener import jsoncodec

CONTEXT = {
    "id": "8b0c7d2e-1f3a-4c5b-9d6e-7f8a9b0c1d2e",
    "name": 'Zé 😀 O\'Brien "Silva"\n\tç\\',
    "phone": "5511987654321",
    "metadata": {"size": 12, "ratio": 0.1, "tiny": 1e-05, "tags": ["a", None, True, False]},
    "opted_out": False,
    "handoff_at": None,
    "history": [{"text": "Olá", "sent_at": "2026-12-06T10:00:00+00:00"}],
}


def test_loads_gives_json_loads_answer_including_what_orjson_refuses() -> None:
    texts = [
        json.dumps(CONTEXT),
        json.dumps(CONTEXT, ensure_ascii=False),
        '{"cnpj": 123456789012345678901234567890, "n": -99999999999999999999}',  # beyond 64 bits
        '{"x": NaN, "y": Infinity}',  # the standard library's extension
        '"\\ud800"',  # a lone surrogate escape
        "[]",
    ]
    for text in texts:
        got, want = jsoncodec.loads(text), json.loads(text)
        assert repr(got) == repr(want), text
        assert jsoncodec.loads(text.encode()) is not None or want is None
    assert jsoncodec.loads(memoryview(b'{"a": 1}')) == {"a": 1}
    # A text holding a lone surrogate itself (an LLM reply's content decoded from `\ud800`)
    # has no UTF-8 form for orjson: the standard library reads it.
    lone = '{"messages": ["a\ud800b"]}'
    assert jsoncodec.loads(lone) == json.loads(lone) == {"messages": ["a\ud800b"]}


def test_loads_raises_what_json_raises_on_text_that_is_not_json() -> None:
    # Word for word: the writer puts the error's text in a message's failure reason.
    for text in ("", "{", "{'a': 1}", "[1,]", '{"messages": ["a", }'):
        try:
            json.loads(text)
        except ValueError as exc:
            want = str(exc)
        try:
            jsoncodec.loads(text)
        except ValueError as exc:
            assert str(exc) == want, text
            continue
        raise AssertionError(f"{text!r} was read")


class Color(StrEnum):
    RED = "red"


@dataclass
class Point:
    x: int


def test_dumps_writes_json_dumps_value_and_str_for_everything_else() -> None:
    when = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    ident = uuid.UUID("8b0c7d2e-1f3a-4c5b-9d6e-7f8a9b0c1d2e")
    values: list[object] = [
        {"lead": CONTEXT},
        {"lead": {**CONTEXT, "big": 2**70}},  # orjson refuses: the standard library writes it
        {"lead": {"when": when, "id": ident, "point": Point(1), "color": Color.RED}},
        {"lead": {1: "int key"}},
        {"lead": "\ud800 lone"},
        [],
    ]
    for value in values:
        want = json.loads(json.dumps(value, ensure_ascii=False, default=str))
        assert json.loads(jsoncodec.dumps(value)) == want, value
    # Non-ASCII is written as itself, not escaped (fewer prompt tokens, as before).
    assert "Zé 😀" in jsoncodec.dumps({"lead": CONTEXT})
    assert jsoncodec.dumps({"x": math.nan}) == '{"x":null}'


def test_psycopg_reads_json_and_jsonb_through_it(db_url: str) -> None:
    """The listener's database module installs the loader for every connection: a lead's
    metadata with an integer beyond 64 bits still reads as the standard library reads it."""
    import listener.db  # noqa: F401  (installs the loader)

    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT %s::json, %s::jsonb",
            ('{"n": 123456789012345678901234567890, "s": "ç"}', '{"a": [1, 2.5]}'),
        ).fetchone()
    assert row == ({"n": 123456789012345678901234567890, "s": "ç"}, {"a": [1, 2.5]})
