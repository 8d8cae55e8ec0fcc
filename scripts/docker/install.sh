#!/usr/bin/env bash
# Installs what the image tests need from Debian's archive, only what is missing: docker.io (dockerd, containerd,
# runc and a client with BuildKit), iptables (dockerd's bridge networking), debootstrap (the base image), jq (the
# runc wrapper). Needs root and apt-get.
set -euo pipefail
# shellcheck source=scripts/docker/common.sh
source "$(dirname "$0")/common.sh"

declare -A provides=([docker.io]=/usr/sbin/dockerd [iptables]=/usr/sbin/iptables [debootstrap]=/usr/sbin/debootstrap
    [jq]=/usr/bin/jq)
missing=()
for package in "${!provides[@]}"; do
    [[ -x ${provides[$package]} ]] || missing+=("$package")
done
# docker.io also provides the client; a client from elsewhere (e.g. /usr/local/bin) may lack BuildKit.
[[ -x $DOCKER_CLI ]] || missing+=(docker.io)
if ((${#missing[@]} == 0)); then
    exit 0
fi
[[ $(id -u) == 0 ]] || die "installing ${missing[*]} needs root"
command -v apt-get >/dev/null || die "apt-get is needed to install ${missing[*]}"
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
log "installing ${missing[*]}"
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
