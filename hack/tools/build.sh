#!/usr/bin/env bash
# Builds the tools the tests drive, helm, promtool and alertmanager, from their Go modules at the versions pinned
# in hack/tools/*/go.mod, into a cache outside the repo (beside the control plane's binaries).
# Builds only what is missing, like hack/controlplane/build.sh.
# Usage: hack/tools/build.sh [helm|promtool|alertmanager]...   (default: all); prints one binary path a line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../need.sh
source "$here/../need.sh"
bin="${XDG_CACHE_HOME:-$HOME/.cache}/enumwatch/bin"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
pinned() {  # pinned DIR MODULE: the version DIR/go.mod requires
  awk -v m="$2" '$1=="require" && $2==m {print $3}' "$1/go.mod"
}
build() {  # build NAME DIR PACKAGE VERSION TAGS LDFLAGS
  local name="$1" dir="$2" pkg="$3" version="$4" tags="$5" ldflags="$6"
  local out="$bin/$name-$version/$name"
  if [[ -x "$out" ]]; then
    echo "tools: $name cached at $out" >&2
    echo "$out"
    return
  fi
  need_tool "${MAKE_TARGET:-tools}" go   # only when something must be built
  mkdir -p "$(dirname "$out")"
  echo "tools: building $name $version from $pkg (the first build takes a few minutes)..." >&2
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -tags "$tags" -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  echo "tools: built $name in $((SECONDS - start))s" >&2
  echo "$out"
}
helm() {
  local dir="$here/helm" version k8s_minor ldflags=()
  version="$(pinned "$dir" helm.sh/helm/v3)"
  # What helm's own Makefile stamps: its version, and the Kubernetes version it renders for
  # (.Capabilities.KubeVersion, lint deprecations), from the client-go it is built with.
  k8s_minor="$(awk '$1=="k8s.io/client-go" {print $2}' "$dir/go.mod" | cut -d. -f2)"
  ldflags+=("-X helm.sh/helm/v3/internal/version.version=$version")
  ldflags+=("-X helm.sh/helm/v3/internal/version.gitTreeState=clean")
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=("-X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor")
  done
  build helm "$dir" helm.sh/helm/v3/cmd/helm "$version" "" "${ldflags[*]}"
}
promtool() {
  local dir="$here/promtool" module minor version
  module="$(pinned "$dir" github.com/prometheus/prometheus)"
  minor="$(echo "$module" | cut -d. -f2)"
  version="v3.$((minor - 300)).$(echo "$module" | cut -d. -f3)"   # v0.316.0 is Prometheus v3.16.0
  # remove_all_sd: leave out the service-discovery plugins (cloud SDKs), which checking and
  # unit-testing rules never use.
  build promtool "$dir" github.com/prometheus/prometheus/cmd/promtool "$version" remove_all_sd \
    "-X github.com/prometheus/common/version.Version=${version#v} -X github.com/prometheus/common/version.Branch=HEAD"
}
alertmanager() {
  local dir="$here/alertmanager" version module src
  version="$(pinned "$dir" github.com/prometheus/alertmanager)"
  src="$bin/../src/alertmanager-$version"
  if [[ ! -x "$bin/alertmanager-$version/alertmanager" && ! -f "$src/go.mod" ]]; then
    # The module embeds ui/app/dist, which upstream's Makefile builds with npm and which the
    # module zip therefore lacks: build from a copy of the module (its own go.mod and go.sum) with
    # a one-page placeholder there. The tests use the API only (/api/v2/alerts).
    need_tool "${MAKE_TARGET:-tools}" go
    module="$(cd "$dir" && go mod download -json github.com/prometheus/alertmanager | awk -F'"' '$2=="Dir" {print $4}')"
    rm -rf "$src.tmp" && mkdir -p "$(dirname "$src")"
    cp -r "$module" "$src.tmp" && chmod -R u+w "$src.tmp"
    mkdir -p "$src.tmp/ui/app/dist"
    echo '<!doctype html><title>Alertmanager</title><p>The web UI is not built here (npm); the API is /api/v2.' \
      > "$src.tmp/ui/app/dist/index.html"
    mv "$src.tmp" "$src"
  fi
  build alertmanager "$src" ./cmd/alertmanager "$version" "" \
    "-X github.com/prometheus/common/version.Version=${version#v} -X github.com/prometheus/common/version.Branch=HEAD"
}
tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(helm promtool alertmanager)
for tool in "${tools[@]}"; do
  case "$tool" in
    helm) helm ;;
    promtool) promtool ;;
    alertmanager) alertmanager ;;
    *) echo "tools: unknown tool '$tool' (helm, promtool, alertmanager)" >&2; exit 2 ;;
  esac
done
