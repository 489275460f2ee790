#!/usr/bin/env bash
# Listener CPU per message, counted in instructions (not disturbed by other work on the
# machine): callgrind around bench/queue_throughput.py at concurrency 50 with backlogs of 400
# and 1,200 messages; (I(1200) - I(400)) / 800 removes start-up and seeding. Needs valgrind.
#
#   bash bench/instructions.sh [CHECKOUT]     # default: this checkout; prints one line
#   bash bench/instructions.sh --smoke        # CI: the benchmark's command line at a tiny
#                                             # backlog without callgrind (a run under it takes
#                                             # minutes), and callgrind's summary read from a
#                                             # trivial program (skipped, said so, without valgrind)
#
# CHECKOUT is a git worktree with its own virtual environment (uv sync --frozen there), so two
# commits compare in one sitting. Sources are compiled first, so no run pays for compiling.
set -euo pipefail
smoke=0
if [[ ${1:-} == --smoke ]]; then
  smoke=1
  shift
fi
checkout=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$checkout"
.venv/bin/python -m compileall -q listener bench >/dev/null 2>&1 || true
# The benchmark run each count is taken around; $1 is the backlog, the rest goes first (callgrind).
queue() {
  local n=$1
  shift
  "$@" .venv/bin/python bench/queue_throughput.py --db listener_bench_cg -n "$n" \
    --concurrency 50 --repeat 1 --tag instructions ${smoke_flag:+"$smoke_flag"}
}
# callgrind's total instruction count of a run, from its output file's summary line.
summary() {
  local count
  count=$(awk '/^summary:/ {print $2; exit}' "$1")
  [[ $count =~ ^[0-9]+$ ]] || { echo "no instruction count in $1" >&2; return 1; }
  echo "$count"
}
total() {
  queue "$1" valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" >/dev/null \
    2>"$work/err.$1" || { cat "$work/err.$1" >&2; return 1; }
  summary "$work/cg.$1"
}
if [[ $smoke == 1 ]]; then
  smoke_flag=--smoke
  queue 40 >/dev/null
  if command -v valgrind >/dev/null 2>&1; then
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.true" true 2>/dev/null
    echo "smoke: the benchmark runs; callgrind counted $(summary "$work/cg.true") instructions of true"
  else
    echo "smoke: the benchmark runs; valgrind is not installed, so callgrind's part was not tried"
  fi
  exit 0
fi
small=$(total 400)
large=$(total 1200)
echo "$(git rev-parse --short HEAD): $(( (large - small) / 800 )) instructions per message"
