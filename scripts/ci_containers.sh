#!/usr/bin/env bash
# What CI runs before the container tests: a Docker engine, the base image, the fleet images and
# the Compose secret files. Idempotent: each step does nothing (or only what changed) when it
# is already done. Prints each step's duration.
#
# Usage: scripts/ci_containers.sh [all|engine|images|env]    (default all)
#   engine  scripts/docker_engine.sh (install + start dockerd when none answers)
#   images  scripts/base_image.sh, then docker build of control, worker-torch, worker-tf and
#           worker (both frameworks: the image the docker driver runs)
#   env     docker/secrets/ with generated secrets (0600 files), unless it exists
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
cd "$REPO"

say() { echo "ci_containers: $*" >&2; }

step() {   # step NAME COMMAND...: run it, print how long it took
    local name="$1"; shift
    local t0 ms; t0="$(date +%s%N)"
    "$@"
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    say "$(printf '%-20s %4d.%01d s' "$name" $((ms / 1000)) $((ms % 1000 / 100)))"
}

build() {  # build TARGET TAG
    docker build -q --network host -f docker/Dockerfile --target "$1" -t "$2" . >/dev/null
}

# docker/secrets/: the files compose.yaml hands its services as secrets (never environment).
# Owned by the images' user (uid 10001) when run as root, since Compose bind-mounts them as they
# are; otherwise 0644 inside the 0700 folder (only this user can reach them on the host).
# The S3 keys of compose.yaml's `s3` service, in AWS's credentials format (what the service
# takes, and FLEET_S3_CREDENTIALS_FILE for master and workers); also into a folder written before
# the service existed. The operator on this host reaches it at 127.0.0.1:${FLEET_S3_PORT:-18333}.
s3_secret() {
    local d=docker/secrets
    if [ -s "$d/s3_credentials" ]; then return 0; fi
    (
        umask 077
        mkdir -p "$d"
        python3 -c 'import secrets, string
a = string.ascii_uppercase + string.digits
print("[default]\naws_access_key_id = FLEET%s\naws_secret_access_key = %s" % (
    "".join(secrets.choice(a) for _ in range(15)), secrets.token_urlsafe(30)))' \
            >"$d/s3_credentials"
    )
    if [ "$(id -u)" -eq 0 ]; then
        chown 10001:10001 "$d/s3_credentials"
    else
        chmod 0644 "$d/s3_credentials"
    fi
    say "wrote $d/s3_credentials"
}

compose_secrets() {
    local d=docker/secrets
    s3_secret
    if [ -s "$d/redis_conf" ]; then say "$d exists; kept"; return 0; fi
    local pw flower
    pw="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
    flower="$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
    (
        umask 077
        mkdir -p "$d"
        printf 'requirepass %s\n' "$pw" >"$d/redis_conf"
        printf 'redis://:%s@redis:6379/0\n' "$pw" >"$d/redis_url"
        printf "basic_auth = ['admin:%s']\n" "$flower" >"$d/flower_config"
        # for the operator on this host (not mounted anywhere): the password alone, and the URL
        # of the published port (FLEET_REDIS_URL_FILE=docker/secrets/host_redis_url fleet nodes)
        printf '%s\n' "$pw" >"$d/redis_password"
        printf '%s\n' "$flower" >"$d/flower_password"
        printf 'redis://:%s@127.0.0.1:%s/0\n' "$pw" "${FLEET_REDIS_PORT:-16379}" \
            >"$d/host_redis_url"
    )
    if [ "$(id -u)" -eq 0 ]; then
        chown 10001:10001 "$d/redis_conf" "$d/redis_url" "$d/flower_config"
    else
        chmod 0644 "$d/redis_conf" "$d/redis_url" "$d/flower_config"
    fi
    say "wrote $d (secret files)"
}

engine() { step engine scripts/docker_engine.sh; }

images() {
    step base_image scripts/base_image.sh
    step build-control build control fleet/control
    step build-worker-torch build worker-torch fleet/worker-torch
    step build-worker-tf build worker-tf fleet/worker-tf
    step build-worker build worker fleet/worker
    # Each rebuild after a code change leaves the images it replaced behind, untagged, each with
    # its own copy of the venv (gigabytes): prune those. Only final images carry the label, so
    # the untagged dependency stages, the build cache of the legacy builder, stay.
    step prune-replaced docker image prune -f --filter label=org.fleet.image=final
}

t_all="$(date +%s)"
case "${1:-all}" in
    all) engine; images; step compose-secrets compose_secrets ;;
    engine) engine ;;
    images) images ;;
    env) compose_secrets ;;
    *) say "usage: $0 [all|engine|images|env]"; exit 2 ;;
esac
say "done in $(( $(date +%s) - t_all )) s"
