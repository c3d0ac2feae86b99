#!/usr/bin/env bash
# Install kube-hunter (Aqua Security's Kubernetes scanner, from PyPI) into a virtualenv in a cache
# outside the repo and print the path of that virtualenv's python. Used by the integration test
# that runs the real scanner against the local control plane
# (tests/integration/test_third_party_scanner.py); safe to run again (it installs only when
# missing).
#
#   bash hack/scanners/kube-hunter.sh     # -> ~/.cache/enumwatch/kube-hunter-<version>/bin/python
#
# kube-hunter is installed apart from .venv/: it pins its own (older) dependencies.
set -euo pipefail
VERSION="${KUBE_HUNTER_VERSION:-0.6.8}"
CACHE="${ENUMWATCH_CACHE:-$HOME/.cache/enumwatch}"
PREFIX="$CACHE/kube-hunter-$VERSION"
PY="$PREFIX/bin/python"
if [[ -x "$PY" && -f "$PREFIX/.installed" ]]; then
  echo "$PY"
  exit 0
fi
mkdir -p "$CACHE"
# A lock, so that two test sessions installing at once do not interleave.
exec 9>"$PREFIX.lock"
flock 9
if [[ ! -f "$PREFIX/.installed" ]]; then
  rm -rf "$PREFIX"
  python3 -m venv "$PREFIX"
  "$PREFIX/bin/pip" install --quiet --disable-pip-version-check "kube-hunter==$VERSION" >&2
  touch "$PREFIX/.installed"
fi
echo "$PY"
