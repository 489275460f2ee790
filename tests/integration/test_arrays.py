"""The batched writes' arrays, written in Postgres's binary array format by listener/arrays.py:
Postgres reads from each exactly what it reads from the same values as a plain list (which
psycopg dumps itself)."""

from __future__ import annotations

import math
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.adapt import PyFormat

from listener.arrays import (
    BigintArray,
    BoolArray,
    Float8Array,
    IntegerArray,
    TextArray,
    UuidArray,
)

CASES: list[tuple[type[list[Any]], str, list[Any]]] = [
    (TextArray, "text", []),
    (TextArray, "text", ["a"]),
    (TextArray, "text", ["Olá, Ana! 🎉", "", None, 'aspas " e \\ barra', "x" * 5000]),
    (TextArray, "text", [None, None]),
    (TextArray, "jsonb", ['["Olá", "b"]', "[]", '{"messages": ["\\u00e9"]}']),
    (UuidArray, "uuid", []),
    (UuidArray, "uuid", [uuid.uuid4() for _ in range(60)]),
    (BigintArray, "bigint", [0, 1, -1, 2**31, -(2**63), 2**63 - 1, None, 300]),
    (BigintArray, "bigint", [None]),
    (IntegerArray, "int", [0, 1, -1, 2**31 - 1, -(2**31), None]),
    (Float8Array, "float8", [0.0, 1e-12, 4.05e-05, -2.5, 1e300, math.inf, None]),
    (BoolArray, "bool", [True, False, None]),
    (BoolArray, "bool", []),
]


@pytest.mark.parametrize(("cls", "element", "values"), CASES)
def test_an_array_reads_as_the_same_values_as_a_list(
    db: psycopg.Connection[Any], cls: type[list[Any]], element: str, values: list[Any]
) -> None:
    cast = f"::{element}[]"
    query = f"SELECT %(fast)b{cast}, %(fast)b{cast} IS NOT DISTINCT FROM %(list)b{cast}"
    assert db.adapters.get_dumper(cls, PyFormat.BINARY).__module__ == "listener.arrays"
    row = db.execute(query, {"fast": cls(values), "list": list(values)}).fetchone()
    assert row is not None
    assert row[1] is True
    if element != "jsonb":
        assert row[0] == values


def test_a_nul_is_refused_by_postgres_and_a_lone_surrogate_by_the_encoding(
    db: psycopg.Connection[Any],
) -> None:
    """What the writes' isolation (GroupCommit's `isolate`, writes.is_data_error) relies on."""
    with pytest.raises(psycopg.DataError):
        db.execute("SELECT %(a)b::text[]", {"a": TextArray(["a\x00b"])})
    with pytest.raises(UnicodeEncodeError):
        db.execute("SELECT %(a)b::text[]", {"a": TextArray(["a\ud800"])})
    with pytest.raises(psycopg.DataError):
        db.execute("SELECT %(a)b::bigint[]", {"a": BigintArray([2**63])})
    with pytest.raises(psycopg.DataError):
        db.execute("SELECT %(a)b::int[]", {"a": IntegerArray([2**31])})
