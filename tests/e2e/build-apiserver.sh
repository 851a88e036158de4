#!/usr/bin/env bash
# Build the pinned kube-apiserver from Go modules into a cache outside the work tree,
# keyed by version; a second run finds it there and builds nothing. Prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/apiserver/go.mod")
# "-stamped": the binary reports its real version (unstamped builds say v0.0.0-master,
# which kubectl cannot parse).
cache=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/kube-apiserver-$version-stamped
binary=$cache/kube-apiserver
if [ ! -x "$binary" ]; then
  mkdir -p "$cache"
  echo "building kube-apiserver $version into $cache (first time only, several minutes)" >&2
  start=$(date +%s)
  pkg=k8s.io/component-base/version
  minor=$(echo "$version" | cut -d. -f2)
  stamp="-X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp+=" -X $pkg.gitTreeState=clean"
  (cd "$here/apiserver" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w $stamp" -o "$binary.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$binary.tmp" "$binary"
  echo "built in $(( $(date +%s) - start )) s" >&2
fi
echo "$binary"
