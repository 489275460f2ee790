"""Applying an adoption's plan, and remembering what stays the user's: the functions and
indexes whose names the migration files also use, whose statements every later migrate leaves
out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, LiteralString, cast

import psycopg

from listener.commands.adoption.steps import Plan, Step

#: The listener's record of what it adopted: the tables, and the user's functions and indexes
#: that keep names the migration files also use (their statements are left out, now and in
#: every later migrate).
ADOPTION_TABLE: LiteralString = """
CREATE TABLE IF NOT EXISTS listener_adoption (
    kind        text NOT NULL,
    name        text NOT NULL,
    adopted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
)
"""

_HELD_STATEMENT = re.compile(
    r"^\s*(?:CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION|DROP\s+FUNCTION(?:\s+IF\s+EXISTS)?"
    r"|ALTER\s+FUNCTION|COMMENT\s+ON\s+FUNCTION|(?:GRANT|REVOKE)\s+.*?\s+ON\s+FUNCTION)"
    r"\s+(?:public\.)?\"?(\w+)\"?\s*\(",
    re.I | re.S,
)
_DROP_INDEX = re.compile(
    r"^\s*DROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?(?:public\.)?\"?(\w+)", re.I
)
_CREATE_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    r"\"?(\w+)\"?\s+ON\s+(?:ONLY\s+)?(?:public\.)?\"?(\w+)",
    re.I,
)
_RENAME_INDEX = re.compile(
    r"^\s*ALTER\s+INDEX\s+(?:IF\s+EXISTS\s+)?(?:public\.)?\"?(\w+)\"?\s+RENAME\s+TO\s+\"?(\w+)",
    re.I,
)
#: An ALTER TABLE whose one action adds, drops or validates a constraint.
_ON_CONSTRAINT = re.compile(
    r"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?:public\.)?\"?\w+\"?\s+"
    r"(?:ADD|DROP|VALIDATE)\s+CONSTRAINT\s+(?:IF\s+EXISTS\s+)?\"?(\w+)",
    re.I,
)
_MORE_ACTIONS = re.compile(r",\s*(?:ADD|DROP|ALTER|VALIDATE|SET|RENAME|ENABLE|DISABLE)\b", re.I)


def indexes_made_on(statements: list[str], tables: set[str]) -> set[str]:
    """The names of the indexes `statements` create on `tables`."""
    names = set()
    for statement in statements:
        match = _CREATE_INDEX.match(re.sub(r"--[^\n]*", "", statement))
        if match and match.group(2) in tables:
            names.add(match.group(1))
    return names


@dataclass(frozen=True, slots=True)
class Held:
    """The user's objects whose names the migration files use too (`functions`, `indexes`).
    `adopted`, only in the migrate that adopts: the constraints and indexes of the adopted
    tables, which the adoption already brought to what the files make (constraints added NOT
    VALID then validated, the user's own of that name, or left out because the user's rows do
    not meet them; indexes built CONCURRENTLY). The numbered files that follow leave them
    alone: dropping and adding them again would scan the user's tables under an exclusive
    lock, fail on the rows the adoption left alone, or build and drop indexes the files made
    on the way to what they make now."""

    functions: frozenset[str] = frozenset()
    indexes: frozenset[str] = frozenset()
    adopted: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.functions or self.indexes or self.adopted)

    def leaves_out(self, statement: str) -> str | None:
        """Why `statement` is left out (it would touch an object of the user's), or None."""
        text = re.sub(r"--[^\n]*", "", statement)
        match = _HELD_STATEMENT.match(text)
        if match and match.group(1) in self.functions:
            return f"your function {match.group(1)} stays as it is"
        match = _DROP_INDEX.match(text)
        if match and match.group(1) in self.indexes:
            return f"your index {match.group(1)} stays as it is"
        rename = _RENAME_INDEX.match(text)
        if rename and rename.group(2) in self.indexes:
            return f"your index {rename.group(2)} keeps its name"
        names = [m.group(1) for m in (_DROP_INDEX.match(text), _CREATE_INDEX.match(text)) if m]
        names += list(rename.groups()) if rename else []
        touched = [name for name in names if name in self.adopted]
        if touched:
            return (
                f"index {touched[0]}: the adoption built the indexes of your tables as these"
                " files end up"
            )
        match = _ON_CONSTRAINT.match(text)
        if match and match.group(1) in self.adopted and not _MORE_ACTIONS.search(text):
            return (
                f"constraint {match.group(1)}: the adoption brought the constraints of your"
                " tables to what these files end up with"
            )
        return None


async def held(conn: psycopg.AsyncConnection[Any]) -> Held:
    """What an earlier adoption recorded (nothing when this database was never adopted)."""
    row = await (
        await conn.execute("SELECT to_regclass('listener_adoption') IS NOT NULL AS there")
    ).fetchone()
    if row is None or not row["there"]:
        return Held()
    rows = await (await conn.execute("SELECT kind, name FROM listener_adoption")).fetchall()
    return Held(
        frozenset(r["name"] for r in rows if r["kind"] == "function"),
        frozenset(r["name"] for r in rows if r["kind"] == "index"),
    )


async def _left_out(conn: psycopg.AsyncConnection[Any], step: Step) -> str | None:
    """Why the step is left out (its guard counts rows that would break it), or None."""
    if step.guard is None:
        return None
    try:
        # A savepoint: a row the check cannot even evaluate (a time zone Postgres does not
        # know) fails the guard, not the adoption.
        async with conn.transaction():
            row = await (await conn.execute(cast(LiteralString, step.guard))).fetchone()  # type: ignore[redundant-cast]
    except psycopg.DataError as exc:
        return f"your rows cannot be checked against it: {' '.join(str(exc).split())}"
    rows = int(next(iter(row.values()))) if row else 0
    return f"{rows} of your rows do not meet it" if rows else None


async def apply(conn: psycopg.AsyncConnection[Any], adoption: Plan) -> list[str]:
    """Run the plan's steps: those of the transaction together, then the others one by one
    (each safe to run again, so an interrupted adoption is finished by the next migrate).
    Returns a line for each step left out because the user's rows do not meet it."""
    said: list[str] = []
    async with conn.transaction():
        await conn.execute(ADOPTION_TABLE)
        records = [("table", t) for t in adoption.tables]
        records += [("function", f) for f in adoption.held_functions]
        records += [("index", i) for i in adoption.held_indexes]
        for kind, name in records:
            await conn.execute(
                "INSERT INTO listener_adoption (kind, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (kind, name),
            )
        for step in adoption.steps:
            if step.transaction:
                await _run(conn, step, said)
    for step in adoption.steps:
        if not step.transaction:
            await _run(conn, step, said)
    return said


async def _run(conn: psycopg.AsyncConnection[Any], step: Step, said: list[str]) -> None:
    why = await _left_out(conn, step)
    if why is not None:
        if step.phase == 2:
            said.append(f"{step.table}: left out ({why}): {step.sql}")
        return
    await conn.execute(cast(LiteralString, step.sql))  # type: ignore[redundant-cast]
