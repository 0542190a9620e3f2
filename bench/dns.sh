#!/usr/bin/env bash
# DNS throughput and latency: atoll's DNS interface against dnsmasq serving
# the same records from a hosts file, both measured with dnsperf.
#
#   bench/dns.sh
#
# Both servers answer web.service.consul with three A records and three SRV
# records (targets with glue A records in the additional section). The runs
# are sequential: atoll A, atoll SRV, then dnsmasq A, dnsmasq SRV.
#
# Environment:
#   ATOLL_BIN        atoll binary (default: <repo>/target/release/atoll)
#   DURATION         seconds per dnsperf run, dnsperf -l (default: 20)
#   DNSPERF_CLIENTS  dnsperf -c (default: 4)
#   DNSPERF_QPS      dnsperf -Q; unset means no rate limit
#   DNSPERF_ARGS     extra dnsperf arguments, word-split
#   TARGETS          which servers to measure (default: "atoll dnsmasq")
#   DNSMASQ_BIN      dnsmasq binary (default: /usr/sbin/dnsmasq)
#   DNSMASQ_CACHE    dnsmasq --cache-size (default: 1000)
set -euo pipefail

# shellcheck source=lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

DURATION="${DURATION:-20}"
DNSPERF_CLIENTS="${DNSPERF_CLIENTS:-4}"
DNSPERF_QPS="${DNSPERF_QPS:-}"
DNSPERF_ARGS="${DNSPERF_ARGS:-}"
TARGETS="${TARGETS:-atoll dnsmasq}"
DNSMASQ_BIN="${DNSMASQ_BIN:-/usr/sbin/dnsmasq}"
DNSMASQ_CACHE="${DNSMASQ_CACHE:-1000}"

NAME="web.service.consul"
ADDRS=(127.0.0.2 127.0.0.3 127.0.0.4)
SRV_PORT=8080

command -v dnsperf >/dev/null || die "dnsperf not installed"
command -v dig >/dev/null || die "dig not installed"

trap stop_all EXIT
trap 'exit 130' INT TERM
make_workdir

printf '%s A\n' "$NAME" >"$WORK_DIR/query-a.txt"
printf '%s SRV\n' "$NAME" >"$WORK_DIR/query-srv.txt"

RESULTS=()

# The SRV target name atoll uses for an address: 127.0.0.2 -> 7f000002.addr.dc1.consul
addr_target() {
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    printf '%02x%02x%02x%02x.addr.dc1.consul' "$a" "$b" "$c" "$d"
}

# Show what the server answers, and refuse to measure anything but the
# expected three records: a fast REFUSED is not a result.
check_answer() {
    local target="$1" port="$2" qtype="$3" out answers
    out="$(dig +tries=1 +time=2 @127.0.0.1 -p "$port" "$NAME" "$qtype" 2>&1 || true)"
    printf '    %s: %s\n' "$target $NAME $qtype" \
        "$(printf '%s\n' "$out" | grep -E '^;; ->>HEADER|^;; flags' |
            sed -E 's/^;; //; s/->>HEADER<<- //; s/opcode: QUERY, //; s/id: [0-9]+//' | tr '\n' ' ')" >&2
    answers="$(printf '%s\n' "$out" | grep -E "^$NAME\.[[:space:]]" | awk -v t="$qtype" '$4 == t' | wc -l)"
    if ! printf '%s\n' "$out" | grep -q 'status: NOERROR' || [ "$answers" -ne "${#ADDRS[@]}" ]; then
        printf '%s\n' "$out" >&2
        die "$target: expected NOERROR with ${#ADDRS[@]} $qtype records for $NAME"
    fi
}

# run_dnsperf TARGET QTYPE PORT QUERYFILE
run_dnsperf() {
    local target="$1" qtype="$2" port="$3" qfile="$4" out qps avg lost sent
    local args=(-s 127.0.0.1 -p "$port" -d "$qfile" -c "$DNSPERF_CLIENTS" -l "$DURATION")
    if [ -n "$DNSPERF_QPS" ]; then
        args+=(-Q "$DNSPERF_QPS")
    fi
    # shellcheck disable=SC2206
    args+=($DNSPERF_ARGS)
    log "dnsperf ${args[*]}  ($target, $qtype)"
    out="$WORK_DIR/dnsperf-$target-$qtype.txt"
    timeout "$((DURATION + 60))" dnsperf "${args[@]}" >"$out" 2>&1 || {
        cat "$out" >&2
        die "dnsperf failed against $target"
    }
    sed -n '/Statistics:/,$p' "$out" | sed 's/^/    /' >&2
    sent="$(awk -F: '/Queries sent:/ { gsub(/ /, "", $2); print $2 }' "$out")"
    qps="$(awk -F: '/Queries per second:/ { printf "%.0f", $2 }' "$out")"
    avg="$(awk '/Average Latency \(s\):/ { printf "%.3f", $4 * 1000; exit }' "$out")"
    lost="$(awk '/Queries lost:/ { print $3, $4 }' "$out")"
    RESULTS+=("$target|$qtype|${qps:-?}|${avg:-?}|${lost:-?}|${sent:-?}")
}

