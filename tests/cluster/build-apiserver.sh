#!/usr/bin/env bash
# Build the real kube-apiserver pinned by apiserver/go.mod into a cache outside the work
# tree, keyed by version:
#   ${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/kube-apiserver-<version>/kube-apiserver
# Does nothing when that binary is already there. Prints its path on stdout (only that).
# A cold build takes several minutes on 2 cores; concurrent callers wait on a lock.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mod_dir=$here/apiserver
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$mod_dir/go.mod")
if [[ -z $version ]]; then
  echo "build-apiserver.sh: no 'require k8s.io/kubernetes vX.Y.Z' line in $mod_dir/go.mod" >&2
  exit 1
fi
out_dir=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/kube-apiserver-$version
binary=$out_dir/kube-apiserver

if [[ ! -x $binary ]]; then
  mkdir -p "$out_dir"
  exec 9>"$out_dir/.lock"
  flock 9
  if [[ ! -x $binary ]]; then  # another caller may have built it while we waited
    command -v go >/dev/null || { echo "build-apiserver.sh: go is not on PATH" >&2; exit 1; }
    echo "build-apiserver.sh: building kube-apiserver $version with $(go version)" >&2
    echo "build-apiserver.sh: into $out_dir (first time only; 10-20 min on 2 cores)" >&2
    started=$SECONDS
    # Stamp the version (as Kubernetes' own build does) so /version and `kubectl version`
    # report v1.X.Y instead of an unparsable v0.0.0-master+$Format:%H$.
    minor=${version#v*.}
    minor=${minor%%.*}
    pkg=k8s.io/component-base/version
    stamp="-X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean"
    tmp=$binary.partial.$$
    trap 'rm -f "$tmp"' EXIT
    (
      cd "$mod_dir"
      GOTOOLCHAIN=local GOFLAGS="-trimpath -mod=readonly -buildvcs=false" CGO_ENABLED=0 \
        go build -ldflags "-s -w $stamp" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver
    )
    mv -f "$tmp" "$binary"
    trap - EXIT
    echo "build-apiserver.sh: built in $((SECONDS - started)) s," \
      "$(stat -c %s "$binary") bytes" >&2
  fi
fi
echo "$binary"
