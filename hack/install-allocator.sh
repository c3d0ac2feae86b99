#!/usr/bin/env bash
# Installs the memory allocator `enumwatch run` runs with (operator/enumwatch/controller/allocator.py):
# mimalloc, Debian's libmimalloc2.0, as the image does. Only when it is missing, and only as root;
# otherwise it says how, and the operator runs with CPython's own allocator (more CPU per event:
# docs/operations.md, the fifteenth CPU round). Usage: hack/install-allocator.sh
set -euo pipefail
pkg=libmimalloc2.0
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "allocator: $pkg is a Debian package and there is no apt-get here; enumwatch run uses CPython's allocator (install mimalloc 2 as libmimalloc.so.2 for the figures of docs/operations.md)" >&2
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "allocator: $pkg is missing; enumwatch run uses CPython's allocator until it is installed (as root: apt-get install $pkg)" >&2
  exit 0
fi
echo "allocator: installing $pkg from Debian..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$pkg" >&2
