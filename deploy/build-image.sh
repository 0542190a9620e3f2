#!/usr/bin/env bash
# Builds the local image `atoll:dev` (no registry needed): the atoll binary, the shared
# libraries ldd reports, and a shell for exec tasks (Debian's static busybox with its applet
# links in /bin), on a scratch base.
#
#   deploy/build-image.sh
#
# ATOLL_BIN picks the binary (default: target/release/atoll, built when missing),
# ATOLL_IMAGE the image's tag (default: atoll:dev) and BUSYBOX the static busybox
# (default: /bin/busybox, from Debian's busybox-static package).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
binary="${ATOLL_BIN:-$repo/target/release/atoll}"
image="${ATOLL_IMAGE:-atoll:dev}"
busybox="${BUSYBOX:-/bin/busybox}"
if [ ! -x "$binary" ]; then
    if [ -n "${ATOLL_BIN:-}" ]; then
        echo "build-image: ATOLL_BIN=$binary is not an executable" >&2
        exit 1
    fi
    (cd "$repo" && cargo build --release)
fi
# ldd fails on a static binary: that is what the scratch image needs.
if [ ! -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
    echo "build-image: $busybox must be a static busybox (Debian's busybox-static package)" >&2
    exit 1
fi
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/bin" "$rootfs/tmp" "$rootfs/data"
chmod 1777 "$rootfs/tmp"
cp "$binary" "$rootfs/usr/local/bin/atoll"
# Every library the binary links, at the same path, plus the dynamic loader.
ldd "$binary" | awk '/=>/ { print $3; next } $1 ~ /^\// { print $1 }' | while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
# The shell exec tasks and script checks run under (/bin/sh) and the usual commands, all
# one static busybox.
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    if [ ! -e "$rootfs/bin/$applet" ]; then
        ln -s busybox "$rootfs/bin/$applet"
    fi
done
[ -e "$rootfs/bin/sh" ] || {
    echo "build-image: $busybox has no sh applet" >&2
    exit 1
}
cp "$here/Dockerfile" "$context/Dockerfile"
docker build -q -t "$image" "$context" >/dev/null
echo "built image $image"
