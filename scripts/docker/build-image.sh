#!/usr/bin/env bash
# Builds one of the repository's images on the local base image and prints its tag.
#
# Usage: scripts/docker/build-image.sh router|operator|simulator [EXTRA-TAG]
#        (the engine of dockerd-start.sh must be running; progress on stderr)
#
# Dockerfile.<name>, unchanged but for BASE_IMAGE (base-image.sh). The tag is kvroute/<name>:<content key>, the
# key a hash of the Dockerfile, the base image and every file its COPY instructions send: when an image with that
# tag exists nothing is built; a build removes the keyed images of this name beyond the three most recent (other
# checkouts may be building and running their own keys on the same engine at the same time). EXTRA-TAG (e.g.
# `e2e`) also names the image kvroute/<name>:<EXTRA-TAG>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/docker/common.sh
source "$here/common.sh"

name=${1:?usage: build-image.sh router|operator|simulator [EXTRA-TAG]}
dockerfile="$repo/Dockerfile.$name"
[[ -f $dockerfile ]] || die "no $dockerfile"
"$DOCKER_CLI" version >/dev/null 2>&1 || die "no Docker engine at $DOCKER_HOST (scripts/docker/dockerd-start.sh)"
base=$(bash "$here/base-image.sh")

# What the build reads: the COPY sources of the Dockerfile (not --from), less what .dockerignore drops from them.
mapfile -t sources < <(awk '$1 == "COPY" && !/--from/ { for (i = 2; i < NF; i++) print $i }' "$dockerfile")
key=$(
    cd "$repo"
    {
        cat "$dockerfile"
        echo "$base"
        find "${sources[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.py[cod]' -print0 | sort -z |
            xargs -0 sha256sum
    } | sha256sum | cut -c1-16
)
tag="kvroute/$name:$key"

if ! "$DOCKER_CLI" image inspect "$tag" >/dev/null 2>&1; then
    log "building $tag from Dockerfile.$name on $base"
    started=$(date +%s)
    "$DOCKER_CLI" build --quiet --file "$dockerfile" --build-arg "BASE_IMAGE=$base" --tag "$tag" "$repo" >&2
    log "built $tag in $(($(date +%s) - started)) s"
    # Older contents are of no further use; the three newest keys stay (names with other tags are left alone).
    "$DOCKER_CLI" image ls "kvroute/$name" --format '{{.CreatedAt}}|{{.Tag}}' | grep -E '\|[0-9a-f]{16}$' |
        sort -r | tail -n +4 | cut -d'|' -f2 | sed "s|^|kvroute/$name:|" |
        xargs -r "$DOCKER_CLI" image rm >/dev/null 2>&1 || true
fi
if [[ -n ${2:-} ]]; then
    "$DOCKER_CLI" tag "$tag" "kvroute/$name:$2"
fi
echo "$tag"
