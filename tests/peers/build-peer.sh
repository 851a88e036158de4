#!/usr/bin/env bash
# Build one of the real peer plugins (the KMS plugins users run today) from the pinned
# source tarballs in shared/peers, once, into a cache outside the work tree; print the
# binary's path. A second run finds it and builds nothing.
#
# usage: build-peer.sh NAME      NAME: aws-encryption-provider | ack-kms-plugin |
#                                      ack-kms-plugin-v2 | vault-kubernetes-kms | kubernetes-kms
#        build-peer.sh --all     build every peer; report each, fail none (make e2e-deps)
#        build-peer.sh --sources print the directory of the pinned sources (exit 3: none)
#
# The sources live outside the repository: $KMSPLUG_PEERS_DIR, else the first
# shared/peers beside the checkout or one of its parents (CI clones the repository with
# a copy of shared/ beside it: ../shared/peers). The cache entry is keyed by NAME and a
# hash of what the build reads (build.sh and the peer's tarballs), so a new pin rebuilds.
# Exit 3: the sources are not there (callers skip, naming the path); any other failure
# is a refused build step, whose output is printed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=(aws-encryption-provider ack-kms-plugin ack-kms-plugin-v2 vault-kubernetes-kms kubernetes-kms)

sources_dir() {
  if [ -n "${KMSPLUG_PEERS_DIR:-}" ]; then
    echo "$KMSPLUG_PEERS_DIR"
    return
  fi
  local dir
  dir=$(cd "$here/../.." && pwd)
  while [ "$dir" != / ]; do
    dir=$(dirname "$dir")
    if [ -f "$dir/shared/peers/build.sh" ]; then
      echo "$dir/shared/peers"
      return
    fi
  done
  echo "$(cd "$here/../.." && pwd)/../shared/peers" # where CI puts it: named in the message
}

if [ "${1:-}" = "--sources" ]; then
  src=$(sources_dir)
  if [ ! -f "$src/build.sh" ]; then
    echo "build-peer: no peer sources at $src (set KMSPLUG_PEERS_DIR)" >&2
    exit 3
  fi
  echo "$src"
  exit 0
fi

if [ "${1:-}" = "--all" ]; then
  failed=()
  for name in "${peers[@]}"; do
    if ! "$0" "$name" >/dev/null; then failed+=("$name"); fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "build-peer: not built (their swap tests will skip): ${failed[*]}" >&2
  fi
  exit 0
fi

name=${1:?usage: build-peer.sh NAME | --all}
case " ${peers[*]} " in
  *" $name "*) ;;
  *) echo "build-peer: unknown peer '$name' (one of: ${peers[*]})" >&2; exit 2 ;;
esac
src=$(sources_dir)
if [ ! -f "$src/build.sh" ] || [ ! -f "$src/$name-src.tar.gz" ]; then
  echo "build-peer: no peer sources at $src (want build.sh and $name-src.tar.gz;" \
    "set KMSPLUG_PEERS_DIR to the shared/peers directory)" >&2
  exit 3
fi
inputs=("$src/build.sh" "$src/$name-src.tar.gz")
[ "$name" = kubernetes-kms ] && inputs+=("$src/kubernetes-kms-goproxy-extra.tar.gz")
key=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
cache=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/peer-$name-$key
binary=$cache/$name
if [ ! -x "$binary" ]; then
  mkdir -p "$cache"
  # One builder per entry: a second caller waits for the first, then finds the binary.
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -x "$binary" ]; then
    echo "building peer $name into $cache (first time only, 0.5-2.5 min)" >&2
    if ! out=$(bash "$src/build.sh" "$name" "$binary.tmp" 2>&1); then
      echo "build-peer: $src/build.sh $name failed:" >&2
      echo "$out" | tail -n 30 >&2
      rm -f "$binary.tmp"
      exit 1
    fi
    echo "$out" | tail -n 1 >&2
    mv "$binary.tmp" "$binary"
  fi
fi
echo "$binary"
