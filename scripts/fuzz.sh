#!/usr/bin/env bash
# Fuzz atoll's input decoders with cargo fuzz (libFuzzer), each target for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 45 (what CI runs); developers run longer, e.g.
# `scripts/fuzz.sh 600`; 0 only builds them (libFuzzer would take 0 as "no limit").
# Without TARGET every target in fuzz/fuzz_targets runs.
#
# Installs cargo-fuzz if it is missing, builds the targets on the installed stable
# toolchain (RUSTC_BOOTSTRAP=1 lets it take libFuzzer's flags), with debug assertions and
# overflow checks, without a sanitizer (`-s none`: atoll forbids unsafe code, so
# AddressSanitizer would mostly slow the runs down), then runs each target from its
# committed seed corpus, FUZZ_JOBS (default: 2) at a time. New inputs go to
# fuzz/target/corpus/<target>, never into the committed corpus. A crash, panic, leak,
# timeout or out-of-memory fails the script and prints the reproducer's path.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$REPO_ROOT/fuzz"
cd "$FUZZ_DIR"

SECONDS_PER_TARGET="${1:-45}"
shift || true
case "$SECONDS_PER_TARGET" in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
    ;;
esac
JOBS="${FUZZ_JOBS:-2}"

log() { printf '\n==> %s\n' "$*" >&2; }

export RUSTC_BOOTSTRAP=1
# 16 codegen units: a build several times faster on few cores, for slightly slower runs.
BUILD_FLAGS=(--sanitizer none --debug-assertions --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    # seed_corpus writes the seed corpora; it is not a target.
    mapfile -t TARGETS < <(cargo fuzz list | grep -vx seed_corpus)
fi

log "building fuzz targets: ${TARGETS[*]}"
cargo fuzz build "${BUILD_FLAGS[@]}"

if [ "$SECONDS_PER_TARGET" -eq 0 ]; then
    echo "fuzz targets built; 0 seconds per target asked, so none runs"
    exit 0
fi

BIN_DIR="$FUZZ_DIR/target/$(rustc -vV | sed -n 's/^host: //p')/release"
LOG_DIR="$FUZZ_DIR/target/fuzz-logs"
mkdir -p "$LOG_DIR"

run_target() {
    local target="$1" work="$FUZZ_DIR/target/corpus/$1" artifacts="$FUZZ_DIR/artifacts/$1/"
    mkdir -p "$work" "$artifacts"
    # The binary cargo fuzz built above, run directly: `cargo fuzz run` would check (and
    # sometimes relink) the build again for every target. The first corpus directory
    # receives new inputs; the committed one is only read. A fixed seed: what a run tries
    # depends on the corpus and the time given, not on chance.
    "$BIN_DIR/$target" "$work" "$FUZZ_DIR/corpus/$target" \
        -seed=1 -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts" \
        >"$LOG_DIR/$target.log" 2>&1
}

log "running each target for ${SECONDS_PER_TARGET}s, $JOBS at a time"
declare -A PIDS=()
failed=()
finish() {
    local target="$1"
    if wait "${PIDS[$target]}"; then
        local runs
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG_DIR/$target.log" | tail -1)"
        printf '%-14s ok   %s executions\n' "$target" "${runs:-?}"
    else
        printf '%-14s FAILED (log: %s)\n' "$target" "$LOG_DIR/$target.log"
        grep -E 'panicked at|ERROR: libFuzzer|deadly signal|SUMMARY' "$LOG_DIR/$target.log" | head -5 || true
        grep -E 'Test unit written to|artifact_prefix' "$LOG_DIR/$target.log" | sed 's/^/    reproducer: /' || true
        echo "    replay: $BIN_DIR/$target <reproducer>"
        failed+=("$target")
    fi
    unset 'PIDS[$target]'
}

running=()
for target in "${TARGETS[@]}"; do
    run_target "$target" &
    PIDS[$target]=$!
    running+=("$target")
    if [ "${#running[@]}" -ge "$JOBS" ]; then
        finish "${running[0]}"
        running=("${running[@]:1}")
    fi
done
for target in "${running[@]}"; do
    finish "$target"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found failures in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing: ${#TARGETS[@]} passed, 0 failed"
