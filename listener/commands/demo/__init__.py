"""`listener demo`: the whole pipeline on sample data with nothing to configure. A sandbox
listener runs in this process; a sample campaign goes through it while a progress line shows
the run's counts; then the stats and a few of the messages "sent". `sample` makes the data,
`run` runs the listener and follows the campaign, `progress` is what the terminal shows. The
command line itself is in `listener.commands.cli`."""

from listener.commands.demo.progress import (
    DemoResult,
    Progress,
    ProgressLine,
    handoff_line,
    look_command,
    report,
)
from listener.commands.demo.run import demo, run_demo

__all__ = [
    "DemoResult",
    "Progress",
    "ProgressLine",
    "demo",
    "handoff_line",
    "look_command",
    "report",
    "run_demo",
]
