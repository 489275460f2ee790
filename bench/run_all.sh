#!/usr/bin/env bash
# Run every benchmark in order; each prints its figures and writes bench/results/<name>.json.
# Usage: bash bench/run_all.sh [--url DSN]   (default postgresql://postgres@127.0.0.1:5432/postgres)
# Each script drops and recreates its scratch database (listener_bench) on that server.
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
run() {
    echo
    echo "=== $* ==="
    "$@" "${args[@]}"
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
run uv run python bench/webhooks.py
run uv run --with procrastinate --with pgqueuer --with asyncpg python bench/compare_queues.py
