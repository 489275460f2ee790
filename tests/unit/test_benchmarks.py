"""Benchmarks cannot rot unseen: every script of bench/ has a `--smoke` size and is run at it by
`bench/run_all.sh --smoke`, which `.ci/run` runs; and no benchmark imports from tests/."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

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


def _ab() -> Any:
    """bench/ab.py as a module (the benchmarks are programs, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_ab", BENCH / "ab.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _runs(pairs: list[tuple[float, float]]) -> list[dict[str, Any]]:
    runs = []
    for number, (old, new) in enumerate(pairs, 1):
        for side, rate in (("old", old), ("new", new)):
            runs.append({"round": number, "side": side, "figures": {"queue c50": rate}})
    return runs


def test_ab_splits_rounds_by_both_sides_rate_not_the_old_ones() -> None:
    """Two checkouts that are the same code, on a host whose speed drifts between a slow and a
    fast spell: each round's rates differ only by noise, and neither half shows a difference,
    nor does the rounds' mean (its interval holds 1)."""
    noise = [(1.0, 1.1), (1.1, 1.0), (1.0, 1.0)]
    pairs = [(base * o, base * n) for base in (4000, 6000) for o, n in noise]
    s = _ab().summarize(_runs(pairs))["queue c50"]
    assert s["rounds"] == 6
    assert s["fast_half_median"] == s["slow_half_median"] == 1.0
    assert s["pair_ratio_geomean"] == 1.0
    low, high = s["pair_ratio_geomean_95"]
    assert low < 1.0 < high


def test_ab_reports_a_real_difference_on_both_halves() -> None:
    pairs = [(base, base * 0.9) for base in (3000, 4000, 5000, 6000)]
    s = _ab().summarize(_runs(pairs))["queue c50"]
    assert s["fast_half_median"] == s["slow_half_median"] == s["pair_ratio_geomean"] == 0.9
    assert s["pair_ratio_geomean_95"] == [0.9, 0.9]
