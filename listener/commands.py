"""The operator commands `listener replay`, `listener stats` and `listener demo`: option
parsing and printing only; the work is in `listener.ops`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import click

from listener import logs, ops
from listener.cli import _settings, run_async
from listener.db import database_url
from listener.ops import (
    DemoResult,
    Progress,
    ReplayFilter,
    ReplayResult,
    Stats,
    collect_stats,
    demo_guard,
    format_duration,
    run_demo,
)
from listener.settings import Settings, load_settings, parse_duration


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


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------


@click.command()
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
    filters = ReplayFilter(
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
    settings = _settings(need_providers=False)
    url = database_url(settings)
    click.echo(filters.describe() + (" (dry run)" if dry_run else ""))
    result = run_async(ops.replay(url, filters, dry_run=dry_run))
    for line in replay_report(result, include_skipped=include_skipped):
        click.echo(line)


def replay_report(result: ReplayResult, *, include_skipped: bool) -> Iterator[str]:
    """The lines `listener replay` prints after its plan: refusals, then the count."""
    for message_id, status in result.refused:
        if status == "skipped" and not include_skipped:
            why = "add --include-skipped to re-queue skipped messages"
        else:
            why = "only failed and skipped messages are re-queued"
        yield f"refused {message_id}: it is {status} ({why})"
    for message_id in result.missing:
        yield f"not found {message_id}: no such message"
    verb = "would re-queue" if result.dry_run else "re-queued"
    noun = "message" if result.count == 1 else "messages"
    line = f"{verb} {result.count} {noun}"
    if len(result.by_status) > 1:
        line += " (" + ", ".join(f"{s} {n}" for s, n in sorted(result.by_status.items())) + ")"
    yield line


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------

#: Per-minute rows shown to people; --json has them all.
_MAX_MINUTES = 15


@click.command()
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
    settings = _settings(need_providers=False)
    figures = run_async(collect_stats(database_url(settings), since))
    if as_json:
        click.echo(json.dumps(figures.as_json(), ensure_ascii=False))
    else:
        click.echo(render_stats(figures))


def _table(rows: Sequence[Sequence[str]], *, indent: str = "  ") -> list[str]:
    """Rows aligned in columns: the first column to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _minute(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")


def render_stats(figures: Stats) -> str:
    """The stats as plain-text tables for people."""
    window = format_duration(figures.window)
    lines = [f"last {window} (since {figures.since.isoformat(timespec='seconds')})", ""]
    lines += _table(
        [
            ("sent", str(figures.total_sent)),
            ("average processing time", _seconds(figures.avg_processing_seconds)),
            ("rate over the window", f"{figures.rate_per_minute:.2f} per minute"),
        ],
        indent="",
    )
    lines += ["", "messages per minute (newest first)"]
    if figures.per_minute:
        shown = figures.per_minute[:_MAX_MINUTES]
        lines += _table([("minute", "sent"), *((_minute(m), str(n)) for m, n in shown)])
        if len(figures.per_minute) > len(shown):
            lines.append(f"  ... {len(figures.per_minute) - len(shown)} more (see --json)")
    else:
        lines.append("  none sent")
    lines += ["", "share by status (messages created in the window)"]
    if figures.by_status:
        total = sum(count for _, count, _ in figures.by_status)
        rows = [("status", "count", "percent")]
        rows += [(s, str(n), f"{p:.2f}") for s, n, p in figures.by_status]
        rows.append(("total", str(total), "100.00"))
        lines += _table(rows)
    else:
        lines.append("  none created")
    lines += [""]
    lines += _table(
        [
            ("retried (created in the window, attempts > 1)", str(figures.retried)),
            ("waiting for a retry (pending with an error)", str(figures.waiting_retry)),
            ("due now (backlog)", str(figures.due_backlog)),
            ("oldest due message waiting for", _seconds(figures.oldest_due_seconds)),
        ],
        indent="",
    )
    lines += ["", "waiting, per campaign and why"]
    if figures.waiting:
        waiting = [("campaign", "why", "count", "next at")]
        waiting += [
            (name, reason, str(count), next_at.isoformat(timespec="seconds"))
            for name, _, reason, count, next_at in figures.waiting
        ]
        lines += _table(waiting)
    else:
        lines.append("  nothing pending")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

_BAR_WIDTH = 30


class ProgressLine:
    """A plain-text progress bar on stderr, rewritten in place with `\\r` when it changes."""

    def __init__(self) -> None:
        self._last = ""

    def __call__(self, progress: Progress) -> None:
        total = max(progress.total, 1)
        filled = _BAR_WIDTH * progress.done // total
        line = (
            f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {progress.done}/{progress.total}"
            f"  sent {progress.sent}  skipped {progress.skipped}  failed {progress.failed}"
        )
        if line != self._last:
            click.echo(line, err=True, nl=False)
            self._last = line

    def close(self) -> None:
        if self._last:
            click.echo("", err=True)


def demo_settings(url: str) -> Settings:
    """The demo listener's settings: sandbox providers, no metrics port, quick retries, and
    quiet logs so the progress bar stays readable."""
    return load_settings(
        llm="sandbox",
        sender="sandbox",
        database_url=url,
        metrics_port=0,
        part_delay="50ms",
        retry_delays="1s,2s,3s",
        shutdown_grace="5s",
        log_level="WARNING",
    )


@click.command()
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
    "them; by default they are deleted once the stats are printed.",
)
def demo(leads: int, keep: bool) -> None:
    """Run the whole pipeline on sample data, with nothing to configure.

    Without DATABASE_URL it starts an embedded Postgres in LISTENER_DATA_DIR/demo (stopped at
    the end). It applies the migrations, starts a listener in this process with the built-in
    sandbox LLM and sender, inserts a sample campaign (a new one each run) whose messages the
    listener sends, shows the progress, then the stats and a few of the messages "sent"."""
    settings = _settings(need_providers=False)
    logs.setup("WARNING", settings.log_format)
    own_database = settings.database_url is None
    if own_database:
        from listener.db import embedded_url

        folder = settings.data_dir / "demo"
        click.echo(f"starting an embedded Postgres in {folder} ...", err=True)
        url = embedded_url(folder)
    else:
        url = settings.database_url or ""
    try:
        result = run_async(_demo(url, leads=leads, keep=keep, check=not own_database))
    finally:
        if own_database:
            _stop_embedded()
    for line in demo_report(result, keep=keep):
        click.echo(line)
    if result.interrupted:
        raise click.Abort()


