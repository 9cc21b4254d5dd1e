#!/bin/sh
# Builds the release `fleet` binary and the image fleet:latest from
# deploy/docker/Dockerfile (FROM scratch: no base image is pulled).
#
#   deploy/docker/build.sh                 # cargo build --release, then the image
#   FLEET_BIN=path/to/fleet build.sh       # package this binary instead
#   FLEET_EXTRA_BINS="a b" build.sh        # also put these executables in /usr/local/bin
#   FLEET_IMAGE=registry/fleet:1 build.sh  # another tag
#
# The image holds the binaries, every shared library they link (from ldd,
# at the same paths, the dynamic loader included) and a /tmp. A driver
# needs nothing in the image: nodes fetch its executable from the head.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
image=${FLEET_IMAGE:-fleet:latest}

if [ -z "${FLEET_BIN:-}" ]; then
    (cd "$root" && cargo build --release -p fleet-cli --bin fleet)
    FLEET_BIN=$root/target/release/fleet
fi
[ -x "$FLEET_BIN" ] || { echo "build.sh: $FLEET_BIN is not an executable; set FLEET_BIN or let cargo build it" >&2; exit 1; }
command -v docker >/dev/null || { echo "build.sh: docker not found; install docker.io (Debian) or docker-ce" >&2; exit 1; }

stage=$(mktemp -d "${TMPDIR:-/tmp}/fleet-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
rootfs=$stage/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"

# Copies a file to the same path under the image root (following links).
put() {
    mkdir -p "$rootfs$(dirname "$1")"
    cp -L "$1" "$rootfs$1"
}

# Copies what ldd says an executable links.
libs_of() {
    out=$(ldd "$1" 2>&1) || {
        case $out in
            *"not a dynamic executable"*|*"statically linked"*) return 0 ;;
            *) echo "build.sh: ldd $1: $out" >&2; exit 1 ;;
        esac
    }
    echo "$out" | while read -r first second third _; do
        case $first in /*) put "$first" ;; esac
        case $second in "=>") case $third in /*) put "$third" ;; esac ;; esac
    done
}

cp "$FLEET_BIN" "$rootfs/usr/local/bin/fleet"
libs_of "$FLEET_BIN"
for bin in ${FLEET_EXTRA_BINS:-}; do
    cp "$bin" "$rootfs/usr/local/bin/$(basename "$bin")"
    libs_of "$bin"
done

# docker.io's CLI builds with the classic builder; a newer CLI without
# buildx needs to be told to.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
docker build -q -f "$here/Dockerfile" -t "$image" "$stage" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "built $image: $((size / 1024 / 1024)) MiB ($size bytes)"
