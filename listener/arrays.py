"""The arrays of the batched writes (one element per message), written in Postgres's binary
array format in one pass.

psycopg dumps a Python list by reading its elements' types twice (for the dumper's key, then
for the array's type) and then each element through its own dumper, in Python; for the few
hundred elements of a batch that was a few microseconds of each message's CPU. A list made as
one of these types names its element type instead: `TextArray`, `UuidArray`, `IntegerArray`,
`BigintArray`, `Float8Array`, `BoolArray` (None elements are NULL). The statements cast each
array to its type (`%(ids)b::uuid[]`), so Postgres reads the same values as from a plain list.
The dumpers are registered with psycopg's global adapters when this module is imported, so
every connection made after knows them (one that did not would dump them as plain lists).
"""

from __future__ import annotations

import struct
from itertools import chain, repeat
from operator import attrgetter
from typing import Any
from uuid import UUID

import psycopg
from psycopg import postgres, pq
from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper

# A one-dimensional array: dimensions, whether it holds a NULL, the element type; then the
# length and lower bound of its one dimension. An empty array has no dimension.
_HEAD = struct.Struct("!iiIii")
_EMPTY = struct.Struct("!iiI")
_LENGTH = struct.Struct("!i").pack
_NULL = b"\xff\xff\xff\xff"
_UUID_LENGTH = _LENGTH(16)
_BYTES = attrgetter("bytes")


class TextArray(list[str | None]):
    """A `text[]` parameter."""


class UuidArray(list[UUID]):
    """A `uuid[]` parameter (no NULL)."""


class IntegerArray(list[int | None]):
    """An `integer[]` parameter."""


class BigintArray(list[int | None]):
    """A `bigint[]` parameter."""


class Float8Array(list[float | None]):
    """A `float8[]` parameter."""


class BoolArray(list[bool | None]):
    """A `boolean[]` parameter."""


def _array(element_oid: int, items: list[bytes | None]) -> bytes:
    """The binary form of a one-dimensional array of already dumped elements."""
    if not items:
        return _EMPTY.pack(0, 0, element_oid)
    head = _HEAD.pack(1, None in items, element_oid, len(items), 1)
    if None not in items:  # each element's length, then its bytes, joined in C
        dumped: list[bytes] = items  # type: ignore[assignment]
        lengths = map(_LENGTH, map(len, dumped))
        return head + b"".join(chain.from_iterable(zip(lengths, dumped, strict=True)))
    chunks: list[bytes] = []
    for item in items:
        chunks += (_NULL,) if item is None else (_LENGTH(len(item)), item)
    return head + b"".join(chunks)


class _ArrayDumper(Dumper):
    format = pq.Format.BINARY
    element = ""  # the element type's name

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        info = postgres.types[self.element]
        self.element_oid, self.oid = info.oid, info.array_oid


class _TextArrayDumper(_ArrayDumper):
    element = "text"

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        # As psycopg's own text dumper: the connection's encoding (ASCII as UTF-8). Postgres
        # refuses a NUL, and a lone surrogate fails to encode (UnicodeEncodeError), as there.
        encoding = self.connection.info.encoding if self.connection is not None else "utf-8"
        self._encoding = encoding if encoding != "ascii" else "utf-8"

    def dump(self, obj: Any) -> bytes:
        if self._encoding == "utf-8" and None not in obj:
            return _array(self.element_oid, list(map(str.encode, obj)))
        encoding = self._encoding
        return _array(self.element_oid, [None if s is None else s.encode(encoding) for s in obj])


class _UuidArrayDumper(_ArrayDumper):
    element = "uuid"

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY.pack(0, 0, self.element_oid)
        head = _HEAD.pack(1, 0, self.element_oid, len(obj), 1)
        return head + b"".join(map(_UUID_LENGTH.__add__, map(_BYTES, obj)))


class _StructArrayDumper(_ArrayDumper):
    """Elements of one fixed-size binary form (`code`, a struct format character)."""

    code = ""

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        self._pack = struct.Struct("!" + self.code).pack
        self._size = struct.calcsize("!" + self.code)
        self._sized = struct.Struct("!i" + self.code).pack  # its length, then the element

    def dump(self, obj: Any) -> bytes:
        try:
            if not obj or None in obj:
                pack = self._pack
                return _array(self.element_oid, [None if v is None else pack(v) for v in obj])
            head = _HEAD.pack(1, 0, self.element_oid, len(obj), 1)
            return head + b"".join(map(self._sized, repeat(self._size), obj))
        except struct.error as exc:  # out of the type's range: the data, as Postgres would say
            raise psycopg.DataError(f"cannot dump {self.element}[]: {exc}") from exc


class _IntegerArrayDumper(_StructArrayDumper):
    element = "int4"
    code = "i"


class _BigintArrayDumper(_StructArrayDumper):
    element = "int8"
    code = "q"


class _Float8ArrayDumper(_StructArrayDumper):
    element = "float8"
    code = "d"


class _BoolArrayDumper(_StructArrayDumper):
    element = "bool"
    code = "?"


for _cls, _dumper in (
    (TextArray, _TextArrayDumper),
    (UuidArray, _UuidArrayDumper),
    (IntegerArray, _IntegerArrayDumper),
    (BigintArray, _BigintArrayDumper),
    (Float8Array, _Float8ArrayDumper),
    (BoolArray, _BoolArrayDumper),
):
    psycopg.adapters.register_dumper(_cls, _dumper)
