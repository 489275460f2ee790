"""What the demo shows: the run's counts as it goes (`Progress`, drawn by `ProgressLine` on
stderr), and at the end its result (`DemoResult`) as `report` prints it, with the command that
shows the demo's data afterwards."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from uuid import UUID

from listener.commands.stats import Stats, render
from listener.phones import mask_phone, normalize_phone


@dataclass(frozen=True)
class Progress:
    """The demo run's counts, from the trigger-kept columns of `campaign_runs`."""

    total: int
    sent: int
    failed: int
    skipped: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


@dataclass(frozen=True)
class DemoResult:
    """What the demo did, for the command to print."""

    campaign_id: UUID
    run_id: UUID
    progress: Progress
    elapsed: float
    stats: Stats
    samples: list[tuple[str, str]]
    interrupted: bool = False
    #: The hand-offs announced on listener_handoff: (name, phone, what they wrote, kind).
    handoffs: list[tuple[str, str, str, str]] = field(default_factory=list)


_BAR_WIDTH = 30

#: Without a terminal, a plain line each time the run passes another tenth of its messages.
_PLAIN_STEPS = 10


class ProgressLine:
    """The demo's progress on `stream` (stderr). On a terminal, one bar rewritten in place with
    `\\r` whenever it changes; elsewhere (a pipe, a file, a CI log) plain lines, one per tenth
    of the messages and one at the end, so no `\\r` frames pile up."""

    def __init__(self, stream: TextIO, *, terminal: bool | None = None) -> None:
        self._stream = stream
        self._terminal = _is_terminal(stream) if terminal is None else terminal
        self._last = ""
        self._step = -1

    def __call__(self, progress: Progress) -> None:
        total = max(progress.total, 1)
        filled = _BAR_WIDTH * progress.done // total
        line = (
            f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {progress.done}/{progress.total}"
            f"  sent {progress.sent}  skipped {progress.skipped}  failed {progress.failed}"
        )
        if line == self._last:
            return
        if self._terminal:
            self._write("\r" + line)
            self._last = line
            return
        step = _PLAIN_STEPS * progress.done // total
        if step != self._step or progress.finished:
            self._write(line + "\n")
            self._last, self._step = line, step

    def close(self) -> None:
        """End the bar's line (a terminal only: plain lines end themselves), so other lines
        can be written; the next change draws the bar again below them."""
        if self._terminal and self._last:
            self._write("\n")
            self._last = ""

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def look_command(data_dir: Path | None) -> str:
    """The command that shows the demo's data: `listener stats` on the same database. For the
    demo's own embedded Postgres (`data_dir`), with LISTENER_DATA_DIR pointing at it; stats
    starts that Postgres again from the same folder."""
    program = "uv run listener" if os.environ.get("UV") else "listener"
    command = f"{program} stats --since 1h"
    if data_dir is None:
        return command
    return f"LISTENER_DATA_DIR={shlex.quote(str(data_dir))} {command}"


def report(result: DemoResult, *, keep: bool, data_dir: Path | None) -> Iterator[str]:
    """What `listener demo` prints at the end: the outcome, the stats, some messages sent, and
    how to look at the data afterwards. `data_dir` is the folder of the demo's own embedded
    Postgres (None when it ran on DATABASE_URL)."""
    progress = result.progress
    state = "interrupted after" if result.interrupted else "done in"
    yield (
        f"demo campaign {result.campaign_id}: {progress.total} messages, {state} "
        f"{result.elapsed:.1f}s: {progress.sent} sent, {progress.skipped} skipped, "
        f"{progress.failed} failed"
    )
    yield ""
    yield render(result.stats)
    yield ""
    if result.handoffs:
        yield "leads handed off to a person (NOTIFY listener_handoff)"
        for handoff in result.handoffs:
            yield "  " + handoff_line(handoff)
    else:
        yield "no lead was handed off"
    if result.samples:
        yield ""
        yield "some messages the sandbox sender delivered"
        for number, text in result.samples:
            yield f"  {mask_phone(number)}  {text}"
    yield ""
    if keep:
        yield f"kept the demo's rows: campaign {result.campaign_id}, run {result.run_id}"
        yield f"look at them with: {look_command(data_dir)}"
    else:
        yield "removed the demo's rows (use --keep to look at them)"


def handoff_line(handoff: tuple[str, str, str, str]) -> str:
    """One hand-off as the demo prints it: who (phone masked), what they wrote, its kind."""
    name, phone, text, kind = handoff
    digits = normalize_phone(phone) or phone
    return f'{name} ({mask_phone(digits)}) wrote "{text}" ({kind.replace("_", " ")})'
