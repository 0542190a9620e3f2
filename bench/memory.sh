#!/usr/bin/env bash
# Memory footprint of a single-node atoll: idle, then holding 100 services.
#
#   bench/memory.sh
#
# Starts `atoll dev` on free ports, waits until it is ready plus SETTLE
# seconds, and prints VmRSS (resident now) and VmHWM (peak resident) from
# /proc/PID/status. Then registers SERVICES services, waits SETTLE seconds
# again and prints both once more.
#
# Environment: ATOLL_BIN, SETTLE (default 2), SERVICES (default 100).
set -euo pipefail

# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SETTLE="${SETTLE:-2}"
SERVICES="${SERVICES:-100}"

trap stop_all EXIT
trap 'exit 130' INT TERM
make_workdir

http_port="$(free_port)"
dns_port="$(free_port)"
while [ "$dns_port" = "$http_port" ]; do dns_port="$(free_port)"; done
log "starting atoll: $ATOLL_BIN (http 127.0.0.1:$http_port, dns 127.0.0.1:$dns_port)"
start_atoll "$http_port" "$dns_port" "$WORK_DIR/atoll.log"
sleep "$SETTLE"

rows=()
sample() {
    local label="$1" rss hwm threads
    rss="$(proc_kb "$ATOLL_PID" VmRSS)"
    hwm="$(proc_kb "$ATOLL_PID" VmHWM)"
    threads="$(proc_kb "$ATOLL_PID" Threads)"
    rows+=("$label|$(kb_to_mb "$rss")|$(kb_to_mb "$hwm")|$threads")
}

sample "idle (ready + ${SETTLE} s)"

log "registering $SERVICES services"
for i in $(seq 1 "$SERVICES"); do
    register_service "$ATOLL_HTTP" "mem-$i" "mem-$((i % 10))" 127.0.0.2 "$((20000 + i))"
done
count="$(curl --noproxy "*" -fsS --max-time 10 "$ATOLL_HTTP/v1/agent/services" |
    python3 -c 'import json,sys; print(sum(1 for k in json.load(sys.stdin) if k.startswith("mem-")))')"
[ "$count" = "$SERVICES" ] || log "warning: $count of $SERVICES services visible in /v1/agent/services"
sleep "$SETTLE"
sample "$SERVICES services (+ ${SETTLE} s)"

printf '\natoll memory (pid %s)\n' "$ATOLL_PID"
printf '%-26s  %10s  %10s  %7s\n' state "VmRSS MB" "VmHWM MB" threads
for r in "${rows[@]}"; do
    IFS='|' read -r label rss hwm threads <<<"$r"
    printf '%-26s  %10s  %10s  %7s\n' "$label" "$rss" "$hwm" "$threads"
done
