#!/usr/bin/env bash
# make image IMAGE=registry.example/enumwatch:0.1.0: build enumwatch's image with what this
# machine has (docker, podman or buildah) and write manifests/overlays/local/, the base with that
# image, for `kubectl apply --server-side -k manifests/overlays/local/` (docs/install.md). No
# kustomize binary is needed. IMAGE_BUILD=none writes the overlay only (an image built elsewhere).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
# shellcheck source=need.sh
source "$here/need.sh"
image="${1:-}"
if [[ -z "$image" ]]; then
  echo "make image: set IMAGE, the name to build and push, e.g. make image IMAGE=registry.example/enumwatch:0.1.0" >&2
  exit 2
fi
name="$image" tag=""
if [[ "${image##*/}" == *:* ]]; then  # a tag after the last slash (a registry port comes before)
  name="${image%:*}" tag="${image##*:}"
fi
engine="${IMAGE_BUILD:-}"
if [[ -z "$engine" ]]; then
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null 2>&1; then engine="$candidate"; break; fi
  done
fi
case "$engine" in
  none) ;;
  "") echo "make image: needs docker, podman or buildah to build the image, and none is on PATH. Install one (https://docs.docker.com/engine/install/ or apt-get install podman), or build elsewhere and run make image IMAGE=$image IMAGE_BUILD=none" >&2
      exit 1 ;;
  buildah) need_tool image buildah; (cd "$repo" && buildah bud -t "$image" .) ;;
  *) need_tool image "$engine"; (cd "$repo" && "$engine" build -t "$image" .) ;;
esac
overlay="$repo/manifests/overlays/local"
mkdir -p "$overlay"
{
  echo "# Written by \`make image IMAGE=$image\` (hack/image.sh): the install with your image."
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - ../../base"
  echo "images:"
  echo "  - name: enumwatch"
  echo "    newName: $name"
  if [[ -n "$tag" ]]; then echo "    newTag: \"$tag\""; fi
} > "$overlay/kustomization.yaml"
echo "wrote manifests/overlays/local/kustomization.yaml (image $image)" >&2
if [[ "$engine" != none ]]; then
  echo "next: $engine push $image (or load it into your nodes), then install: docs/install.md" >&2
fi
