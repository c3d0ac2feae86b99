#!/usr/bin/env bash
# Installs what the local node needs from Debian's own packages (bookworm): the container runtime
# (containerd, runc), the CNI plugins, iptables for kube-proxy (ipset and nftables too: its
# `--cleanup` removes the rules of every mode), and the image tools (buildah for
# the images, mmdebstrap for the Python base image). Only what is missing is installed; nothing
# is started (no init system runs these: the dev kit starts containerd itself, privately).
# Needs root. Usage: hack/node/install-packages.sh
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables ipset nftables buildah mmdebstrap)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "node packages: all installed (${packages[*]})" >&2
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "node packages: missing ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "node packages: installing ${missing[*]} from Debian..." >&2
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
echo "node packages: installed in $((SECONDS - start))s" >&2
