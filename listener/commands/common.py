"""What the subcommands of `listener` share: the event loop they run on (uvloop), their
settings and logs, the database a command needs (refused with one line when a migration is
missing), and the duration option type (`30m`, `1h`). The commands themselves are in
`listener.commands.cli`."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import click

from listener import logs
from listener.errors import DatabaseError
from listener.settings import Settings, load_settings, parse_duration, provider_free

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on uvloop (a faster event loop; asyncio's when missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency, but the daemon works without it
        return asyncio.run(coro)
    return uvloop.run(coro)


def command_settings(need_providers: bool) -> Settings:
    """The command's settings (the providers' too when it needs them), its logs set up."""
    settings = load_settings() if need_providers else provider_free()
    logs.setup(settings.log_level, settings.log_format)
    return settings


def command_database(settings: Settings, *, reachable_only: bool = False) -> str:
    """The database URL for a command that needs the schema: refused with one line saying to
    run `listener migrate` when a migration is missing. With `reachable_only`, a database that
    cannot be reached is left to the caller (the daemon waits for it)."""
    from listener.commands.oneshot import require_migrated
    from listener.db import database_url

    url = database_url(settings)
    hint = ""
    demo_data = settings.data_dir / "demo"
    if settings.database_url is None and (demo_data / "pgdata").is_dir():
        from listener.commands.demo import look_command

        hint = f" (the demo's data is elsewhere: {look_command(demo_data)})"
    try:
        run_async(require_migrated(url, hint=hint))
    except DatabaseError:
        if not reachable_only:
            raise
    return url


class Duration(click.ParamType[timedelta, Any]):
    """A window such as `30m`, `1h` or `90s` (a bare number is seconds), longer than zero."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            duration = parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if duration <= timedelta(0):
            self.fail("must be longer than zero", param, ctx)
        return duration


DURATION = Duration()
