#!/usr/bin/env bash
# Prepare what `docker build -f docker/Dockerfile` needs on a machine without an image registry.
#
# 1. The base image. When `python:3.11-slim` is neither present nor pullable, build a local
#    stand-in: debootstrap Debian bookworm (minbase + python3, python3-venv, python3-pip,
#    ca-certificates; bookworm's python3 is 3.11), copy the host's CA bundle in (so TLS through
#    an egress proxy works), and `docker import` it as python:3.11-slim. The rootfs tarball is
#    cached, so a re-run only imports. Skipped when the image exists.
# 2. The wheels. Copy the host's local wheels (pip's find-links, e.g. /opt/wheels with torch's
#    CPU build) into docker/wheels/, which the Dockerfile installs from before PyPI.
#
# Idempotent. Environment (all optional):
#   FLEET_BASE_IMAGE    tag to provide                  (default python:3.11-slim)
#   FLEET_CACHE         cache dir for the rootfs tarball (default /var/cache/fleet)
#   FLEET_DEBIAN_MIRROR Debian mirror for debootstrap    (default: the host's apt mirror)
#   FLEET_HOST_WHEELS   dirs of host wheels to stage     (default: pip's find-links, /opt/wheels)
#   FLEET_PULL=0        do not try `docker pull` first
#   FLEET_FORCE=1       rebuild the stand-in even when the image or tarball exists
#
# Usage: scripts/base_image.sh [all|base|wheels]   (default all)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
IMAGE="${FLEET_BASE_IMAGE:-python:3.11-slim}"
CACHE="${FLEET_CACHE:-/var/cache/fleet}"
SUITE=bookworm
TARBALL="$CACHE/rootfs-$SUITE-python3.tar.gz"
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
HOST_CA=/etc/ssl/certs/ca-certificates.crt
WHEELS_DIR="$REPO/docker/wheels"

say() { echo "base_image: $*" >&2; }
die() { say "error: $*"; exit 1; }

host_mirror() {
    local m=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        m="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' \
            /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m="$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

build_rootfs() {
    command -v debootstrap >/dev/null 2>&1 \
        || die "debootstrap missing: apt-get install -y debootstrap (or run scripts/docker_engine.sh)"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
    local mirror rootfs
    mirror="${FLEET_DEBIAN_MIRROR:-$(host_mirror)}"
    mkdir -p "$CACHE"
    rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    # Cleans up on failure too; the tarball is written atomically (tmp + mv).
    trap 'rm -rf "$rootfs" "$TARBALL.tmp"' EXIT
    say "debootstrap $SUITE (minbase + $PACKAGES) from $mirror"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" \
        >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed; see $CACHE/debootstrap.log"; }
    if [ -f "$HOST_CA" ]; then
        cp "$HOST_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    else
        say "warning: no $HOST_CA on the host; the image keeps Debian's CA bundle"
    fi
    ln -sf python3 "$rootfs/usr/bin/python"
    [ -e "$rootfs/usr/bin/pip" ] || ln -sf pip3 "$rootfs/usr/bin/pip"
    # Slim it like the official image: no apt caches, lists, docs or man pages.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/debootstrap
    tar --numeric-owner -C "$rootfs" -czf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$rootfs"
    trap - EXIT
    say "cached rootfs: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
}

base() {
    command -v docker >/dev/null 2>&1 || die "docker missing: run scripts/docker_engine.sh"
    docker info >/dev/null 2>&1 || die "no Docker engine answers: run scripts/docker_engine.sh"
    if [ "${FLEET_FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
        say "$IMAGE present; nothing to do"
        return 0
    fi
    if [ "${FLEET_FORCE:-0}" != 1 ] && [ "${FLEET_PULL:-1}" != 0 ]; then
        say "trying docker pull $IMAGE"
        if timeout 60 docker pull -q "$IMAGE" >/dev/null 2>&1; then
            say "pulled $IMAGE"; return 0
        fi
        say "no registry answers; building a local stand-in for $IMAGE"
    fi
    if [ "${FLEET_FORCE:-0}" = 1 ] || [ ! -s "$TARBALL" ]; then
        build_rootfs
    else
        say "using cached rootfs $TARBALL"
    fi
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'LABEL org.opencontainers.image.description="fleet: local stand-in for python:3.11-slim (debootstrap bookworm)"' \
        --change 'LABEL fleet.base.standin=true' \
        --change 'CMD ["python3"]' \
        -m "fleet stand-in for $IMAGE (debootstrap $SUITE)" \
        "$TARBALL" "$IMAGE" >/dev/null
    say "imported $IMAGE: $(docker run --rm "$IMAGE" python --version 2>&1)"
}

# The host's own wheel dirs: pip's find-links (from pip config), else /opt/wheels.
host_wheel_dirs() {
    if [ -n "${FLEET_HOST_WHEELS:-}" ]; then echo "$FLEET_HOST_WHEELS"; return; fi
    local dirs=""
    if command -v pip >/dev/null 2>&1; then
        dirs="$(pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.find-links='\(.*\)'$/\1/p" \
            | tr ' ' '\n' | sed 's#^file://##' | sort -u | tr '\n' ' ')"
    fi
    echo "${dirs:-/opt/wheels}"
}

wheels() {
    mkdir -p "$WHEELS_DIR"
    local d n=0
    for d in $(host_wheel_dirs); do
        [ -d "$d" ] || continue
        for w in "$d"/*.whl; do
            [ -e "$w" ] || continue
            # Hard link when on the same filesystem (instant, no space), else copy; skip if same.
            if [ ! -e "$WHEELS_DIR/$(basename "$w")" ]; then
                ln "$w" "$WHEELS_DIR/" 2>/dev/null || cp "$w" "$WHEELS_DIR/"
            fi
            n=$((n + 1))
        done
    done
    say "docker/wheels: $n host wheel(s) staged ($(du -sh "$WHEELS_DIR" | cut -f1))"
}

case "${1:-all}" in
    all) base; wheels ;;
    base) base ;;
    wheels) wheels ;;
    *) die "usage: $0 [all|base|wheels]" ;;
esac
