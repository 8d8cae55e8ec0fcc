#!/usr/bin/env bash
# Builds every binary an offline kind node image needs, from Go modules (and pause from C), once per set of versions:
# kind itself, the Kubernetes node binaries, etcd, CoreDNS, containerd, runc, crictl, the CNI plugins kind's base
# image carries, local-path-provisioner and pause. No container registry is reachable here, so nothing may be pulled.
#
# Usage: e2e/kind/build-binaries.sh        prints the bin directory on stdout (progress and timings on stderr)
#
# Everything lives under ${KVROUTE_CACHE:-$HOME/.cache/kvroute}/kind, never in the repository:
#   <key>/bin          the binaries, pause.c's version and versions.env (present only once the build completed)
#   <key>/bin.partial  a build in progress; a failed build keeps what it finished, and the next run skips it
#   <key>/src          the generated wrapper modules, one per upstream module, with their `go get` logs
#   go/, go-build      a private GOPATH (module cache) and build cache, shared by all keys
# The approach is e2e/controlplane/build.sh's (wrapper modules, the staging modules replaced by their tags).
set -euo pipefail

# The only place the versions are pinned. Kubernetes v1.34 because this host runs cgroup v1 (v1.35 refuses it);
# etcd, CoreDNS and pause are the versions kubeadm v1.34 asks for; containerd, runc, crictl and the CNI plugins are
# those of kind v0.30.0's base image (crictl follows Kubernetes' minor).
KIND_VERSION=v0.30.0
KUBERNETES_VERSION=v1.34.4
ETCD_VERSION=v3.6.5
COREDNS_VERSION=v1.12.1
CONTAINERD_VERSION=v2.1.4
RUNC_VERSION=v1.3.0
CRICTL_VERSION=v1.34.0
CNI_PLUGINS_VERSION=v1.7.1
LOCAL_PATH_VERSION=v0.0.30
PAUSE_VERSION=3.10.1

log() { printf '[kind-build] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "no Go toolchain on PATH"
command -v gcc >/dev/null || die "gcc is needed for pause and runc"
command -v flock >/dev/null || die "flock (util-linux) is needed to serialise concurrent builds"
[[ -f /usr/include/seccomp.h ]] || die "libseccomp-dev is needed for runc's seccomp support (apt-get install libseccomp-dev)"

go_version=$(GOTOOLCHAIN=local go env GOVERSION)
recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-8)
key="k8s-${KUBERNETES_VERSION}_kind-${KIND_VERSION}_${go_version}_${recipe}"
root="${KVROUTE_CACHE:-$HOME/.cache/kvroute}/kind"
dest="$root/$key"
bin="$dest/bin"
stamp="$bin/.complete"

