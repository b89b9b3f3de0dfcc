#!/usr/bin/env bash
# Builds the affinity-assistant container image, and optionally loads it into a kind cluster
# or pushes it.
#
#   hack/build-image.sh                          # builds affinity-assistant:dev
#   IMAGE=registry.example.com/aa:v1 hack/build-image.sh --push
#   hack/build-image.sh --kind kind              # builds and loads into the kind cluster "kind"
#
# Then install with that image:
#   cargo run -- manifests --image "$IMAGE" | kubectl apply -f -
# or, with kustomize: (cd deploy && kustomize edit set image ghcr.io/affinity-assistant/affinity-assistant="$IMAGE")
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-affinity-assistant:dev}"
ENGINE="${CONTAINER_ENGINE:-}"
PUSH=false
KIND_CLUSTER=""

while [ $# -gt 0 ]; do
  case "$1" in
    --push) PUSH=true ;;
    --kind) KIND_CLUSTER="${2:?--kind needs a cluster name}"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null 2>&1; then ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then ENGINE=podman
  else echo "needs docker or podman (or set CONTAINER_ENGINE)" >&2; exit 1
  fi
fi

echo "building $IMAGE with $ENGINE"
"$ENGINE" build -t "$IMAGE" .
"$ENGINE" run --rm "$IMAGE" version

if [ -n "$KIND_CLUSTER" ]; then
  command -v kind >/dev/null 2>&1 || { echo "kind is not installed" >&2; exit 1; }
  kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"
fi
if $PUSH; then
  "$ENGINE" push "$IMAGE"
fi
echo "image: $IMAGE"
echo "install: cargo run -- manifests --image $IMAGE | kubectl apply -f -"
