"""JSON on the hot path: a lead's context read from Postgres (every claimed message), the
LLM's user message written from it and its reply read, by orjson, several times faster than
the standard library's (docs/BENCHMARKS.md). Whatever orjson refuses or reads otherwise goes
through the standard library, with the answer it always gave (or its very error): an integer
beyond 64 bits (a lead's metadata may hold one; orjson reads it as an inexact float), `NaN`
in a text, a lone surrogate, a type without a JSON form (written as its `str`)."""

from __future__ import annotations

import json
from typing import Any

import orjson

_STDLIB_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)

# 19 digits in a row may be an integer beyond 64 bits, which orjson reads as a float (a run in
# a string only sends the text to the standard library, which reads it the same). Found by
# mapping every digit to 0 and everything else to a space, then looking for the run (both in
# C: an expression searching for it cost more than the parse it guards).
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """`json.loads(data)`, faster."""
    if isinstance(data, str):
        try:
            raw = data.encode()
        except UnicodeEncodeError:  # a lone surrogate in the text (from a `\ud800` escape)
            return json.loads(data)
    else:
        raw = bytes(data)
    if raw.translate(_DIGITS_TO_ZERO).find(_LONG_RUN) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data if isinstance(data, str) else raw)


def dumps(value: Any) -> str:
    """`json.dumps(value, ensure_ascii=False, default=str)`'s value, faster; the text is
    compact (no space after `:` and `,`) and a float may be spelled otherwise (`1e-5`, not
    `1e-05`). orjson writes JSON's own types and UUIDs (as `str` does); anything else (a
    datetime, a dataclass, a subclass of str, int, dict or list) sends the whole value through
    the standard library, so no value is written as something other than its `str`. (A float
    NaN or infinity, which JSON has no form for and Postgres never gives, is written `null`.)"""
    try:
        return orjson.dumps(
            value,
            default=_refuse,
            option=orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_SUBCLASS,
        ).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _STDLIB_ENCODER.encode(value)


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)