if [[ -f $stamp ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$root"
exec 9>"$root/.build.lock"
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

# new_module NAME UPSTREAM_GOMOD: a wrapper module in $dest/src/NAME that keeps the upstream module's language
# version and GODEBUG defaults, so the binaries behave as the upstream release builds do; sets $wrapper.
new_module() {
    wrapper="$dest/src/$1"
    rm -rf "$wrapper"
    mkdir -p "$wrapper"
    {
        echo "module kvroute.local/kind/$1"
        echo
        grep -E '^(go|godebug) ' "$2"
    } >"$wrapper/go.mod"
}

# resolve PACKAGE@VERSION...: adds the requirements to $wrapper (its log is shown only on failure).
resolve() {
    local t
    t=$(now)
    if ! (cd "$wrapper" && go get "$@") >"$wrapper/go-get.log" 2>&1; then
        cat "$wrapper/go-get.log" >&2
        die "go get $* failed"
    fi
    log "  resolved $(grep -c '^go: downloading' "$wrapper/go-get.log") new modules in $(elapsed "$t")s"
}

# compile OUTPUT PACKAGE...: one `go build` in $wrapper; LDFLAGS and TAGS from the caller.
compile() {
    local out=$1 t
    shift
    t=$(now)
    (cd "$wrapper" && go build -p "$jobs" -trimpath -tags "${TAGS:-}" -ldflags "$LDFLAGS" -o "$out" "$@")
    log "  compiled in $(elapsed "$t")s"
}

# done_already FILE...: true when a previous, interrupted run already built all of them.
done_already() {
    local f
    for f in "$@"; do [[ -s $tmpbin/$f ]] || return 1; done
    log "  already built: $*"
}

start=$(now)
tmpbin="$dest/bin.partial"
rm -rf "$bin"
mkdir -p "$tmpbin" "$dest/src"
log "building into $bin with $go_version, -p $jobs"

# Kubernetes: k8s.io/kubernetes requires its staging modules at v0.0.0 and points them at ./staging with replace
# directives, which only apply inside its own repository. The wrapper replaces each one with its published tag.
kube_binaries=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)
log "Kubernetes $KUBERNETES_VERSION: ${kube_binaries[*]}"
download k8s.io/kubernetes "$KUBERNETES_VERSION"
kube_source=$module_dir
if ! done_already "${kube_binaries[@]}"; then
    new_module kube "$module_gomod"
    staging_version="v0.${KUBERNETES_VERSION#v1.}"
    replaces=()
    while read -r m; do
        replaces+=("-replace=$m=$m@$staging_version")
    done < <(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$module_gomod")
    ((${#replaces[@]} > 0)) || die "no staging modules found in $module_gomod"
    (cd "$wrapper" && go mod edit "${replaces[@]}")
    minor=${KUBERNETES_VERSION#v1.}
    minor=${minor%%.*}
    # kubeadm reads gitVersion to pick its image tags; kind reads it back from the node's kubeadm.
    LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
    LDFLAGS+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    LDFLAGS+=" -X k8s.io/component-base/version.gitTreeState=clean"
    LDFLAGS+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
    kube_packages=("${kube_binaries[@]/#/k8s.io/kubernetes/cmd/}")
    resolve "${kube_packages[@]/%/@$KUBERNETES_VERSION}"
    compile "$tmpbin/" "${kube_packages[@]}"
fi

log "kind $KIND_VERSION"
if ! done_already kind; then
    download sigs.k8s.io/kind "$KIND_VERSION"
    new_module kind "$module_gomod"
    LDFLAGS="-s -w"
    resolve "sigs.k8s.io/kind@$KIND_VERSION"
    compile "$tmpbin/kind" sigs.k8s.io/kind
fi

# etcd: the server's main package sits in the repository's root module, which is not published on the module
# proxy; a one-line main around the server module's entry point gives the same binary.
log "etcd $ETCD_VERSION"
if ! done_already etcd; then
    download go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    new_module etcd "$module_gomod"
    mkdir -p "$wrapper/etcd"
    cat >"$wrapper/etcd/main.go" <<'EOF'
// Command etcd runs the etcd server of the pinned go.etcd.io/etcd/server/v3 release.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    LDFLAGS="-s -w"
    resolve "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    compile "$tmpbin/etcd" ./etcd
fi

log "CoreDNS $COREDNS_VERSION"
if ! done_already coredns; then
    download github.com/coredns/coredns "$COREDNS_VERSION"
    new_module coredns "$module_gomod"
    LDFLAGS="-s -w"
    resolve "github.com/coredns/coredns@$COREDNS_VERSION"
    compile "$tmpbin/coredns" github.com/coredns/coredns
fi

log "containerd $CONTAINERD_VERSION"
if ! done_already containerd ctr containerd-shim-runc-v2; then
    download github.com/containerd/containerd/v2 "$CONTAINERD_VERSION"
    new_module containerd "$module_gomod"
    LDFLAGS="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
    TAGS="no_aufs no_zfs no_btrfs no_devmapper"
    containerd_packages=(cmd/containerd cmd/ctr cmd/containerd-shim-runc-v2)
    containerd_packages=("${containerd_packages[@]/#/github.com/containerd/containerd/v2/}")
    resolve "${containerd_packages[@]/%/@$CONTAINERD_VERSION}"
    compile "$tmpbin/" "${containerd_packages[@]}"
    TAGS=
fi

# runc needs cgo (nsenter is C) and libseccomp for the RuntimeDefault profile the chart's pods ask for; linked
# statically, as runc's own release binaries are.
log "runc $RUNC_VERSION"
if ! done_already runc; then
    download github.com/opencontainers/runc "$RUNC_VERSION"
    new_module runc "$module_gomod"
    LDFLAGS="-s -w -X main.version=${RUNC_VERSION#v} -extldflags -static"
    TAGS="seccomp urfave_cli_no_docs netgo osusergo"
    resolve "github.com/opencontainers/runc@$RUNC_VERSION"
    CGO_ENABLED=1 compile "$tmpbin/runc" github.com/opencontainers/runc
    TAGS=
fi

log "crictl $CRICTL_VERSION"
if ! done_already crictl; then
    download sigs.k8s.io/cri-tools "$CRICTL_VERSION"
    new_module crictl "$module_gomod"
    LDFLAGS="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
    resolve "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
    compile "$tmpbin/crictl" sigs.k8s.io/cri-tools/cmd/crictl
fi

# The four plugins kind's base image installs in /opt/cni/bin (ptp and host-local are what our static CNI config
# uses in place of kindnetd).
log "CNI plugins $CNI_PLUGINS_VERSION"
cni_plugins=(plugins/main/ptp plugins/ipam/host-local plugins/main/loopback plugins/meta/portmap)
if ! done_already cni/ptp cni/host-local cni/loopback cni/portmap; then
    download github.com/containernetworking/plugins "$CNI_PLUGINS_VERSION"
    new_module cni "$module_gomod"
    LDFLAGS="-s -w"
    cni_packages=("${cni_plugins[@]/#/github.com/containernetworking/plugins/}")
    resolve "${cni_packages[@]/%/@$CNI_PLUGINS_VERSION}"
    mkdir -p "$tmpbin/cni"
    compile "$tmpbin/cni/" "${cni_packages[@]}"
fi

log "local-path-provisioner $LOCAL_PATH_VERSION"
if ! done_already local-path-provisioner; then
    download github.com/rancher/local-path-provisioner "$LOCAL_PATH_VERSION"
    new_module local-path "$module_gomod"
    LDFLAGS="-s -w"
    resolve "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
    compile "$tmpbin/local-path-provisioner" github.com/rancher/local-path-provisioner
fi

# pause: the C program from the Kubernetes repository's build/pause, static, as its Makefile builds it.
log "pause $PAUSE_VERSION"
if ! done_already pause; then
    gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-kvroute" -o "$tmpbin/pause" \
        "$kube_source/build/pause/linux/pause.c"
    strip "$tmpbin/pause"
fi

cat >"$tmpbin/versions.env" <<EOF
KIND_VERSION=$KIND_VERSION
KUBERNETES_VERSION=$KUBERNETES_VERSION
ETCD_VERSION=$ETCD_VERSION
COREDNS_VERSION=$COREDNS_VERSION
CONTAINERD_VERSION=$CONTAINERD_VERSION
RUNC_VERSION=$RUNC_VERSION
CRICTL_VERSION=$CRICTL_VERSION
CNI_PLUGINS_VERSION=$CNI_PLUGINS_VERSION
LOCAL_PATH_VERSION=$LOCAL_PATH_VERSION
PAUSE_VERSION=$PAUSE_VERSION
EOF
log "versions: $("$tmpbin/kubelet" --version) / $("$tmpbin/kind" version) / etcd" \
    "$("$tmpbin/etcd" --version | sed -n 's/^etcd Version: //p') / $("$tmpbin/containerd" --version)" \
    "/ $("$tmpbin/runc" --version | head -n1)"
touch "$tmpbin/.complete"
mv "$tmpbin" "$bin"
for other in "$root"/k8s-*; do
    [[ $other == "$dest" ]] || rm -rf "$other"
done
log "done in $(elapsed "$start")s (module cache $(du -sh "$GOMODCACHE" | cut -f1)," \
    "build cache $(du -sh "$GOCACHE" | cut -f1), bin $(du -sh "$bin" | cut -f1))"
echo "$bin"
