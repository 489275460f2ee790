"""The package's shape: every module imports on its own (no import cycle), and the command
line is one module."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import listener


def _modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(listener.__path__, prefix="listener.")
    )


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports_on_its_own(module: str) -> None:
    # A fresh interpreter per module: an import cycle shows only when its module comes first.
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]


def test_every_command_is_registered_in_one_module() -> None:
    from listener.commands.cli import main

    assert sorted(main.commands) == ["demo", "migrate", "replay", "run", "stats", "webhook"]
    assert {command.callback.__module__ for command in main.commands.values()} == {  # type: ignore[union-attr]
        "listener.commands.cli"
    }


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "listener"],
        [str(Path(sys.executable).parent / "listener")],  # the console script of pyproject
    ],
)
def test_the_command_runs_as_a_module_and_as_a_console_script(command: list[str]) -> None:
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.split("Commands:")[1].splitlines() if line}
    assert listed == {"demo", "migrate", "replay", "run", "stats", "webhook"}
