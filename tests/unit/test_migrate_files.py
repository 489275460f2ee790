"""How `listener migrate` reads a migration file: its statements, whether it runs in a
transaction, the indexes it builds concurrently, and which files of the folder it takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.errors import MigrationError
from listener.migrate import Migration, load_migrations, split_statements


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
