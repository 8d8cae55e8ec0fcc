#!/usr/bin/env bash
# `make e2e-kind`: the operator scenario (test_kind.py) on a kind cluster made from local parts only.
#
# Usage: e2e/kind/run.sh [PYTEST ARGS...]      progress and timings on stderr; exit code of pytest
#
# 1. the private Docker engine of scripts/docker/ (started here, and stopped at the end, unless already running);
# 2. helm and kubectl (scripts/k8s-tools.sh), the kind node binaries and the offline node image
#    (build-binaries.sh, build-node-image.sh; cached, a warm run only checks them);
# 3. the router, operator and simulator images (scripts/docker/build-image.sh: the repository's Dockerfiles) and an
#    Envoy image (envoy.Dockerfile), all on the local bookworm image of scripts/docker/base-image.sh;
# 4. pytest e2e/kind: pytest-kubernetes creates the cluster, loads the images and deletes the cluster afterwards.
# Loopback only: the engine's API is a unix socket, the cluster's API server and every port-forward bind 127.0.0.1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/docker/common.sh
source "$repo/scripts/docker/common.sh"
log() { printf '[e2e-kind] %s\n' "$*" >&2; }

CLUSTER=kvroute-e2e # pytest-kubernetes names the kind cluster pytest-$CLUSTER
TAG=${KVROUTE_KIND_IMAGE_TAG:-e2e}
export KVROUTE_KIND_IMAGE_TAG=$TAG
cd "$repo"

started=$SECONDS
timings=()
# stage NAME COMMAND...: runs COMMAND, records its wall time.
stage() {
    local name=$1 t=$SECONDS
    shift
    "$@"
    timings+=("$name $((SECONDS - t))s")
    log "$name: $((SECONDS - t)) s"
}

engine_started=0
cleanup() {
    local rc=$?
    if command -v kind >/dev/null && kind get clusters 2>/dev/null | grep -qx "pytest-$CLUSTER"; then
        log "deleting the leftover cluster pytest-$CLUSTER"
        kind delete cluster --name "pytest-$CLUSTER" >&2 || true
    fi
    # kind leaves its Docker network (a bridge on the host) behind when its last cluster goes.
    if command -v kind >/dev/null && [[ -z $(kind get clusters -q 2>/dev/null) ]]; then
        "$DOCKER_CLI" network rm kind >/dev/null 2>&1 || true
    fi
    if ((engine_started)); then
        bash "$repo/scripts/docker/dockerd-stop.sh" || true
    fi
    log "timings: ${timings[*]:-none}; total $((SECONDS - started)) s"
    exit "$rc"
}
trap cleanup EXIT

if [[ -z $(dockerd_pid) ]]; then
    stage engine bash "$repo/scripts/docker/dockerd-start.sh" >/dev/null
    engine_started=1
fi

tools=$(bash "$repo/scripts/k8s-tools.sh")
stage binaries bash "$here/build-binaries.sh" >/dev/null
bin=$(bash "$here/build-binaries.sh")
# The pinned kubectl and helm first: the node binaries directory holds a kubectl of the cluster's version too.
export PATH="$tools:$bin:$PATH"
node_image_file=$(mktemp)
stage node-image bash -c "bash '$here/build-node-image.sh' >'$node_image_file'"
KVROUTE_KIND_NODE_IMAGE=$(<"$node_image_file")
rm -f "$node_image_file"
export KVROUTE_KIND_NODE_IMAGE

build_images() {
    local name base
    for name in router operator simulator; do
        nice -n 19 bash "$repo/scripts/docker/build-image.sh" "$name" "$TAG" >/dev/null
    done
    base=$(bash "$repo/scripts/docker/base-image.sh")
    nice -n 19 "$DOCKER_CLI" build --quiet -f "$here/envoy.Dockerfile" --build-arg "BASE_IMAGE=$base" \
        -t "kvroute/envoy:$TAG" "$here" >/dev/null
}
stage images build_images

.venv/bin/python -c 'import pytest_kubernetes' 2>/dev/null || .venv/bin/python -m pip install --quiet -e '.[kind]'
log "node image $KVROUTE_KIND_NODE_IMAGE; images kvroute/{router,operator,simulator,envoy}:$TAG"
stage scenario env KVROUTE_KIND=1 .venv/bin/pytest e2e/kind -p no:cacheprovider \
    --k8s-provider kind --k8s-cluster-name "$CLUSTER" "$@"
