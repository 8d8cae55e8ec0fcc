#!/usr/bin/env bash
# Installs NVIDIA Dynamo (PyPI ai-dynamo) into its own virtualenv, once per pinned version, for the live benchmark.
#
# Usage: scripts/dynamo-venv.sh      prints the venv's python on stdout; progress goes to stderr
#
# `pip install ai-dynamo` cannot work here: one of its dependencies, aisimulate, is a stub wheel that downloads the
# real one from a host outside the package registries. The router, the frontend and the Python worker runtime need
# none of it, so the runtime wheel (ai-dynamo-runtime) and ai-dynamo's plain dependencies go in first, then
# ai-dynamo itself without dependencies (in that order pip does not report the missing aisimulate). No CUDA, torch
# or vLLM is installed. The venv (~700 MB, about 30 s from PyPI) lives outside the repository, under
# ${KVROUTE_CACHE:-$HOME/.cache/kvroute}/dynamo/<version>/venv; a second run only checks the stamp written after a
# complete install, and an install without the stamp starts over.
set -euo pipefail

# The version pinned (bench/src/kvroute/bench/live/dynamo/launch.py repeats it to find the venv).
DYNAMO_VERSION=1.6.1
# ai-dynamo's own requirements (its wheel metadata), but for aisimulate.
PLAIN_DEPENDENCIES=(
    'aiohttp>=3.14.3,<4' 'certifi>=2026.10.19' 'kubernetes>=32.0.1,<33' 'msgspec>=0.19.0'
    'prometheus-client>=0.23.1,<1' 'pyzmq>=26' 'redis>=6.2.0,<9' 'tqdm>=4' 'transformers>=4.56.0'
    'typing-extensions>=4.10.0' 'zstandard>=0.23,<1'
)

log() { printf '[dynamo-venv] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="${KVROUTE_CACHE:-$HOME/.cache/kvroute}/dynamo/$DYNAMO_VERSION"
venv="$root/venv"
stamp="$venv/.kvroute-complete"

if [[ -f $stamp ]]; then
    echo "$venv/bin/python"
    exit 0
fi

python=
for candidate in "${KVROUTE_DYNAMO_BASE_PYTHON:-}" python3.11 python3; do
    [[ -n $candidate ]] && command -v "$candidate" >/dev/null || continue
    if [[ $("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])') == 3.11 ]]; then
        python=$candidate
        break
    fi
done
[[ -n $python ]] || die "python 3.11 is needed (the version this install is tested with); set KVROUTE_DYNAMO_BASE_PYTHON"
command -v flock >/dev/null || die "flock (util-linux) is needed to serialise concurrent installs"

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ -f $stamp ]]; then # another process finished the install while this one waited
    echo "$venv/bin/python"
    exit 0
fi

started=$SECONDS
rm -rf "$venv"
log "creating $venv with $python"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
log "installing ai-dynamo $DYNAMO_VERSION"
"${pip[@]}" "ai-dynamo-runtime==$DYNAMO_VERSION" "${PLAIN_DEPENDENCIES[@]}"
"${pip[@]}" --no-deps "ai-dynamo==$DYNAMO_VERSION"
"$venv/bin/python" -c 'import dynamo.frontend, dynamo.llm, dynamo.runtime' ||
    die "the installed ai-dynamo $DYNAMO_VERSION does not import"

touch "$stamp"
log "ai-dynamo $DYNAMO_VERSION in $venv ($(du -sm "$venv" | cut -f1) MB, $((SECONDS - started)) s)"
echo "$venv/bin/python"
