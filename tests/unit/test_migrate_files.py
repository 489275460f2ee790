"""How `listener migrate` reads a migration file: its statements, whether it runs in a
transaction, the indexes it builds concurrently, and which files of the folder it takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.commands.migration_files import (
    Migration,
    load_functions,
    load_migrations,
    split_statements,
)
from listener.errors import MigrationError


def test_statements_split_at_semicolons_outside_quotes_and_comments() -> None:
    text = """
-- a comment; not a statement
CREATE TABLE t (a text DEFAULT 'x;y', "odd;name" int);
/* a block; /* nested; */ still the comment; */
INSERT INTO t (a) VALUES (E'it\\'s; fine'), ('it''s; fine');
CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;$$;b' $body$;
SELECT a$b FROM t WHERE a = $1;
-- only a comment here;
SELECT 2
"""
    assert split_statements(text) == [
        "-- a comment; not a statement\nCREATE TABLE t (a text DEFAULT 'x;y', \"odd;name\" int);",
        "/* a block; /* nested; */ still the comment; */\n"
        "INSERT INTO t (a) VALUES (E'it\\'s; fine'), ('it''s; fine');",
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;",
        "CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;$$;b' $body$;",
        "SELECT a$b FROM t WHERE a = $1;",
        "-- only a comment here;\nSELECT 2",
    ]
    assert split_statements("-- nothing\n;\n  ;") == []


def test_the_first_line_opts_a_file_out_of_its_transaction() -> None:
    body = "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_a ON public.t (a);\n"
    assert not Migration("0004", "a", "-- listener: no-transaction\n" + body).transactional
    assert Migration("0004", "a", body).transactional
    # Only the first line counts.
    assert Migration("0004", "a", "-- why\n-- listener: no-transaction\n" + body).transactional


def test_the_indexes_a_file_builds_concurrently_are_named_without_schema() -> None:
    sql = (
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS public.idx_a ON t (a);\n"
        'create index concurrently "idx_b" on t (b);\n'
        "CREATE INDEX idx_c ON t (c);\n"
        "-- CREATE INDEX CONCURRENTLY idx_d ON t (d);\n"
    )
    assert Migration("0004", "a", sql).concurrent_indexes() == ["idx_a", "idx_b"]


def test_the_folder_gives_numbered_files_in_order_and_not_the_snapshot(tmp_path: Path) -> None:
    for name in ("0002_b.sql", "0001_a.sql", "schema.sql", "notes.txt"):
        (tmp_path / name).write_text("SELECT 1;\n")
    assert [m.label for m in load_migrations(tmp_path)] == ["0001_a.sql", "0002_b.sql"]
    (tmp_path / "extra.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"extra\.sql does not start with a number"):
        load_migrations(tmp_path)


def _function(folder: Path, name: str, text: str) -> None:
    (folder / "functions").mkdir(exist_ok=True)
    (folder / "functions" / f"{name}.sql").write_text(text)


def test_a_function_file_must_create_the_one_function_it_is_named_after(tmp_path: Path) -> None:
    _function(
        tmp_path, "f", "CREATE OR REPLACE FUNCTION g() RETURNS int LANGUAGE sql AS 'SELECT 1';"
    )
    with pytest.raises(MigrationError, match=r"functions/f\.sql must create the one function f"):
        load_functions(tmp_path)
    _function(
        tmp_path,
        "f",
        "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n"
        "CREATE OR REPLACE FUNCTION f2() RETURNS int LANGUAGE sql AS 'SELECT 2';",
    )
    with pytest.raises(MigrationError, match=r"\(it creates f, f2\)"):
        load_functions(tmp_path)


def test_a_function_file_must_replace_its_function(tmp_path: Path) -> None:
    _function(tmp_path, "f", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';")
    with pytest.raises(MigrationError, match="must use CREATE OR REPLACE FUNCTION"):
        load_functions(tmp_path)


def test_functions_come_after_the_functions_they_call_else_by_name(tmp_path: Path) -> None:
    body = "CREATE OR REPLACE FUNCTION {}() RETURNS int LANGUAGE sql AS $$ SELECT {} $$;"
    _function(tmp_path, "a", body.format("a", "c() + b()"))
    _function(tmp_path, "b", body.format("b", "1"))
    _function(
        tmp_path, "c", "-- calls nothing; a() in a comment does not count\n" + body.format("c", "2")
    )
    _function(tmp_path, "d", body.format("d", "1"))
    # Each other's callers (PL/pgSQL resolves at call time): no endless loop.
    _function(tmp_path, "e", body.format("e", "f()"))
    _function(tmp_path, "f", body.format("f", "e()"))
    assert [f.name for f in load_functions(tmp_path)] == ["b", "c", "a", "d", "f", "e"]
    assert load_functions(tmp_path)[0].label == "functions/b.sql"
