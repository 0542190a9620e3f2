#!/usr/bin/env bash
# Build, lint and test atoll: the one command for developers and CI.
#
#   scripts/test.sh [extra pytest arguments]
#
# On a fresh Debian 12 machine it first installs what the tests need (only
# what is missing), then runs rustfmt, clippy, the Rust tests, and the end-to-end
# suite in tests/e2e against target/debug/atoll (the debug build the Rust tests
# share): first every test against `atoll dev`, then the client tests (modules
# marked client_api) again against a client node of a 3-server cluster.
# Between the Rust tests and the end-to-end suite, scripts/fuzz.sh runs every fuzz
# target for FUZZ_SECONDS (default 30) seconds from its seed corpus.
#
# With CI=true a prerequisite that cannot be installed is an error; locally
# the script warns and the affected end-to-end tests skip.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

log() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

is_ci() {
    case "${CI:-}" in
    1 | true | TRUE | True | yes) return 0 ;;
    *) return 1 ;;
    esac
}

# A prerequisite is missing: fatal under CI, a warning otherwise.
missing() {
    if is_ci; then
        die "$*"
    fi
    warn "$*"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

have_cmd() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# ---------------------------------------------------------------------------
# Debian packages: command -> package
APT_NEEDS=(
    "python3:python3"
    "dig:bind9-dnsutils"
    "dnsperf:dnsperf"
    "dnsmasq:dnsmasq-base"
    "prometheus:prometheus"
    "busybox:busybox-static"
    # Network partitions between namespaces (tests/e2e/netns_util.py).
    "ip:iproute2"
    "iptables:iptables"
    "g++:g++"
    # A self-signed certificate for the HTTPS check test (tests/e2e/test_check_types.py).
    "openssl:openssl"
    # An HTTPS client with client certificates (tests/e2e/test_tls.py).
    "curl:curl"
    # A private engine for the engine-restart test (tests/e2e/test_docker_engine_restart.py).
    "dockerd:docker.io"
    # The compose deployment (tests/e2e/test_compose.py).
    "docker-compose:docker-compose"
    # Small tmpfs data dirs for the disk-fault tests.
    "mount:mount"
    # The web UI in a real browser (tests/e2e/ui_util.py).
    "chromium:chromium"
    "chromedriver:chromium-driver"
)

install_debian_packages() {
    local want=() entry cmd pkg
    for entry in "${APT_NEEDS[@]}"; do
        cmd="${entry%%:*}"
        pkg="${entry#*:}"
        have_cmd "$cmd" || want+=("$pkg")
    done
    if have_cmd python3 && ! python3 -m pip --version >/dev/null 2>&1; then
        want+=(python3-pip)
    fi
    if [ "${#want[@]}" -eq 0 ]; then
        return 0
    fi
    log "installing Debian packages: ${want[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        missing "apt-get not available; install by hand: ${want[*]}"
        return 0
    fi
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}"; then
        missing "could not install: ${want[*]} (need root or passwordless sudo)"
        return 0
    fi
    for entry in "${APT_NEEDS[@]}"; do
        cmd="${entry%%:*}"
        have_cmd "$cmd" || missing "command '$cmd' still missing after installing ${entry#*:}"
    done
}

# ---------------------------------------------------------------------------
# Python packages (distribution names, as pip knows them)
PIP_NEEDS=(py-consul dnspython pytest requests marathon selenium)

install_python_packages() {
    have_cmd python3 || {
        missing "python3 not found"
        return 0
    }
    local want=() dist
    for dist in "${PIP_NEEDS[@]}"; do
        if ! python3 -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" >/dev/null 2>&1; then
            want+=("$dist")
        fi
    done
    if [ "${#want[@]}" -eq 0 ]; then
        return 0
    fi
    log "installing Python packages: ${want[*]}"
    local flags=(--quiet --disable-pip-version-check)
    # Debian's own python3 refuses system-wide pip installs (PEP 668).
    if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")))'; then
        flags+=(--break-system-packages)
    fi
    if ! python3 -m pip install "${flags[@]}" "${want[@]}"; then
        missing "pip could not install: ${want[*]}"
        return 0
    fi
    # The old python-consul also provides the "consul" module; make sure the
    # one we import is py-consul.
    python3 -c 'import importlib.metadata as m; m.version("py-consul"); m.version("marathon"); import consul, dns.message, pytest, requests, selenium' ||
        missing "Python packages still not importable: ${want[*]}"
}

# ---------------------------------------------------------------------------
# Rust toolchain
check_rust() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            log "adding rustfmt and clippy"
            rustup component add rustfmt clippy
        fi
    fi
    cargo fmt --version >/dev/null 2>&1 || die "cargo fmt not available"
    cargo clippy --version >/dev/null 2>&1 || die "cargo clippy not available"
}

log "checking prerequisites"
install_debian_packages
install_python_packages
check_rust

log "cargo fmt --all -- --check"
cargo fmt --all -- --check

log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# The unit and property tests, then the binary the end-to-end suite runs, both in the debug
# profile, which builds the dependencies once for both: from a fresh clone on 2 cores the test
# binaries built in 145 s and the binary in 52 s more, where an optimised binary for the suite
# took another 460 s to build.
log "cargo test --workspace"
cargo test --workspace
log "cargo build --bin atoll"
cargo build -p atoll --bin atoll

# libFuzzer targets (fuzz/): a crash fails here and names its reproducer.
log "fuzzing (scripts/fuzz.sh, ${FUZZ_SECONDS:-30}s per target)"
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

ATOLL_BIN="${ATOLL_BIN:-$REPO_ROOT/target/debug/atoll}"
[ -x "$ATOLL_BIN" ] || die "no atoll binary at $ATOLL_BIN after the build"
export ATOLL_BIN

log "end-to-end tests (tests/e2e)"
ATOLL_E2E_TARGET=dev python3 -m pytest -q -p no:cacheprovider --durations=15 tests/e2e "$@"

# What a Consul client sees must not change when it talks to a client node of
# a cluster instead of a single dev agent: the same tests, every request to
# the client node of 3 servers + 1 client (see tests/e2e/conftest.py).
log "end-to-end client tests against a cluster (ATOLL_E2E_TARGET=cluster)"
status=0
ATOLL_E2E_TARGET=cluster python3 -m pytest -q -p no:cacheprovider -m client_api tests/e2e "$@" || status=$?
# Extra arguments (-k ...) may select no client test at all: pytest's 5.
if [ "$status" -eq 5 ] && [ "$#" -gt 0 ]; then
    warn "the extra pytest arguments select no client_api test for the cluster run"
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi
log "all checks passed"
