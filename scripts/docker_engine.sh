#!/usr/bin/env bash
# Get a working Docker engine where none runs.
#
# Idempotent: when the Docker socket already answers, it does nothing. Otherwise it installs
# Debian's engine (docker.io, docker-compose, debootstrap) when missing and starts `dockerd` in
# the background with its own data root, pidfile and log, then waits until `docker info` answers.
# The engine is left running.
#
# Environment (all optional):
#   FLEET_DOCKER_ROOT      data root                       (default /var/lib/fleet-docker)
#   FLEET_DOCKER_RUN       pidfile, log and exec-root dir  (default /run/fleet-docker)
#   FLEET_DOCKER_HOST      socket dockerd listens on       (default unix:///var/run/docker.sock)
#   FLEET_DOCKER_STORAGE   storage driver: auto | overlay2 | fuse-overlayfs | vfs   (default auto)
#   FLEET_DOCKER_IPTABLES  auto | true | false             (default auto)
#   FLEET_DOCKER_TIMEOUT   seconds to wait for the engine  (default 60)
#   FLEET_NO_INSTALL=1     never run apt-get; fail when the engine is not installed
#
# Usage: scripts/docker_engine.sh [start|stop|status]
set -euo pipefail

ROOT="${FLEET_DOCKER_ROOT:-/var/lib/fleet-docker}"
RUN_DIR="${FLEET_DOCKER_RUN:-/run/fleet-docker}"
HOST="${FLEET_DOCKER_HOST:-unix:///var/run/docker.sock}"
STORAGE="${FLEET_DOCKER_STORAGE:-auto}"
IPTABLES="${FLEET_DOCKER_IPTABLES:-auto}"
TIMEOUT="${FLEET_DOCKER_TIMEOUT:-60}"
PIDFILE="$RUN_DIR/dockerd.pid"
LOG="$RUN_DIR/dockerd.log"

say() { echo "docker_engine: $*" >&2; }
die() { say "error: $*"; exit 1; }

engine_answers() {
    command -v docker >/dev/null 2>&1 && DOCKER_HOST="$HOST" docker info >/dev/null 2>&1
}

install_engine() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "${FLEET_NO_INSTALL:-0}" = 1 ] && die "missing ${missing[*]} and FLEET_NO_INSTALL=1"
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; run as root or install them with apt-get"
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # fuse-overlayfs is the fallback storage driver where the kernel's overlayfs cannot be used.
    apt-get install -y -q --no-install-recommends "${missing[@]}" fuse-overlayfs iptables \
        >/dev/null
}

# overlay2 needs the kernel's overlayfs to mount on the data root's filesystem: try it for real.
overlay_works() {
    grep -qw overlay /proc/filesystems || return 1
    local t
    t="$(mktemp -d "$ROOT/.overlay-probe.XXXXXX")"
    mkdir -p "$t/l" "$t/u" "$t/w" "$t/m"
    if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null
    then
        umount "$t/m"; rm -rf "$t"; return 0
    fi
    rm -rf "$t"; return 1
}

choose_storage() {
    if [ "$STORAGE" != auto ]; then echo "$STORAGE"; return; fi
    if overlay_works; then echo overlay2
    elif command -v fuse-overlayfs >/dev/null 2>&1 && [ -e /dev/fuse ]; then echo fuse-overlayfs
    else echo vfs
    fi
}

# Bridge networking needs NAT rules. Without iptables, containers get no outbound network
# (use --network host).
choose_iptables() {
    if [ "$IPTABLES" != auto ]; then echo "$IPTABLES"; return; fi
    if iptables -t nat -S >/dev/null 2>&1 && iptables -t filter -S >/dev/null 2>&1; then
        echo true
    else
        echo false
    fi
}

start() {
    if engine_answers; then
        say "engine already answers at $HOST; nothing to do"
        return 0
    fi
    install_engine
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found after install"
    mkdir -p "$ROOT" "$RUN_DIR"
    local pid=""
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        pid="$(cat "$PIDFILE")"
        say "dockerd (pid $pid) runs but does not answer yet; waiting"
    else
        # A pidfile left by an engine that was killed names a dead (or reused) pid: the new
        # dockerd rewrites it only after a while, so it must not be read as this start's fate.
        rm -f "$PIDFILE"
        local storage ipt
        storage="$(choose_storage)"
        ipt="$(choose_iptables)"
        [ "$ipt" = false ] && say "iptables unusable: starting with --iptables=false;" \
            "containers have no outbound network on the bridge, use --network host"
        say "starting dockerd (storage $storage, iptables $ipt, data root $ROOT, log $LOG)"
        # setsid: dockerd outlives this script and the shell that ran it.
        setsid dockerd \
            --host "$HOST" \
            --data-root "$ROOT" \
            --exec-root "$RUN_DIR/exec" \
            --pidfile "$PIDFILE" \
            --storage-driver "$storage" \
            --iptables="$ipt" \
            --ip-masq="$ipt" \
            >>"$LOG" 2>&1 </dev/null &
        pid=$!
    fi
    local waited=0
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$LOG" >&2 || true
            die "dockerd exited; see $LOG"
        fi
        if [ "$waited" -ge "$TIMEOUT" ]; then
            tail -n 20 "$LOG" >&2 || true
            die "dockerd did not answer within ${TIMEOUT}s; see $LOG"
        fi
        sleep 1; waited=$((waited + 1))
    done
    say "engine ready: $(DOCKER_HOST="$HOST" docker info --format \
        '{{.ServerVersion}} storage={{.Driver}} cgroup={{.CgroupVersion}}/{{.CgroupDriver}}')"
}

stop() {
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        local pid; pid="$(cat "$PIDFILE")"
        say "stopping dockerd (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
        die "dockerd (pid $pid) did not stop within 30s"
    fi
    say "no dockerd started by this script is running"
}

status() {
    if engine_answers; then
        DOCKER_HOST="$HOST" docker info --format \
            '{{.ServerVersion}} storage={{.Driver}} cgroup={{.CgroupVersion}}/{{.CgroupDriver}}'
    else
        say "no engine answers at $HOST"; return 1
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
