#!/usr/bin/env bash
# Build the pinned kubelet and crictl from Go modules into a cache outside the work tree,
# keyed by version (like tests/e2e/build-apiserver.sh); a second run builds nothing.
# Prints two lines: the kubelet's path, then crictl's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}

pinned() { awk -v m="$2" '$1 == "require" && $2 == m {print $3}' "$here/$1/go.mod"; }

build() {  # build MODULE_DIR PACKAGE OUTPUT LDFLAGS
  local dir=$1 pkg=$2 out=$3 ldflags=$4 start
  [ -x "$out" ] && return
  mkdir -p "$(dirname "$out")"
  echo "building $(basename "$out") into $(dirname "$out") (first time only)" >&2
  start=$(date +%s)
  (cd "$here/$dir" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp.$$" "$pkg")
  mv "$out.tmp.$$" "$out"
  echo "built in $(( $(date +%s) - start )) s" >&2
}

kube=$(pinned kubelet k8s.io/kubernetes)
pkg=k8s.io/component-base/version
stamp="-X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$kube" | cut -d. -f2)"
stamp+=" -X $pkg.gitTreeState=clean"
kubelet=$root/kubelet-$kube/kubelet
build kubelet k8s.io/kubernetes/cmd/kubelet "$kubelet" "$stamp"

cri=$(pinned crictl sigs.k8s.io/cri-tools)
crictl=$root/crictl-$cri/crictl
build crictl sigs.k8s.io/cri-tools/cmd/crictl "$crictl" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$cri"

echo "$kubelet"
echo "$crictl"
