#!/usr/bin/env bash
# Listener CPU per message, counted in instructions (not disturbed by other work on the
# machine): callgrind around bench/queue_throughput.py at concurrency 50 with backlogs of 400
# and 1,200 messages; (I(1200) - I(400)) / 800 removes start-up and seeding. Needs valgrind.
#
#   bash bench/instructions.sh [CHECKOUT]     # default: this checkout; prints one line
#
# CHECKOUT is a git worktree with its own virtual environment (uv sync --frozen there), so two
# commits compare in one sitting. Sources are compiled first, so no run pays for compiling.
set -euo pipefail
checkout=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$checkout"
.venv/bin/python -m compileall -q listener bench >/dev/null 2>&1 || true
total() {
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" .venv/bin/python \
    bench/queue_throughput.py --db listener_bench_cg -n "$1" --concurrency 50 --repeat 1 \
    --tag instructions >/dev/null 2>"$work/err.$1"
  awk '/^summary:/ {print $2; exit}' "$work/cg.$1"
}
small=$(total 400)
large=$(total 1200)
echo "$(git rev-parse --short HEAD): $(( (large - small) / 800 )) instructions per message"
