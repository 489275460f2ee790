"""Benchmarks cannot rot unseen: every script of bench/ has a `--smoke` size and is run at it by
`bench/run_all.sh --smoke`, which `.ci/run` runs; and no benchmark imports from tests/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _scripts() -> list[Path]:
    """The runnable benchmarks: shell scripts, and Python files run as a program (not the
    helpers they import)."""
    found = [p for p in BENCH.glob("*.sh") if p.name != "run_all.sh"]
    found += [p for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()]
    return sorted(found)


def test_there_are_benchmarks_to_check() -> None:
    names = {p.name for p in _scripts()}
    assert {"queue_throughput.py", "compare_queues.py", "instructions.sh", "ab.py"} <= names


def test_every_benchmark_has_a_smoke_size() -> None:
    missing = []
    for script in _scripts():
        text = script.read_text()
        if "--smoke" not in text and "c.smoke(" not in text:
            missing.append(script.name)
    assert missing == []


def test_the_smoke_run_runs_every_benchmark() -> None:
    run_all = (BENCH / "run_all.sh").read_text()
    ran = set(re.findall(r"bench/([\w]+\.(?:py|sh))", run_all))
    assert {p.name for p in _scripts()} <= ran


def test_ci_smoke_runs_the_benchmarks() -> None:
    assert "bench/run_all.sh --smoke" in (ROOT / ".ci" / "run").read_text()


def test_no_benchmark_imports_from_tests() -> None:
    offending = [
        p.name
        for p in BENCH.glob("*.py")
        if re.search(r"^\s*(from|import)\s+tests\b|-m\W+tests\.", p.read_text(), re.M)
    ]
    assert offending == []
