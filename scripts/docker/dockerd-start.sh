#!/usr/bin/env bash
# Starts a private Docker engine by hand (no systemd), its state under ${KVROUTE_CACHE:-$HOME/.cache/kvroute}/docker
# (see common.sh), and waits until it answers. Prints the DOCKER_HOST to use on stdout; stop it with
# dockerd-stop.sh. If the engine is already running it is left as it is (exit code 0, "already running" on stderr).
#
# Loopback only: the API is a unix socket, never TCP; ports published without an address bind 127.0.0.1 ("ip").
# The default runtime is runc-nosysres (see that script). The host's net.ipv4.ip_forward and FORWARD policy, which
# dockerd changes for its bridge, are recorded here and restored by dockerd-stop.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/docker/common.sh
source "$here/common.sh"

bash "$here/install.sh"
run="$KVROUTE_DOCKER_DIR/run"
mkdir -p "$KVROUTE_DOCKER_DIR/data" "$KVROUTE_DOCKER_DIR/exec" "$run"
exec 9>"$run/start.lock"
flock 9

if [[ -n $(dockerd_pid) ]]; then
    log "already running (pid $(dockerd_pid))"
    echo "$DOCKER_HOST"
    exit 0
fi
# A dockerd killed without cleanup leaves its pidfile and socket behind; dockerd refuses to start over the pidfile.
rm -f "$DOCKERD_PIDFILE" "$DOCKER_SOCKET"
[[ -f $run/ip_forward.before ]] || cat /proc/sys/net/ipv4/ip_forward >"$run/ip_forward.before"
# dockerd also sets the FORWARD chain's policy to DROP.
[[ -f $run/forward_policy.before ]] ||
    iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}' >"$run/forward_policy.before"

jq -n --arg runtime "$here/runc-nosysres" '{
    "runtimes": {"runc-nosysres": {"path": $runtime}},
    "default-runtime": "runc-nosysres",
    "ip": "127.0.0.1",
    "storage-driver": "overlay2",
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "2"},
    "features": {"buildkit": true},
    "builder": {"gc": {"enabled": true, "defaultKeepStorage": "10GB"}}
}' >"$run/daemon.json"

log "starting dockerd (data root $KVROUTE_DOCKER_DIR/data, log $DOCKERD_LOG)"
# setsid: dockerd outlives this script and the caller's process group; it is stopped by PID. nice: builds run
# inside dockerd (BuildKit) and containers under its containerd, so this is what keeps them off a benchmark's CPUs.
setsid nice -n "${KVROUTE_DOCKERD_NICE:-19}" dockerd \
    --config-file "$run/daemon.json" \
    --data-root "$KVROUTE_DOCKER_DIR/data" \
    --exec-root "$KVROUTE_DOCKER_DIR/exec" \
    --pidfile "$DOCKERD_PIDFILE" \
    --host "$DOCKER_HOST" \
    </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
started=$!

for _ in $(seq 1 300); do
    if ! kill -0 "$started" 2>/dev/null; then
        tail -n 30 "$DOCKERD_LOG" >&2
        die "dockerd exited during start-up"
    fi
    if "$DOCKER_CLI" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
        log "dockerd $("$DOCKER_CLI" version --format '{{.Server.Version}}') ready (pid $started)"
        echo "$DOCKER_HOST"
        exit 0
    fi
    sleep 0.2
done
kill "$started" 2>/dev/null || true
tail -n 30 "$DOCKERD_LOG" >&2
die "dockerd did not answer within 60 s"
