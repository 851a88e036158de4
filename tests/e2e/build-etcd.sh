#!/usr/bin/env bash
# Build the pinned etcd from Go modules into a cache outside the work tree, keyed by
# version; a second run finds it there and builds nothing. Prints its version (stderr)
# and then its path (stdout, last line).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$here/etcd/go.mod")
if [ -z "$version" ]; then
  echo "build-etcd.sh: no 'require go.etcd.io/etcd/server/v3' line in $here/etcd/go.mod" >&2
  exit 1
fi
cache=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/etcd-$version
binary=$cache/etcd
if [ ! -x "$binary" ]; then
  mkdir -p "$cache"
  echo "building etcd $version into $cache (first time only, about a minute)" >&2
  start=$(date +%s)
  # The etcd command is package main at the root of the server module. The version it
  # reports is a constant in go.etcd.io/etcd/api/v3/version; only the git SHA is stamped.
  (cd "$here/etcd" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0 \
    go build -trimpath -o "$binary.tmp.$$" \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=gomod-$version" \
      go.etcd.io/etcd/server/v3)
  mv "$binary.tmp.$$" "$binary"
  echo "built in $(( $(date +%s) - start )) s" >&2
fi
# No pipe into head: under pipefail, head closing early would SIGPIPE etcd and fail us.
reported=$("$binary" --version)
echo "${reported%%$'\n'*}" >&2
echo "$binary"
