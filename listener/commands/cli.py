"""The `listener` command: every subcommand's options, dispatch and printing. The work is in
one module per command (`daemon`, `migrate`, `replay`, `stats`, `demo`), which never import
this one; what the commands share (the loop, settings, the database) is in `common`. Errors in
arguments or settings become one line and exit code 2; other known failures one line and exit
code 1; never a traceback."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import click

from listener import logs
from listener.commands.common import DURATION, command_database, command_settings, run_async
from listener.errors import ConfigurationError, ListenerError
from listener.settings import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="listener")
def main() -> None:
    """Send campaign messages as rows land in Postgres (LISTEN/NOTIFY, OpenRouter, Evolution API).

    Settings come from the environment; see README.md for every one."""


# --------------------------------------------------------------------------------------------
# run, migrate
# --------------------------------------------------------------------------------------------


@main.command()
def run() -> None:
    """Run the daemon until SIGTERM or SIGINT (then finish in-flight messages and exit 0)."""
    from listener.daemon import run_daemon

    settings = command_settings(need_providers=True)
    url = command_database(settings, reachable_only=True)
    run_async(run_daemon(settings, url))


@main.command()
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print each SQL statement migrate would run on this database, with what it does to"
    " which table, and change nothing.",
)
def migrate(dry_run: bool) -> None:
    """Apply the SQL files of migrations/ in order, once each (safe when two run together).

    On a database whose tables the listener did not make (the Edge Function's), adopt them in
    place first: add what the listener needs, keep everything of yours."""
    from listener.commands.migrate import run_migrate
    from listener.db import database_url
    from listener.errors import AdoptionRefused

    settings = command_settings(need_providers=False)
    try:
        outcome = run_async(run_migrate(database_url(settings), dry_run=dry_run))
    except AdoptionRefused as exc:
        for line in exc.conflicts:
            click.echo(f"conflict: {line}", err=True)
        raise click.ClickException(str(exc)) from None
    adoption = outcome.adoption
    if adoption is not None:
        verb = "would adopt" if dry_run else "adopted"
        click.echo(f"{verb} your tables {', '.join(adoption.tables)} in place")
        for note in adoption.notes:
            click.echo(f"note: {note}")
    if dry_run:
        if not outcome.statements:
            click.echo("database is up to date: nothing to run")
        for what, statement in outcome.statements:
            click.echo(f"\n-- {what}\n{statement.strip().rstrip(';')};")
        click.echo("\n(dry run: nothing was changed)")
        return
    for line in outcome.said:
        click.echo(f"note: {line}")
    if outcome.applied:
        for name in outcome.applied:
            click.echo(f"applied {name}")
    else:
        click.echo("database is up to date")


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------


@main.command()
@click.option("--campaign", "campaign_id", type=click.UUID, help="Only this campaign's messages.")
@click.option("--run", "run_id", type=click.UUID, help="Only this run's messages.")
@click.option(
    "--id",
    "ids",
    type=click.UUID,
    multiple=True,
    help="Only this message (repeat for several). Named messages that are pending, processing "
    "or sent are refused and reported; the others still go.",
)
@click.option(
    "--since",
    type=DURATION,
    help="Only messages that last changed (failed or were skipped: updated_at, else created_at) "
    "within this long before now, e.g. 30m or 2h.",
)
@click.option("--include-skipped", is_flag=True, help="Re-queue skipped messages too.")
@click.option(
    "--all", "everything", is_flag=True, help="Re-queue every failed message (no filter)."
)
@click.option("--dry-run", is_flag=True, help="Show what would be re-queued; change nothing.")
def replay(
    campaign_id: UUID | None,
    run_id: UUID | None,
    ids: tuple[UUID, ...],
    since: timedelta | None,
    include_skipped: bool,
    everything: bool,
    dry_run: bool,
) -> None:
    """Put failed messages back in the queue, due now, with every attempt back.

    Their stored text and the parts already accepted are kept, so each one resumes after its
    last accepted part. Running listeners take them at once (the table's trigger notifies
    them); no restart is needed. At least one filter, or --all, is required; filters combine
    (all must match)."""
    from listener.commands import replay as work

    filters = work.ReplayFilter(
        campaign_id=campaign_id,
        run_id=run_id,
        ids=tuple(dict.fromkeys(ids)),
        since=since,
        include_skipped=include_skipped,
        everything=everything,
    )
    if everything and filters.filtered:
        raise click.UsageError("--all cannot be combined with filters; give one or the other")
    filters.check()
    url = command_database(command_settings(need_providers=False))
    click.echo(filters.describe() + (" (dry run)" if dry_run else ""))
    result = run_async(work.replay(url, filters, dry_run=dry_run))
    for line in work.report(result, include_skipped=include_skipped):
        click.echo(line)


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--since",
    type=DURATION,
    default="1h",
    show_default=True,
    help="The window: sent messages by sent_at, the share by status by created_at.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def stats(since: timedelta, as_json: bool) -> None:
    """Monitoring figures over a window: processing time, rate, share by status.

    The figures of the old function's deploy guide (its step 4.2): average processing time
    (sent_at - scheduled_at) and messages sent; messages per minute, newest first, and the rate
    over the whole window; share by status of the messages created in the window. Plus
    retries (created in the window with more than one attempt; pending with an error, waiting
    for their retry) and the due backlog with the age of its oldest message."""
    from listener.commands.stats import collect_stats, render

    settings = command_settings(need_providers=False)
    url = command_database(settings)
    figures = run_async(
        collect_stats(
            url, since, warmup=settings.warmup, default_instance=settings.evolution_instance
        )
    )
    if as_json:
        click.echo(json.dumps(figures.as_json(), ensure_ascii=False))
    else:
        click.echo(render(figures))


# --------------------------------------------------------------------------------------------
# webhook
# --------------------------------------------------------------------------------------------


@main.group()
def webhook() -> None:
    """Delivery feedback: Evolution's webhooks to the listener."""


@webhook.command("set")
@click.option(
    "--instance",
    "instances",
    multiple=True,
    help="The Evolution instance (repeatable). Default: EVOLUTION_INSTANCE and every instance "
    "the campaigns use.",
)
@click.option(
    "--url",
    required=True,
    help="The full public address of the receiver, e.g. https://listener.example.com/webhooks/evolution",
)
def webhook_set(instances: tuple[str, ...], url: str) -> None:
    """Point Evolution's webhook at the listener: the events it reads (MESSAGES_UPDATE,
    MESSAGES_UPSERT, SEND_MESSAGE, CONNECTION_UPDATE) and the `jwt_key` header, so every post
    is signed with LISTENER_WEBHOOK_SECRET."""

    settings = command_settings(need_providers=False)
    settings = load_settings(llm="sandbox", sender="evolution")
    from listener.commands import webhooks

    webhooks.check(settings, url)
    names = list(dict.fromkeys(instances))
    if not names:
        database = command_database(settings)
        names = run_async(webhooks.instances_in_use(database, settings))
    done = run_async(webhooks.set_webhooks(settings, url, names))
    for name in done:
        click.echo(f"webhook set on {name}: {url}")


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--leads",
    type=click.IntRange(1, 5000),
    default=30,
    show_default=True,
    help="How many sample leads (one message each).",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the demo's campaign, leads, messages and outbox rows afterwards, to look at "
    "them (the demo prints the command); by default they are deleted once the stats are "
    "printed.",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Once the demo is done, keep its listener and status page up until Ctrl-C.",
)
def demo(leads: int, keep: bool, serve: bool) -> None:
    """Run the whole pipeline on sample data, with nothing to configure.

    Without DATABASE_URL it starts an embedded Postgres in LISTENER_DATA_DIR/demo (stopped at
    the end). It applies the migrations, starts a listener in this process with the built-in
    sandbox LLM and sender, inserts a sample campaign (a new one each run) whose messages the
    listener sends, shows the progress, then the stats and a few of the messages "sent".
    The campaign has a follow-up step a few seconds later; sandbox leads reply in each kind
    the listener tells apart, and the leads handed off to a person are printed. With --serve
    the listener and its status page stay up until Ctrl-C."""
    from listener.commands import demo as work

    settings = command_settings(need_providers=False)
    logs.setup("WARNING", settings.log_format)
    from listener.db import stop_embedded

    own_folder: Path | None = None
    if settings.database_url is None:
        from listener.db import embedded_url

        own_folder = settings.data_dir / "demo"
        click.echo(f"starting an embedded Postgres in {own_folder} ...", err=True)
        url = embedded_url(own_folder)
    else:
        url = settings.database_url
    bar = work.ProgressLine(sys.stderr)
    printed = False

    def show(result: work.DemoResult) -> None:
        nonlocal printed
        bar.close()
        for line in work.report(result, keep=keep, data_dir=own_folder):
            click.echo(line)
        printed = True

    def inform(line: str) -> None:
        bar.close()  # a line of its own, not glued to the progress bar
        click.echo(line, err=True)

    try:
        result = run_async(
            work.demo(
                url,
                leads=leads,
                keep=keep,
                check=own_folder is None,
                progress=bar,
                inform=inform,
                serve=serve,
                on_result=show,
            )
        )
    finally:
        bar.close()
        if own_folder is not None:
            stop_embedded()
    if not printed:
        show(result)
    if result.interrupted:
        raise click.Abort()


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """Driver messages span lines; an operator gets one."""
    return " ".join(str(exc).split())


def entry(argv: list[str] | None = None, *, prog: str = "listener") -> int:
    """Run the CLI and return the exit code (used by `console` and by tests)."""
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
    """Console-script entry point (`listener`, and `python -m listener`)."""
    sys.exit(entry())
