#!/usr/bin/env bash
# Build the pinned kube-apiserver from Go modules into a cache outside the work tree,
# keyed by version; a second run finds it there and builds nothing. Prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/apiserver/go.mod")
cache=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/kube-apiserver-$version
binary=$cache/kube-apiserver
if [ ! -x "$binary" ]; then
  mkdir -p "$cache"
  echo "building kube-apiserver $version into $cache (first time only, several minutes)" >&2
  start=$(date +%s)
  (cd "$here/apiserver" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$binary.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$binary.tmp" "$binary"
  echo "built in $(( $(date +%s) - start )) s" >&2
fi
echo "$binary"
