#!/usr/bin/env bash
# Builds the local stand-in for python:3.11-slim-bookworm (no registry is reachable here) and prints its tag.
#
# Usage: scripts/docker/base-image.sh     (the engine of dockerd-start.sh must be running; progress on stderr)
#
# Debian bookworm (minbase) from the machine's apt mirror, with python3 and a virtual environment rooted at
# /usr/local, so that as on python:3.11-slim `python` and `pip` are /usr/local/bin's and what pip installs lands
# in /usr/local/lib/python3.11/site-packages with its scripts in /usr/local/bin. The machine's CA certificates
# are added (HTTPS from inside a build, pip's included, fails without them). The tag carries a version key (this
# script, the mirror, the certificates): the rootfs is built once per key, kept as a tarball under the cache
# directory and `docker import`ed when the engine lacks the tag.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/docker/common.sh
source "$here/common.sh"

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates

# The Debian archive this machine's apt uses (deb822 `URIs:` or one-line `deb` entries), unless given.
mirror() {
    if [[ -n ${KVROUTE_DEBIAN_MIRROR:-} ]]; then
        echo "$KVROUTE_DEBIAN_MIRROR"
        return
    fi
    local sources=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    { cat "${sources[@]}" 2>/dev/null || true; } |
        grep -oE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)[a-z]+://[^[:space:]]+' |
        grep -oE '[a-z]+://[^[:space:]]+' | grep -E '/debian/?$' | sed -n 1p || true
}

shopt -s nullglob
MIRROR=$(mirror)
[[ -n $MIRROR ]] || die "no Debian mirror in /etc/apt/sources.list*; set KVROUTE_DEBIAN_MIRROR"
certificates=(/usr/local/share/ca-certificates/*.crt)
key=$(cat "$0" <(echo "$SUITE $PACKAGES $MIRROR") "${certificates[@]}" | sha256sum | cut -c1-12)
tag="kvroute/base-python:3.11-$SUITE-$key"

if "$DOCKER_CLI" image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi

base="$KVROUTE_DOCKER_DIR/base"
tarball="$base/$SUITE-$key.tar"
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9
if "$DOCKER_CLI" image inspect "$tag" >/dev/null 2>&1; then # made while this waited for the lock
    echo "$tag"
    exit 0
fi
if [[ ! -f $tarball ]]; then
    rootfs="$base/rootfs-$key"
    rm -rf "$rootfs"
    log "debootstrap $SUITE (minbase, $PACKAGES) from $MIRROR"
    nice -n 19 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >&2
    if ((${#certificates[@]})); then
        cp "${certificates[@]}" "$rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$rootfs" update-ca-certificates >&2
    # ensurepip installs pip and setuptools from Debian's bundled wheels; no network needed.
    nice -n 19 chroot "$rootfs" /usr/bin/python3 -m venv /usr/local >&2
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
    log "packing $tarball"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
fi
log "importing $tarball as $tag"
"$DOCKER_CLI" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$tag" >&2
echo "$tag"
