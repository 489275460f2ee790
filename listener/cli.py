"""The `listener` command. Errors in arguments or settings become one line and exit code 2;
other known failures one line and exit code 1; never a traceback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from listener import logs
from listener.errors import ConfigurationError, ListenerError
from listener.settings import Settings, load_settings, provider_free

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on uvloop (a faster event loop; asyncio's when missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency, but the daemon works without it
        return asyncio.run(coro)
    return uvloop.run(coro)


def _settings(need_providers: bool) -> Settings:
    settings = load_settings() if need_providers else provider_free()
    logs.setup(settings.log_level, settings.log_format)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="listener")
def main() -> None:
    """Send campaign messages as rows land in Postgres (LISTEN/NOTIFY, OpenRouter, Evolution API).

    Settings come from the environment; see README.md for every one."""


@main.command()
def run() -> None:
    """Run the daemon until SIGTERM or SIGINT (then finish in-flight messages and exit 0)."""
    from listener.daemon import run_daemon
    from listener.db import database_url

    settings = _settings(need_providers=True)
    url = database_url(settings)
    run_async(run_daemon(settings, url))


@main.command()
def migrate() -> None:
    """Apply the SQL files of migrations/ in order, once each (safe when two run together)."""
    from listener.db import database_url
    from listener.migrate import migrate as apply

    settings = _settings(need_providers=False)
    applied = run_async(apply(database_url(settings)))
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("database is up to date")


def _register() -> None:
    from listener.commands import demo, replay, stats

    main.add_command(replay)
    main.add_command(stats)
    main.add_command(demo)


def _one_line(exc: BaseException) -> str:
    """Driver messages span lines; an operator gets one."""
    return " ".join(str(exc).split())


def entry(argv: list[str] | None = None, *, prog: str = "listener") -> int:
    """Run the CLI and return the exit code (used by `main` and by tests)."""
    try:
        main.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        return 1
    except click.UsageError as exc:
        click.echo(f"{prog}: error: {exc.format_message()}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"{prog}: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except ConfigurationError as exc:
        click.echo(f"{prog}: {_one_line(exc)}", err=True)
        return 2
    except ListenerError as exc:
        click.echo(f"{prog}: {_one_line(exc)}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def console() -> None:
    """Console-script entry point."""
    sys.exit(entry())


_register()