async def _demo(url: str, *, leads: int, keep: bool, check: bool) -> DemoResult:
    from listener.migrate import migrate

    applied = await migrate(url)
    if applied:
        click.echo(f"applied {len(applied)} migrations", err=True)
    if check:
        await demo_guard(url)
    bar = ProgressLine()
    stop = asyncio.Event()
    with _on_interrupt(stop):
        try:
            return await run_demo(
                url, demo_settings(url), leads=leads, keep=keep, on_progress=bar, stop=stop
            )
        finally:
            bar.close()


@contextlib.contextmanager
def _on_interrupt(stop: asyncio.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM sets `stop` (so the demo drains and cleans up) instead of killing it."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _stop_embedded() -> None:
    """Stop the embedded Postgres this process started (if no other process still uses it)."""
    from listener import db

    server = db._embedded
    if server is not None:
        server.cleanup()


def demo_report(result: DemoResult, *, keep: bool) -> Iterator[str]:
    """What `listener demo` prints at the end: the outcome, the stats, some messages sent."""
    from listener.providers._http import mask_phone

    progress = result.progress
    state = "interrupted after" if result.interrupted else "done in"
    yield (
        f"demo campaign {result.campaign_id}: {progress.total} messages, {state} "
        f"{result.elapsed:.1f}s: {progress.sent} sent, {progress.skipped} skipped, "
        f"{progress.failed} failed"
    )
    yield ""
    yield render_stats(result.stats)
    if result.samples:
        yield ""
        yield "some messages the sandbox sender delivered"
        for number, text in result.samples:
            yield f"  {mask_phone(number)}  {text}"
    yield ""
    if keep:
        yield f"kept the demo's rows: campaign {result.campaign_id}, run {result.run_id}"
    else:
        yield "removed the demo's rows (use --keep to look at them)"
