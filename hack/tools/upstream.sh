#!/usr/bin/env bash
# Fetches the upstream Go modules whose files the tests read (third-party CRDs are installed from
# their upstream definitions, never hand-written) through the Go module proxy, at pinned versions
# and checksums, into a module cache beside the control plane's binaries. Fetches only what is
# missing (the module cache is the cache).
# Usage: hack/tools/upstream.sh NAME...   prints each module's directory, one a line.
#   prometheus-operator: example/prometheus-operator-crd/ holds the monitoring.coreos.com CRDs.
#   kyverno: config/crds/policyreport/ holds the wgpolicyk8s.io PolicyReport CRDs.
#   openreports: config/crd/ holds the openreports.io Report CRDs (Kyverno's successor API;
#     kyverno's own module at this version ships only the wgpolicyk8s.io ones).
set -euo pipefail
declare -A pins=(
  [prometheus-operator]="github.com/prometheus-operator/prometheus-operator v0.85.0 h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="
  [kyverno]="github.com/kyverno/kyverno v1.19.1 h1:/MkgFii3/VlQfKR1JpC9tVwNNVNQTt2S4U6qCsafsTU="
  [openreports]="github.com/openreports/reports-api v0.2.1 h1:g9KS3yle9Y1elmww4TK9EkD1rl6inIaiIJPX6e+u680="
)
export GOMODCACHE="${XDG_CACHE_HOME:-$HOME/.cache}/enumwatch/gomod"
for name in "$@"; do
  if [[ -z "${pins[$name]:-}" ]]; then
    echo "upstream: unknown module '$name' (known: ${!pins[*]})" >&2
    exit 2
  fi
  read -r module version sum <<<"${pins[$name]}"
  # Outside any go.mod (cd /), so that only this module is resolved, not a build's requirements.
  json="$(cd / && GOFLAGS=-mod=mod go mod download -json "$module@$version")"
  got="$(sed -n 's/^\t"Sum": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
  if [[ "$got" != "$sum" ]]; then
    echo "upstream: $module@$version has checksum '$got', pinned '$sum'" >&2
    exit 1
  fi
  sed -n 's/^\t"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
done
