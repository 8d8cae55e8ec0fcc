#!/usr/bin/env bash
# Builds an offline kind node image (no registry is reachable here, and `kind build node-image` normally pulls its
# base image and the images kubeadm needs) and prints its tag. Once per version key: a second run only checks that
# the image exists.
#
# Usage: e2e/kind/build-node-image.sh     (the engine of scripts/docker/dockerd-start.sh must be running;
#                                          progress and timings on stderr)
#
# 1. the binaries, from e2e/kind/build-binaries.sh (cached under ${KVROUTE_CACHE:-$HOME/.cache/kvroute}/kind);
# 2. kind's base image: the `base` stage of kind's own Dockerfile on the local bookworm image of
#    scripts/docker/base-image.sh, plus containerd, runc, crictl and the CNI plugins (images.Dockerfile);
# 3. one image per component (images.Dockerfile), named as kubeadm and kind ask for them;
# 4. the kubernetes-server-linux-amd64.tar.gz that `kind build node-image --type file` reads: kubeadm, kubelet and
#    kubectl, and the image archives. kind pulls every image kubeadm lists (plus kindnetd, local-path-provisioner
#    and containerd's sandbox image) unless its tag is in one of the four kube-*.tar archives, so kube-proxy.tar
#    also carries the other images;
# 5. `kind build node-image --type file`, which then pulls nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/docker/common.sh
source "$repo/scripts/docker/common.sh"
log() { printf '[kind-node-image] %s\n' "$*" >&2; }
docker() { nice -n 19 "$DOCKER_CLI" "$@"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

"$DOCKER_CLI" version >/dev/null 2>&1 || die "no Docker engine at $DOCKER_HOST (scripts/docker/dockerd-start.sh)"
bin=$(bash "$here/build-binaries.sh")
# shellcheck source=/dev/null
source "$bin/versions.env"
base=$(bash "$repo/scripts/docker/base-image.sh")
key=$(cat "${BASH_SOURCE[0]}" "$here/images.Dockerfile" <(echo "$bin $base") | sha256sum | cut -c1-12)
node_image="kvroute/kind-node:$KUBERNETES_VERSION-$key"
if "$DOCKER_CLI" image inspect "$node_image" >/dev/null 2>&1; then
    echo "$node_image"
    exit 0
fi

start=$(now)
cache=$(dirname "$bin")
kind_source="${KVROUTE_CACHE:-$HOME/.cache/kvroute}/kind/go/pkg/mod/sigs.k8s.io/kind@$KIND_VERSION"
[[ -d $kind_source/images/base ]] || die "kind's source is missing from the module cache: $kind_source"
work="$cache/node-$key"
rm -rf "$work"
mkdir -p "$work/context/rootfs/tmp" "$work/kubernetes/server/bin"
chmod 1777 "$work/context/rootfs/tmp"
cp -al "$bin"/. "$work/context/"

# The names the images must have: kubeadm's list, containerd's sandbox image and kind's own defaults, all read from
# the binaries and sources themselves.
mapfile -t kubeadm_images < <("$bin/kubeadm" config images list --kubernetes-version "$KUBERNETES_VERSION")
kubeadm_image() { printf '%s\n' "${kubeadm_images[@]}" | grep -m1 "/$1:" || die "kubeadm lists no $1 image"; }
kind_const() {
    sed -n "s/^const $1 = \"\(.*\)\"$/\1/p" "$kind_source/pkg/build/nodeimage/$2" | grep . || die "no $1 in kind"
}
sandbox_image=$(sed -n 's/^[[:space:]]*sandbox_image = "\(.*\)"$/\1/p' "$kind_source/images/base/files/etc/containerd/config.toml")
[[ -n $sandbox_image ]] || die "no sandbox_image in kind's containerd config"
declare -A tags=(
    [kube-apiserver]=$(kubeadm_image kube-apiserver)
    [kube-controller-manager]=$(kubeadm_image kube-controller-manager)
    [kube-scheduler]=$(kubeadm_image kube-scheduler)
    [kube-proxy]=$(kubeadm_image kube-proxy)
    [etcd]=$(kubeadm_image etcd)
    [coredns]=$(kubeadm_image coredns)
    [pause]="$sandbox_image $(kubeadm_image pause)"
    [local-path-provisioner]=$(kind_const storageProvisionerImage const_storage.go)
    [local-path-helper]=$(kind_const storageHelperImage const_storage.go)
    [cni-placeholder]=$(kind_const kindnetdImage const_cni.go)
)
for target in "${!tags[@]}"; do # a failed lookup above only empties its entry (declare's status is 0)
    [[ -n ${tags[$target]} ]] || die "no image name for $target"
done

t=$(now)
log "kind's base image ($KIND_VERSION, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION) on $base"
docker build --quiet --target base --build-arg "BASE_IMAGE=$base" -t "kvroute/kind-base-stage:$key" \
    "$kind_source/images/base" >/dev/null
docker build --quiet -f "$here/images.Dockerfile" --target node-base --build-arg "BASE_IMAGE=$base" \
    --build-arg "KIND_BASE_STAGE=kvroute/kind-base-stage:$key" -t "kvroute/kind-base:$key" "$work/context" >/dev/null
log "  built in $(elapsed "$t")s"

t=$(now)
for target in "${!tags[@]}"; do
    tag_args=()
    for tag in ${tags[$target]}; do tag_args+=(-t "$tag"); done
    docker build --quiet -f "$here/images.Dockerfile" --target "$target" --build-arg "BASE_IMAGE=$base" \
        "${tag_args[@]}" "$work/context" >/dev/null
done
log "component images built in $(elapsed "$t")s: $(printf '%s ' "${tags[@]}")"

t=$(now)
server="$work/kubernetes/server/bin"
cp "$bin/kubeadm" "$bin/kubelet" "$bin/kubectl" "$server/"
echo "$KUBERNETES_VERSION" >"$work/kubernetes/version"
for component in kube-apiserver kube-controller-manager kube-scheduler; do
    docker save -o "$server/$component.tar" "${tags[$component]}"
done
extra=()
for target in etcd coredns pause local-path-provisioner local-path-helper cni-placeholder; do
    extra+=(${tags[$target]})
done
docker save -o "$work/kube-proxy.docker.tar" "${tags[kube-proxy]}" "${extra[@]}"
python3 "$here/repack_archive.py" "$work/kube-proxy.docker.tar" "$server/kube-proxy.tar"
rm "$work/kube-proxy.docker.tar"
tarball="$work/kubernetes-server-linux-amd64.tar.gz"
tar -C "$work" -c kubernetes | nice -n 19 gzip -1 >"$tarball"
log "server tarball ($(du -h "$tarball" | cut -f1)) in $(elapsed "$t")s"

t=$(now)
# kind `docker pull`s the base image first and carries on when that fails (it is a local image).
"$bin/kind" build node-image --type file --base-image "kvroute/kind-base:$key" --image "$node_image" "$tarball" >&2
rm -rf "$work"
# The images of other keys are stale (a node image is ~1 GB); a checkout that still needs one rebuilds it.
"$DOCKER_CLI" images --format '{{.Repository}}:{{.Tag}}' | grep -E '^kvroute/kind-(node|base|base-stage):' |
    grep -v -e ":$KUBERNETES_VERSION-$key\$" -e ":$key\$" | xargs -r "$DOCKER_CLI" rmi >/dev/null || true
log "node image $node_image built in $(elapsed "$t")s; all in $(elapsed "$start")s"
echo "$node_image"
