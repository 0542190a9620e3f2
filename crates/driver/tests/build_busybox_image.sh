#!/bin/sh
# Builds the image the driver tests run, from the host's static busybox and nothing else:
# FROM scratch needs no registry. Usage: build_busybox_image.sh [IMAGE] (default
# atoll-test-busybox:latest). The busybox binary comes from $BUSYBOX, default /bin/busybox
# (Debian's busybox-static package); it must be statically linked.
set -eu

image="${1:-atoll-test-busybox:latest}"
busybox="${BUSYBOX:-/bin/busybox}"

if [ ! -x "$busybox" ]; then
    echo "build_busybox_image: $busybox not found; install Debian's busybox-static package" >&2
    exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "build_busybox_image: $busybox is dynamically linked; a FROM scratch image needs busybox-static" >&2
    exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/www"
cp "$busybox" "$context/bin/busybox"
echo "atoll-test-busybox" >"$context/www/index.html"
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY bin/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
ENV PATH=/bin
LABEL atoll.test-image="true"
DOCKERFILE

docker build --quiet --tag "$image" "$context" >/dev/null
echo "built $image"
