"""The demo's progress line: `\r` frames on a terminal only; elsewhere a few plain lines."""

from __future__ import annotations

import io

from listener.commands.demo import Progress, ProgressLine


def _run(bar: ProgressLine, total: int) -> None:
    for done in range(total + 1):
        for _ in range(3):  # the demo polls faster than messages finish: repeats change nothing
            bar(Progress(total=total, sent=done, failed=0, skipped=0))
    bar.close()


def test_without_a_terminal_it_prints_a_plain_line_per_tenth() -> None:
    out = io.StringIO()  # not a terminal, like a pipe or a CI log

    _run(ProgressLine(out), total=200)

    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 11
    assert lines[0] == "[" + "." * 30 + "] 0/200  sent 0  skipped 0  failed 0"
    assert lines[5] == "[" + "#" * 15 + "." * 15 + "] 100/200  sent 100  skipped 0  failed 0"
    assert lines[-1] == "[" + "#" * 30 + "] 200/200  sent 200  skipped 0  failed 0"


def test_without_a_terminal_a_small_run_prints_each_step_once() -> None:
    out = io.StringIO()

    _run(ProgressLine(out), total=3)

    assert [line.split("] ")[1] for line in out.getvalue().splitlines()] == [
        f"{n}/3  sent {n}  skipped 0  failed 0" for n in range(4)
    ]


def test_on_a_terminal_it_rewrites_one_line_in_place() -> None:
    out = io.StringIO()

    _run(ProgressLine(out, terminal=True), total=4)

    text = out.getvalue()
    assert text.count("\r") == 5  # one frame per change, none for a repeat
    assert text.endswith("] 4/4  sent 4  skipped 0  failed 0\n")
    assert text.count("\n") == 1


def test_a_stream_that_says_it_is_a_terminal_gets_frames() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    bar = ProgressLine(out)
    bar(Progress(total=2, sent=1, failed=0, skipped=0))
    assert out.getvalue().startswith("\r[")
