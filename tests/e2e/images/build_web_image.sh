#!/bin/sh
# Builds a tiny web server image for the end-to-end app tests, without any registry:
# FROM scratch plus the host's static busybox (Debian's busybox-static package) as
# /bin/busybox and /bin/sh, and /www/index.html holding a version marker.
#
#   build_web_image.sh IMAGE MARKER
#
# The image serves /www on port 8080 by default (`busybox httpd -f -p 8080 -h /www`).
# $BUSYBOX overrides the busybox binary (default: /bin/busybox); it must be static.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 IMAGE MARKER" >&2
    exit 2
fi
image="$1"
marker="$2"
busybox="${BUSYBOX:-/bin/busybox}"

if [ ! -x "$busybox" ]; then
    echo "build_web_image: $busybox not found; install Debian's busybox-static package" >&2
    exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
    echo "build_web_image: $busybox is dynamically linked; a FROM scratch image needs busybox-static" >&2
    exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/www"
cp "$busybox" "$context/bin/busybox"
cp "$busybox" "$context/bin/sh"
printf '%s\n' "$marker" >"$context/www/index.html"
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY bin/busybox /bin/busybox
COPY bin/sh /bin/sh
COPY www /www
ENV PATH=/bin
LABEL atoll.e2e-image="true"
EXPOSE 8080
CMD ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
DOCKERFILE

docker build --quiet --tag "$image" "$context" >/dev/null
echo "built $image"
