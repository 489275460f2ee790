"""Adopting a database the listener did not make: the Edge Function's Supabase project, whose
`campaigns`, `campaign_runs`, `leads` and `campaign_messages` already hold the user's rows.

`plan()` compares the user's tables with the schema the migration files make, which it learns
by running every file in a scratch schema inside a transaction it rolls back (so the target is
always the files themselves, and nothing is left behind). The answer is a `Plan`: conflicts
(what cannot be adopted: the migrate stops before any change), the statements that bring each
user table over in place (columns added, defaults, constraints `NOT VALID` then validated,
indexes built `CONCURRENTLY`, the rows the old system left made ready), notes for the
operator, and the user's functions that keep their name (the listener's own live under
`listener_` names). Nothing of the user's is renamed, retyped or dropped. This module plans
the tables and functions; `rows` the user's rows; `steps` holds what a plan is made of.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from listener.commands.adoption.apply import indexes_made_on
from listener.commands.adoption.catalog import ROLE_BYPASSES_RLS, Catalog, Table, read, target
from listener.commands.adoption.rows import rows_left_behind, user_checks
from listener.commands.adoption.steps import Plan, Step

#: Functions of the seed whose names the contract gives ours too: a user's function of that name
#: is kept as it is (its callers keep their arguments and meaning); the listener calls its own
#: `listener_` one.
ADOPTABLE_FUNCTIONS = frozenset({"get_lead_full_context", "mark_old_campaign_messages_as_skipped"})


#: Columns whose type the listener's queries depend on exactly (ids and foreign keys).
_KEY_COLUMNS = {"id", "campaign_id", "lead_id", "run_id"}
_TEXT_TYPES = {"text", "character varying"}
_INTEGER_TYPES = {"smallint", "integer", "bigint"}
_VOLATILE_DEFAULT = re.compile(r"\b(now|gen_random_uuid|clock_timestamp|random|nextval)\s*\(")


def _compatible(user: dict[str, Any], ours: dict[str, Any], column: str) -> bool:
    if user["type"] == ours["type"]:
        return True
    if column in _KEY_COLUMNS:
        return False
    if ours["type"] == "text" and user["type"].split("(")[0] in _TEXT_TYPES:
        return True
    return ours["type"] in _INTEGER_TYPES and user["type"] in _INTEGER_TYPES


def _id_need(table: str, column: str, user_type: str) -> str:
    if column == "id":
        return (
            f"{table}.id is {user_type}; the listener needs uuid (its queries, webhooks and"
            f" `listener replay --id` pass ids as uuid, and converting would rewrite every row"
            f" and every reference to it)"
        )
    return f"{table}.{column} is {user_type}; the listener needs uuid (the ids it refers to)"


def _unique_id(table: Table) -> bool:
    for index in table.indexes.values():
        if index["uniq"] and list(index["cols"]) == ["id"] and index["plain"]:
            return True
    return False


async def plan(
    conn: psycopg.AsyncConnection[Any], statements: list[str], *, adopting: set[str] | None = None
) -> Plan:
    """The adoption plan of this database (see the module's docstring). `adopting`: the tables
    to adopt (default: every table of the target the database already has)."""
    ours = await target(conn, statements)
    theirs = await read(conn, "public")
    result = Plan()
    names = sorted(set(ours.tables) & set(theirs.tables) if adopting is None else adopting)
    result.tables = names
    row = await (await conn.execute(ROLE_BYPASSES_RLS)).fetchone()
    bypass = bool(row and row["bypass"])
    for name, args in theirs.functions.items():
        if name not in ours.functions:
            continue
        if name in ADOPTABLE_FUNCTIONS:
            result.held_functions.append(name)
            result.notes.append(
                f"function {name}({'; '.join(args)}) is yours: kept as it is for its callers;"
                f" the listener calls its own listener_{name}"
            )
        else:
            for signature in args:
                result.conflicts.append(
                    f"function public.{name}({signature}): a function of yours; the listener"
                    f" needs its own function of that name"
                )
    for name in names:
        _adopt_table(name, ours, theirs.tables[name], theirs, result, bypass)
        result.adopted += ours.tables[name].indexes
    result.adopted += sorted(indexes_made_on(statements, set(names)))
    await user_checks(conn, theirs, result)
    await rows_left_behind(conn, theirs, result)
    result.steps.sort(key=lambda step: step.phase)
    return result


def _adopt_table(
    name: str, target_: Catalog, theirs: Table, catalog: Catalog, result: Plan, bypass: bool
) -> None:
    ours = target_.tables[name]
    added: set[str] = set()
    for column, want in ours.columns.items():
        have = theirs.columns.get(column)
        if have is not None:
            if not _compatible(have, want, column):
                result.conflicts.append(
                    _id_need(name, column, have["type"])
                    if column in _KEY_COLUMNS
                    else f"{name}.{column} is {have['type']}; the listener needs {want['type']}"
                )
            elif want["dflt"] is not None and have["dflt"] is None:
                result.steps.append(
                    Step(
                        name,
                        f"sets a default on your column {column}, so rows inserted without it"
                        " get it",
                        f"ALTER TABLE public.{name} ALTER COLUMN {column} SET DEFAULT"
                        f" {want['dflt']}",
                    )
                )
            continue
        added.add(column)
        result.steps.extend(_add_column(name, column, want))
    have_options = {o.split("=", 1)[0] for o in theirs.options}
    options = [o for o in ours.options if o.split("=", 1)[0] not in have_options]
    if options:
        result.steps.append(
            Step(
                name,
                "sets the storage settings the listener's frequent updates of the table want"
                " (autovacuum soon after its rows change; room on each page, so an update's"
                " old version is pruned at once)",
                f"ALTER TABLE public.{name} SET ({', '.join(options)})",
            )
        )
    if "id" in theirs.columns and "id" in ours.columns and not _unique_id(theirs):
        result.conflicts.append(
            f"{name}.id is not unique (no primary key or unique index on it); the listener"
            " needs it unique (its own tables refer to it)"
        )
    for trigger in sorted(ours.triggers & theirs.triggers):
        result.conflicts.append(
            f"{name}: trigger {trigger} is yours; the listener needs its own trigger of that name"
        )
    if theirs.forced and not bypass:
        result.conflicts.append(
            f"{name} has FORCE ROW LEVEL SECURITY and this role does not bypass RLS; the"
            " listener needs to read and write every row: connect as a role with BYPASSRLS"
        )
    existing = {c["name"] for c in theirs.constraints}
    for constraint in ours.constraints:
        # `n`: NOT NULL, a constraint of its own since Postgres 18 (the column carries it).
        if constraint["kind"] in ("p", "n"):
            continue
        if constraint["name"] in existing:
            result.adopted.append(constraint["name"])
            continue
        _add_constraint(name, constraint, theirs, catalog, added, result, target_.functions)
    for index in sorted(ours.indexes.values(), key=lambda i: str(i["name"])):
        if index["backs"]:
            continue
        _add_index(name, index, catalog, result)


def _add_column(table: str, column: str, want: dict[str, Any]) -> list[Step]:
    default, not_null = want["dflt"], want["not_null"]
    what = f"adds column {column} ({want['type']})"
    if default is not None and _VOLATILE_DEFAULT.search(default):
        # A volatile default on ADD COLUMN rewrites the whole table: add it empty, then set
        # the default for new rows (the user's rows keep NULL there).
        return [
            Step(
                table,
                what,
                f"ALTER TABLE public.{table} ADD COLUMN IF NOT EXISTS {column} {want['type']}",
            ),
            Step(
                table,
                f"sets the default of {column} for new rows",
                f"ALTER TABLE public.{table} ALTER COLUMN {column} SET DEFAULT {default}",
            ),
        ]
    sql = f"ALTER TABLE public.{table} ADD COLUMN IF NOT EXISTS {column} {want['type']}"
    if default is not None:
        sql += f" DEFAULT {default}"
        if not_null:
            sql += " NOT NULL"  # a constant default fills the existing rows without a rewrite
    return [Step(table, what, sql)]


def _add_constraint(
    table: str,
    constraint: dict[str, Any],
    theirs: Table,
    catalog: Catalog,
    added: set[str],
    result: Plan,
    functions: dict[str, list[str]],
) -> None:
    cname, definition, cols = constraint["name"], constraint["def"], list(constraint["cols"])
    if any(re.search(rf"\b{name}\(", definition) for name in functions):
        return  # it calls a function of the migration files: the file that makes it adds it
    result.adopted.append(cname)
    user_cols = [c for c in cols if c not in added]
    if constraint["kind"] == "f":
        ref = constraint["ref"]
        for c in theirs.constraints:
            if c["kind"] != "f" or list(c["cols"]) != cols:
                continue
            if c["ref"] != ref:
                result.conflicts.append(
                    f"{table}.{cols[0]} refers to {c['ref']} (your foreign key {c['name']});"
                    f" the listener needs it to refer to {ref}"
                )
            else:
                result.notes.append(f"{table}.{cols[0]}: your foreign key stays; {cname} not added")
            return
        if ref not in catalog.tables:
            result.notes.append(
                f"{table}.{cols[0]}: {cname} not added: {ref} is created empty, and your rows"
                f" name {ref} that it does not have (the listener skips a message whose"
                " campaign is gone, with the reason)"
            )
            return
        column = cols[0]
        guard = (
            f"SELECT count(*) FROM public.{table} t WHERE t.{column} IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM public.{ref} r WHERE r.id = t.{column})"
        )
    elif constraint["kind"] == "c":
        checked = {col for c in theirs.constraints if c["kind"] == "c" for col in c["cols"]}
        if user_cols and len(user_cols) == len(cols) and set(user_cols) <= checked:
            result.notes.append(
                f"{table}: {cname} not added: your own CHECK on {', '.join(user_cols)} governs"
            )
            return
        guard = f"SELECT count(*) FROM public.{table} WHERE ({constraint['expr']}) IS FALSE"
    else:
        result.notes.append(f"{table}: {cname} ({definition}) not added to your table")
        return
    result.steps.append(
        Step(
            table,
            f"adds constraint {cname} NOT VALID (new rows are checked at once); left out if"
            " your rows do not meet it",
            f"ALTER TABLE public.{table} ADD CONSTRAINT {cname} {definition} NOT VALID",
            guard=guard if user_cols else None,
            phase=2,
        )
    )
    result.steps.append(
        Step(
            table,
            f"validates {cname} without blocking writes",
            f"ALTER TABLE public.{table} VALIDATE CONSTRAINT {cname}",
            transaction=False,
            guard=f"SELECT count(*) FROM pg_constraint WHERE conname = '{cname}'"
            f" AND conrelid = 'public.{table}'::regclass AND convalidated"
            f" OR NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = '{cname}'"
            f" AND conrelid = 'public.{table}'::regclass)",
            phase=3,
        )
    )


def _index_there(catalog: Catalog, name: str) -> dict[str, Any] | None:
    table = catalog.tables.get(catalog.index_tables.get(name, ""))
    return table.indexes.get(name) if table is not None else None


def _add_index(table: str, index: dict[str, Any], catalog: Catalog, result: Plan) -> None:
    name = str(index["name"])
    definition = str(index["def"])
    body = definition[definition.index(" USING ") :]
    have = _index_there(catalog, name)
    if catalog.index_tables.get(name) is not None:
        have_def = have["def"] if have is not None else ""
        same = catalog.index_tables[name] == table and have_def[have_def.index(" USING ") :] == body
        if same and have is not None and have["valid"]:
            return
        if not same:
            result.held_indexes.append(name)
            own = ("listener_" + name)[:63]
            result.notes.append(
                f"{table}: your index {name} stays as it is; the listener's is built as {own}"
            )
            name = own
            have = _index_there(catalog, name)
    if have is not None and not have["valid"]:
        # An adoption killed while it built the index left it INVALID, which `IF NOT EXISTS`
        # would take for built.
        result.steps.append(
            Step(
                table,
                f"drops the invalid index {name} an interrupted migrate left, to build it again",
                f"DROP INDEX CONCURRENTLY IF EXISTS public.{name}",
                transaction=False,
                phase=4,
            )
        )
    unique = "UNIQUE " if index["uniq"] else ""
    result.steps.append(
        Step(
            table,
            f"builds index {name} without blocking writes",
            f"CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS {name} ON public.{table}{body}",
            transaction=False,
            phase=4,
        )
    )
