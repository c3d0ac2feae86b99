#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, etcd) from their Go modules at the versions
# pinned in hack/controlplane/*/go.mod, into a cache outside the repo. Builds only what is missing.
# Usage: hack/controlplane/build.sh        prints the bin directory on its last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kube_version="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/apiserver/go.mod")"
etcd_version="$(awk '$1=="require" && $2=="go.etcd.io/etcd/server/v3" {print $3}' "$here/etcd/go.mod")"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/enumwatch/bin/kube-${kube_version}-etcd-${etcd_version}"
mkdir -p "$cache"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
build() {  # build NAME MODULE_DIR PACKAGE [LDFLAGS]
  local name="$1" dir="$2" pkg="$3" ldflags="${4:-}"
  if [[ -x "$cache/$name" ]]; then
    echo "control plane: $name cached at $cache/$name" >&2
    return
  fi
  echo "control plane: building $name from $pkg (first build takes several minutes)..." >&2
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$cache/$name.tmp" "$pkg")
  mv "$cache/$name.tmp" "$cache/$name"
  echo "control plane: built $name in $((SECONDS - start))s" >&2
}
build etcd "$here/etcd" go.etcd.io/etcd/server/v3
minor="$(echo "$kube_version" | cut -d. -f2)"
vpkg=k8s.io/component-base/version
build kube-apiserver "$here/apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
  "-X $vpkg.gitVersion=$kube_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
echo "$cache"
