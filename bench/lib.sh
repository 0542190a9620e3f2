# Shared helpers for the shell benchmarks. Source it; do not run it.
#
# Everything here talks to 127.0.0.1 only. Processes started through
# start_bg are remembered by PID and stopped by stop_all (install it as an
# EXIT trap); nothing else is ever signalled.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
ATOLL_BIN="${ATOLL_BIN:-$REPO_ROOT/target/release/atoll}"

BG_PIDS=()
WORK_DIR=""

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# A scratch directory removed by stop_all.
make_workdir() {
    WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/atoll-bench.XXXXXX")"
}

# A port free for both TCP and UDP on 127.0.0.1 (DNS servers bind both).
free_port() {
    python3 - <<'EOF'
import socket
for _ in range(200):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close()
        continue
    u.close()
    t.close()
    print(port)
    break
else:
    raise SystemExit("no free port")
EOF
}

# Stop one PID we started: TERM, up to 10 s grace, then KILL.
stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    local kept=() p
    for p in "${BG_PIDS[@]}"; do
        [ "$p" = "$pid" ] || kept+=("$p")
    done
    BG_PIDS=("${kept[@]}")
}

stop_all() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [ -n "$WORK_DIR" ] && [ -d "$WORK_DIR" ]; then
        rm -rf "$WORK_DIR"
    fi
}

# start_atoll HTTP_PORT DNS_PORT LOGFILE: sets ATOLL_PID, waits until ready.
# ATOLL_ARGS adds flags to `atoll dev` (word-split).
start_atoll() {
    local http_port="$1" dns_port="$2" logfile="$3"
    [ -x "$ATOLL_BIN" ] || die "atoll binary not found at $ATOLL_BIN (build it or set ATOLL_BIN)"
    # shellcheck disable=SC2086
    "$ATOLL_BIN" dev --http-addr "127.0.0.1:$http_port" --dns-addr "127.0.0.1:$dns_port" \
        --node bench --serf-wan-port 0 ${ATOLL_ARGS:-} >"$logfile" 2>&1 &
    ATOLL_PID=$!
    BG_PIDS+=("$ATOLL_PID")
    ATOLL_HTTP="http://127.0.0.1:$http_port"
    wait_ready "$ATOLL_HTTP" "$ATOLL_PID" "$logfile"
}

# Ready when /v1/status/leader returns a non-empty JSON string (30 s bound).
wait_ready() {
    local url="$1" pid="$2" logfile="$3" body i
    for i in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "atoll exited before becoming ready"
        fi
        body="$(curl --noproxy "*" -fsS --max-time 1 "$url/v1/status/leader" 2>/dev/null || true)"
        if [ -n "$body" ] && [ "$body" != '""' ]; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "atoll not ready after 30 s"
}

# register_service HTTP_URL ID NAME ADDRESS PORT
register_service() {
    curl --noproxy "*" -fsS --max-time 10 -X PUT "$1/v1/agent/service/register" \
        -d "{\"ID\":\"$2\",\"Name\":\"$3\",\"Address\":\"$4\",\"Port\":$5}" >/dev/null
}

# proc_kb PID FIELD: a /proc/PID/status field (VmRSS, VmHWM, ...) in kB.
proc_kb() {
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

kb_to_mb() {
    awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'
}
