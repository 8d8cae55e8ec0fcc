#!/usr/bin/env bash
# Builds the binaries of the e2e control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kwok) from their Go modules with the local Go toolchain, once per set of versions.
#
# Usage: e2e/controlplane/build.sh        prints the bin directory on stdout (progress and timings on stderr)
#
# Everything lives under ${KVROUTE_CACHE:-$HOME/.cache/kvroute}/controlplane, never in the repository:
#   <key>/bin      the five binaries and kwok's stage definitions (present only once the build completed)
#   <key>/src      the generated wrapper modules, one per upstream module, and the `go get` logs
#   go/, go-build  a private GOPATH (module cache) and build cache, shared by all keys
# <key> names the versions, the Go toolchain and a hash of this script, so changing any of them rebuilds (quickly,
# from the build cache) and removes the other keys. Only <key>/bin is needed afterwards: a CI cache can keep just that
# directory (the module cache, ~1.1 GB, and the build cache, ~3.5 GB, only speed up rebuilds).
# A second run with the same key only checks the stamp and prints the bin directory.
set -euo pipefail

# The only place the versions are pinned.
KUBERNETES_VERSION=v1.35.8
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0

log() { printf '[controlplane-build] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "no Go toolchain on PATH (needed to build the e2e control plane)"
command -v flock >/dev/null || die "flock (util-linux) is needed to serialise concurrent builds"

go_version=$(GOTOOLCHAIN=local go env GOVERSION)
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-8)
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_${go_version}_${recipe}"
root="${KVROUTE_CACHE:-$HOME/.cache/kvroute}/controlplane"
dest="$root/$key"
bin="$dest/bin"
stamp="$bin/.complete"

if [[ -f $stamp ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -f $stamp ]]; then # another process finished the build while this one waited
    echo "$bin"
    exit 0
fi

export GOTOOLCHAIN=local
export GOFLAGS="-mod=mod -modcacherw -buildvcs=false"
export GOPATH="$root/go"
export GOMODCACHE="$root/go/pkg/mod"
export GOCACHE="$root/go-build"
export GOWORK=off
export CGO_ENABLED=0
jobs="${KVROUTE_BUILD_JOBS:-$(nproc)}"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
download_bytes() { du -sb "$GOMODCACHE/cache/download" 2>/dev/null | cut -f1 || echo 0; }

# download MODULE VERSION: fetches MODULE@VERSION into the module cache; sets $module_dir and $module_gomod.
download() {
    local json
    if ! json=$(cd "$dest/src" && go mod download -json "$1@$2" 2>&1); then
        printf '%s\n' "$json" >&2
        die "could not download $1@$2"
    fi
    module_dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
    module_gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
}

# new_module DIR NAME UPSTREAM_GOMOD: a wrapper module that keeps the upstream module's language version and
# GODEBUG defaults, so the binaries behave as the upstream release builds do.
new_module() {
    local dir=$1 name=$2 upstream=$3
    rm -rf "$dir"
    mkdir -p "$dir"
    {
        echo "module $name"
        echo
        grep -E '^(go|godebug) ' "$upstream"
    } >"$dir/go.mod"
}

# resolve DIR PACKAGE@VERSION...: adds the requirements to the wrapper module (its log is shown only on failure).
resolve() {
    local dir=$1 t
    shift
    t=$(now)
    if ! (cd "$dir" && go get "$@") >"$dir/go-get.log" 2>&1; then
        cat "$dir/go-get.log" >&2
        die "go get $* failed"
    fi
    log "  resolved $(grep -c '^go: downloading' "$dir/go-get.log") new modules in $(elapsed "$t")s"
}

# compile DIR OUTPUT PACKAGE...: one `go build` for all the packages; LDFLAGS from the caller.
compile() {
    local dir=$1 out=$2 t
    shift 2
    t=$(now)
    (cd "$dir" && go build -p "$jobs" -trimpath -ldflags "$LDFLAGS" -o "$out" "$@")
    log "  compiled in $(elapsed "$t")s"
}

