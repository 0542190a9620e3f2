#!/usr/bin/env bash
# Run every atoll benchmark, one after the other, against one binary.
#
#   bench/run-all.sh
#
# Each benchmark starts its own atoll on free 127.0.0.1 ports and stops it
# when done. Their environment knobs (DURATION, N, K, W, ...) pass through.
# A benchmark that fails is reported and the rest still run.
set -uo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
export ATOLL_BIN="${ATOLL_BIN:-$REPO_ROOT/target/release/atoll}"

if [ ! -x "$ATOLL_BIN" ]; then
    printf 'error: atoll binary not found at %s (cargo build --release, or set ATOLL_BIN)\n' \
        "$ATOLL_BIN" >&2
    exit 1
fi

failed=()
for bench in memory.sh dns.sh register.py watchers.py; do
    printf '\n######## %s ########\n\n' "$bench"
    if ! "$BENCH_DIR/$bench"; then
        failed+=("$bench")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nfailed to run: %s\n' "${failed[*]}" >&2
    exit 1
fi
