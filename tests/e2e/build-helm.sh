#!/usr/bin/env bash
# Build the pinned helm from Go modules into the cache outside the work tree (once).
# Prints its path. Used to lint and render deploy/helm/kmsplug in the tests.
set -euo pipefail
version=v3.22.0
cache=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/helm-$version
if [ ! -x "$cache/helm" ]; then
  mkdir -p "$cache"
  echo "building helm $version into $cache (first time only)" >&2
  GOTOOLCHAIN=local GOBIN="$cache" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
    "helm.sh/helm/v3/cmd/helm@$version"
fi
echo "$cache/helm"
