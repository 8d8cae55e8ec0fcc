#!/usr/bin/env bash
# Stops the private Docker engine that dockerd-start.sh started: its containers first, then dockerd by the PID in
# its pidfile (SIGTERM, SIGKILL after 30 s), then what dockerd leaves on the host: the docker0 bridge, its
# iptables chains and rules, and net.ipv4.ip_forward and the FORWARD policy as they were before the engine started.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/docker/common.sh
source "$here/common.sh"
run="$KVROUTE_DOCKER_DIR/run"

pid=$(dockerd_pid)
if [[ -n $pid ]]; then
    mapfile -t running < <("$DOCKER_CLI" ps -q 2>/dev/null || true)
    if ((${#running[@]})); then
        "$DOCKER_CLI" rm -f "${running[@]}" >/dev/null 2>&1 || true
    fi
    log "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
        kill -KILL "$pid"
    fi
    # dockerd's own containerd (a child it started) exits with it; wait for its PID too.
    containerd_pid=$(cat "$KVROUTE_DOCKER_DIR/exec/containerd/containerd.pid" 2>/dev/null || true)
    if [[ $containerd_pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$containerd_pid/comm" 2>/dev/null) == containerd ]]; then
        for _ in $(seq 1 50); do
            kill -0 "$containerd_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$containerd_pid" 2>/dev/null || true
    fi
fi
rm -f "$DOCKERD_PIDFILE" "$DOCKER_SOCKET"

# The rules dockerd added: every rule naming a DOCKER* chain or docker0 is deleted, then the DOCKER* chains.
for table in nat filter; do
    while read -r rule; do
        read -ra words <<<"${rule/#-A /-D }"
        iptables -t "$table" "${words[@]}" 2>/dev/null || true
    done < <(iptables -t "$table" -S 2>/dev/null | grep -E '^-A' | grep -E 'DOCKER|docker0' | grep -vE '^-A DOCKER' || true)
    while read -r chain; do
        iptables -t "$table" -F "$chain" 2>/dev/null || true
    done < <(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}' || true)
    while read -r chain; do
        iptables -t "$table" -X "$chain" 2>/dev/null || true
    done < <(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ {print $2}' || true)
done
if ip link show docker0 >/dev/null 2>&1; then
    ip link delete docker0
fi
if [[ -s $run/forward_policy.before ]]; then
    iptables -P FORWARD "$(<"$run/forward_policy.before")" || true
fi
rm -f "$run/forward_policy.before"
if [[ -f $run/ip_forward.before ]]; then
    cat "$run/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
    rm -f "$run/ip_forward.before"
fi