start=$(now)
bytes_before=$(download_bytes)
tmpbin="$dest/bin.partial"
rm -rf "$tmpbin" "$bin"
mkdir -p "$tmpbin" "$dest/src"
log "building into $bin with $go_version, -p $jobs"

# Kubernetes: k8s.io/kubernetes requires its staging modules at v0.0.0 and points them at ./staging with replace
# directives, which only apply inside its own repository. The wrapper replaces each one with its published tag.
log "kube-apiserver, kube-controller-manager, kube-scheduler $KUBERNETES_VERSION"
download k8s.io/kubernetes "$KUBERNETES_VERSION"
new_module "$dest/src/kube" kvroute.local/controlplane/kube "$module_gomod"
staging_version="v0.${KUBERNETES_VERSION#v1.}"
replaces=()
while read -r m; do
    replaces+=("-replace=$m=$m@$staging_version")
done < <(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$module_gomod")
((${#replaces[@]} > 0)) || die "no staging modules found in $module_gomod"
(cd "$dest/src/kube" && go mod edit "${replaces[@]}")
minor=${KUBERNETES_VERSION#v1.}
minor=${minor%%.*}
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
LDFLAGS+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
kube_commands=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
    k8s.io/kubernetes/cmd/kube-scheduler)
resolve "$dest/src/kube" "${kube_commands[@]/%/@$KUBERNETES_VERSION}"
compile "$dest/src/kube" "$tmpbin/" "${kube_commands[@]}"

# etcd: the server's main package sits in the repository's root module, which is not published on the module
# proxy; a one-line main around the server module's entry point gives the same binary.
log "etcd $ETCD_VERSION"
download go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
new_module "$dest/src/etcd" kvroute.local/controlplane/etcd "$module_gomod"
mkdir -p "$dest/src/etcd/etcd"
cat >"$dest/src/etcd/etcd/main.go" <<'EOF'
// Command etcd runs the etcd server of the pinned go.etcd.io/etcd/server/v3 release.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
LDFLAGS="-s -w"
resolve "$dest/src/etcd" "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
compile "$dest/src/etcd" "$tmpbin/etcd" ./etcd

log "kwok $KWOK_VERSION"
download sigs.k8s.io/kwok "$KWOK_VERSION"
new_module "$dest/src/kwok" kvroute.local/controlplane/kwok "$module_gomod"
LDFLAGS="-s -w"
resolve "$dest/src/kwok" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
compile "$dest/src/kwok" "$tmpbin/" sigs.k8s.io/kwok/cmd/kwok
# Standalone kwok does nothing without stages. These are the ones its own cluster tool runs by default: nodes become
# Ready and keep a Lease, pods bound to them become Running with an IP from --cidr, and deleted pods go away.
kwok_stages="$module_dir/kustomize/stage"
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f $kwok_stages/$f ]] || die "kwok stage $f missing from sigs.k8s.io/kwok@$KWOK_VERSION"
    printf -- '---\n' >>"$tmpbin/kwok-stages.yaml"
    cat "$kwok_stages/$f" >>"$tmpbin/kwok-stages.yaml"
done

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kwok-stages.yaml; do
    [[ -s $tmpbin/$b ]] || die "$b was not built"
done
log "versions: $("$tmpbin/kube-apiserver" --version) / etcd $("$tmpbin/etcd" --version | sed -n 's/^etcd Version: //p')" \
    "/ $("$tmpbin/kwok" --version 2>&1 | head -n1)"
touch "$tmpbin/.complete"
mv "$tmpbin" "$bin"
# Builds for other keys are stale (each is ~350 MB); a checkout that still needs one rebuilds it from the caches.
for other in "$root"/k8s-*; do
    [[ $other == "$dest" ]] || rm -rf "$other"
done
bytes_after=$(download_bytes)
log "done in $(elapsed "$start")s; module downloads $(((bytes_after - bytes_before) / 1048576)) MiB" \
    "(module cache $(du -sh "$GOMODCACHE" | cut -f1), build cache $(du -sh "$GOCACHE" | cut -f1), bin $(du -sh "$bin" | cut -f1))"
echo "$bin"
