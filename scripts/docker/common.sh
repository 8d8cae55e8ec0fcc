# Shared by the scripts in scripts/docker/ (sourced, not run): where the private Docker engine keeps its state.
#
# Everything lives outside the repository under ${KVROUTE_CACHE:-$HOME/.cache/kvroute}/docker:
#   data/           --data-root (images, build cache)
#   exec/           --exec-root (containerd's state and sockets)
#   run/            docker.sock, dockerd.pid, dockerd.log, daemon.json, the host settings to restore at stop
#   base/           the debootstrapped base images, one tarball per version key
# Only Debian's client (/usr/bin/docker) is used: it has BuildKit; a newer client elsewhere on PATH may not.

KVROUTE_DOCKER_DIR="${KVROUTE_CACHE:-$HOME/.cache/kvroute}/docker"
DOCKER_SOCKET="$KVROUTE_DOCKER_DIR/run/docker.sock"
DOCKERD_PIDFILE="$KVROUTE_DOCKER_DIR/run/dockerd.pid"
DOCKERD_LOG="$KVROUTE_DOCKER_DIR/run/dockerd.log"
DOCKER_CLI=/usr/bin/docker
export DOCKER_HOST="unix://$DOCKER_SOCKET"
export DOCKER_BUILDKIT=1

log() { printf '[docker %s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The PID in the pidfile if that process is a running dockerd, else nothing.
dockerd_pid() {
    local pid
    [[ -f $DOCKERD_PIDFILE ]] || return 0
    pid=$(<"$DOCKERD_PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] && echo "$pid"
    return 0
}
