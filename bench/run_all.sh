#!/usr/bin/env bash
# Run every benchmark in order; each prints its figures and writes bench/results/<name>.json.
# Usage: bash bench/run_all.sh [--smoke] [--url DSN]   (default postgresql://postgres@127.0.0.1:5432/postgres)
# Each script drops and recreates its scratch database on that server.
#
# --smoke runs every script of bench/ at a tiny size (seconds each; CI runs this, so a
# benchmark that no longer runs fails the build), each in a scratch database of its own that it
# drops at exit, with results under bench/results/smoke/; also the tools that are not a figure
# of their own (ab.py, profile_summary.py, instructions.sh). Any failure stops the run.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
if [[ ${1:-} == --smoke ]]; then
  smoke=1
  shift
fi
args=("$@")
# The scripts' default server (and instructions.sh's) is BENCH_DATABASE_URL: --url sets it too.
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ ${args[i]} == --url ]]; then export BENCH_DATABASE_URL=${args[i + 1]}; fi
  if [[ ${args[i]} == --url=* ]]; then export BENCH_DATABASE_URL=${args[i]#--url=}; fi
done
if [[ $smoke == 1 ]]; then
  args+=(--smoke)
fi
timings=()
# One script with the shared arguments (`bare` first: without them).
run() {
  local shared=("${args[@]}")
  if [[ $1 == bare ]]; then
    shared=()
    shift
  fi
  echo
  echo "=== $* ==="
  local started=$SECONDS
  "$@" "${shared[@]}"
  timings+=("$(printf '%4ds  %s' $((SECONDS - started)) "$*")")
}
run uv run python bench/machine.py
run uv run python bench/queue_throughput.py --log-info
run uv run python bench/http_throughput.py
run uv run python bench/efficiency.py
run uv run python bench/pickup_latency.py
run uv run python bench/context_load.py
run uv run python bench/memory.py
run uv run python bench/memory.py --analyze-every 0
run uv run python bench/claim_cost.py
run uv run python bench/statement_cpu.py
run uv run python bench/webhooks.py
run uv run python bench/pool_throughput.py
run uv run python bench/status_page.py
# Procrastinate, PgQueuer and asyncpg: the `bench` dependency group (locked in uv.lock).
run uv run --group bench python bench/compare_queues.py
if [[ $smoke == 1 ]]; then
  run uv run python bench/queue_throughput.py --steps-ab --repeat 2
  run uv run python bench/statement_cpu.py --steps-ab
  run uv run python bench/ab.py
  run bare uv run python bench/profile_summary.py --smoke
  run bare bash bench/instructions.sh --smoke
fi
echo
printf '%s\n' "${timings[@]}"