bench_atoll() {
    local http_port dns_port i
    http_port="$(free_port)"
    dns_port="$(free_port)"
    while [ "$dns_port" = "$http_port" ]; do dns_port="$(free_port)"; done
    log "starting atoll: $ATOLL_BIN (http 127.0.0.1:$http_port, dns 127.0.0.1:$dns_port)"
    start_atoll "$http_port" "$dns_port" "$WORK_DIR/atoll.log"
    for i in "${!ADDRS[@]}"; do
        register_service "$ATOLL_HTTP" "web$((i + 1))" web "${ADDRS[$i]}" "$SRV_PORT"
    done
    check_answer atoll "$dns_port" A
    check_answer atoll "$dns_port" SRV
    run_dnsperf atoll A "$dns_port" "$WORK_DIR/query-a.txt"
    run_dnsperf atoll SRV "$dns_port" "$WORK_DIR/query-srv.txt"
    stop_pid "$ATOLL_PID"
}

bench_dnsmasq() {
    local port pid i a srv_args=()
    [ -x "$DNSMASQ_BIN" ] || die "dnsmasq not found at $DNSMASQ_BIN (set DNSMASQ_BIN)"
    port="$(free_port)"
    # dnsmasq started as root reads the hosts file after dropping to nobody.
    chmod 755 "$WORK_DIR"
    : >"$WORK_DIR/hosts"
    chmod 644 "$WORK_DIR/hosts"
    for i in "${!ADDRS[@]}"; do
        a="${ADDRS[$i]}"
        printf '%s %s\n' "$a" "$NAME" >>"$WORK_DIR/hosts"
        printf '%s %s\n' "$a" "$(addr_target "$a")" >>"$WORK_DIR/hosts"
        srv_args+=("--srv-host=$NAME,$(addr_target "$a"),$SRV_PORT,1,1")
    done
    log "starting dnsmasq: $DNSMASQ_BIN (dns 127.0.0.1:$port)"
    "$DNSMASQ_BIN" --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
        --addn-hosts="$WORK_DIR/hosts" "${srv_args[@]}" \
        --port="$port" --listen-address=127.0.0.1 --bind-interfaces \
        --cache-size="$DNSMASQ_CACHE" --pid-file="$WORK_DIR/dnsmasq.pid" \
        --log-facility=- >"$WORK_DIR/dnsmasq.log" 2>&1 &
    pid=$!
    BG_PIDS+=("$pid")
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || {
            cat "$WORK_DIR/dnsmasq.log" >&2
            die "dnsmasq exited"
        }
        if dig +tries=1 +time=1 +short @127.0.0.1 -p "$port" "$NAME" A 2>/dev/null | grep -q .; then
            break
        fi
        sleep 0.1
    done
    check_answer dnsmasq "$port" A
    check_answer dnsmasq "$port" SRV
    run_dnsperf dnsmasq A "$port" "$WORK_DIR/query-a.txt"
    run_dnsperf dnsmasq SRV "$port" "$WORK_DIR/query-srv.txt"
    stop_pid "$pid"
}

for t in $TARGETS; do
    case "$t" in
    atoll) bench_atoll ;;
    dnsmasq) bench_dnsmasq ;;
    *) die "unknown target $t (expected atoll or dnsmasq)" ;;
    esac
done

qps_note="unlimited"
[ -n "$DNSPERF_QPS" ] && qps_note="$DNSPERF_QPS"
printf '\nDNS: dnsperf -c %s -l %s %s(rate limit %s), %s CPUs shared by server and dnsperf\n' \
    "$DNSPERF_CLIENTS" "$DURATION" "${DNSPERF_ARGS:+$DNSPERF_ARGS }" "$qps_note" "$(nproc)"
printf '%-8s  %-5s  %12s  %16s  %s\n' target query queries/s "avg latency ms" "lost"
for r in "${RESULTS[@]}"; do
    IFS='|' read -r t q qps avg lost sent <<<"$r"
    printf '%-8s  %-5s  %12s  %16s  %s of %s\n' "$t" "$q" "$qps" "$avg" "$lost" "$sent"
done
