#!/usr/bin/env bash
# Copies the repository's CRDs (crds/*.yaml, the source of truth) into the Helm chart, byte for byte.
#
# Usage: scripts/sync-chart-crds.sh
#
# The upstream Gateway API Inference Extension CRDs (groups inference.networking.k8s.io and
# inference.networking.x-k8s.io: InferencePool, InferenceObjective) go to charts/kvroute/files/crds/, from where a
# template installs each only when its flag (installInferencePoolCRD, installInferenceObjectiveCRD) is true; every
# other CRD goes to charts/kvroute/crds/.
# tests/charts/test_chart.py fails when the chart's copies differ from crds/.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
src="$repo/crds"
chart="$repo/charts/kvroute"

[[ -d $src ]] || {
    echo "sync-chart-crds: $src does not exist" >&2
    exit 1
}

mkdir -p "$chart/crds" "$chart/files/crds"
rm -f "$chart"/crds/*.yaml "$chart"/files/crds/*.yaml
shopt -s nullglob
for crd in "$src"/*.yaml; do
    if grep -Eq "^[[:space:]]*group:[[:space:]]*[\"']?inference\.networking\.(x-)?k8s\.io[\"']?[[:space:]]*$" "$crd"; then
        dest="$chart/files/crds"
    else
        dest="$chart/crds"
    fi
    cp "$crd" "$dest/"
    echo "${crd#"$repo"/} -> ${dest#"$repo"/}/" >&2
done
