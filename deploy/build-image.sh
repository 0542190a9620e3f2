#!/usr/bin/env bash
# Builds the local image `atoll:dev` from target/release/atoll (no registry needed): the
# binary plus the shared libraries ldd reports, on a scratch base.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
binary="$repo/target/release/atoll"
if [ ! -x "$binary" ]; then
    (cd "$repo" && cargo build --release)
fi
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/data"
cp "$binary" "$rootfs/usr/local/bin/atoll"
# Every library the binary links, at the same path, plus the dynamic loader.
ldd "$binary" | awk '/=>/ { print $3; next } $1 ~ /^\// { print $1 }' | while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
cp "$here/Dockerfile" "$context/Dockerfile"
docker build -q -t atoll:dev "$context"
echo "built image atoll:dev"
