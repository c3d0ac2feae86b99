#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, etcd) from their Go modules at the versions
# pinned in hack/controlplane/*/go.mod, into a cache outside the repo. Builds only what is missing.
# With --cluster it also builds what `make cluster-up` runs: kube-controller-manager,
# kube-scheduler, kube-proxy and kubelet (node/go.mod, the same k8s.io/kubernetes pin as
# apiserver/go.mod), CoreDNS (coredns/go.mod) and the pause binary (pause/), into the same cache.
# Usage: hack/controlplane/build.sh [--cluster]   prints the bin directory on its last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../need.sh
source "$here/../need.sh"
pin() {  # pin GO_MOD MODULE: the required version of MODULE in GO_MOD
  awk -v m="$2" '($1=="require" && $2==m) {print $3} ($1==m) {print $2}' "$1" | head -1
}
kube_version="$(pin "$here/apiserver/go.mod" k8s.io/kubernetes)"
etcd_version="$(pin "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/enumwatch/bin/kube-${kube_version}-etcd-${etcd_version}"
mkdir -p "$cache"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
build() {  # build NAME MODULE_DIR PACKAGE [LDFLAGS]
  local name="$1" dir="$2" pkg="$3" ldflags="${4:-}"
  if [[ -x "$cache/$name" ]]; then
    echo "control plane: $name cached at $cache/$name" >&2
    return
  fi
  need_tool "${MAKE_TARGET:-controlplane}" go   # only when something must be built
  echo "control plane: building $name from $pkg (first build takes several minutes)..." >&2
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$cache/$name.tmp" "$pkg")
  mv "$cache/$name.tmp" "$cache/$name"
  echo "control plane: built $name in $((SECONDS - start))s" >&2
}
build etcd "$here/etcd" go.etcd.io/etcd/server/v3
minor="$(echo "$kube_version" | cut -d. -f2)"
vpkg=k8s.io/component-base/version
kube_ldflags="-X $vpkg.gitVersion=$kube_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
build kube-apiserver "$here/apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
if [[ "${1:-}" == "--cluster" ]]; then
  node_kube="$(pin "$here/node/go.mod" k8s.io/kubernetes)"
  if [[ "$node_kube" != "$kube_version" ]]; then
    echo "control plane: node/go.mod pins k8s.io/kubernetes $node_kube, apiserver/go.mod $kube_version" >&2
    exit 1
  fi
  for cmd in kube-controller-manager kube-scheduler kube-proxy kubelet; do
    build "$cmd" "$here/node" "k8s.io/kubernetes/cmd/$cmd" "$kube_ldflags"
  done
  # CoreDNS and pause have pins of their own: the version is part of the file name.
  coredns_version="$(pin "$here/coredns/go.mod" github.com/coredns/coredns)"
  build "coredns-$coredns_version" "$here/coredns" .
  CGO_ENABLED=0 build pause "$here/pause" .
fi
echo "$cache"
