#!/usr/bin/env bash
# Install Azurite (Microsoft's Azure Storage emulator, from npm) into a cache outside the repo and
# print the path of its blob service, `azurite-blob`. Used by the AKS integration tests' fixture
# (tests/integration/emulators.py); safe to run again (it installs only when missing).
#
#   bash hack/emulators/azurite.sh            # -> ~/.cache/enumwatch/azurite-<version>/node_modules/.bin/azurite-blob
#
# Exit 3 when npm is missing (the fixture then skips, or fails under ENUMWATCH_REQUIRE_INTEGRATION).
set -euo pipefail
VERSION="${AZURITE_VERSION:-3.37.0}"
CACHE="${ENUMWATCH_CACHE:-$HOME/.cache/enumwatch}"
PREFIX="$CACHE/azurite-$VERSION"
BIN="$PREFIX/node_modules/.bin/azurite-blob"
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "npm not found: install Node.js (>= 18) and npm to run the Azure Blob (Azurite) tests" >&2
  exit 3
fi
mkdir -p "$PREFIX"
# A lock, so that two test sessions installing at once do not interleave.
exec 9>"$PREFIX.lock"
flock 9
if [[ ! -x "$BIN" ]]; then
  npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2
fi
test -x "$BIN"
echo "$BIN"
