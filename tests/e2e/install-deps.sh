#!/usr/bin/env bash
# Check what the end-to-end tests need that cannot be built here: a Go toolchain new
# enough for the pinned modules (GOTOOLCHAIN=local: no toolchain download). etcd and
# kube-apiserver are no longer installed from Debian: build-etcd.sh and
# build-apiserver.sh build the pinned versions from Go modules into ~/.cache/kmsplug.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v go >/dev/null; then
  echo "install-deps: no 'go' on PATH; install Go (see tests/e2e/etcd/go.mod for the minimum)" >&2
  exit 1
fi
need=$(awk '$1 == "go" {print $2}' "$here/apiserver/go.mod" "$here/etcd/go.mod" | sort -V | tail -n 1)
have=$(GOTOOLCHAIN=local go env GOVERSION)
have=${have#go}
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | sed -n 1p)" != "$need" ]; then
  echo "install-deps: go $have is older than go $need, which the pinned modules need" >&2
  exit 1
fi
echo "go $have (>= $need)"
