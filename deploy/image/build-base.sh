#!/usr/bin/env bash
# Make kmsplug's base image from Debian packages alone (no registry is needed): a
# debootstrap --variant=minbase rootfs with the runtime packages below, trimmed, then
# imported into podman. The rootfs tarball is cached outside the tree, keyed by suite,
# mirror and package list, so a second run only re-imports it. Prints the image name.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${KMSPLUG_BASE_SUITE:-bookworm}
# python3: the interpreter the wheel is built for (3.11 on bookworm; the wheel is abi3).
# tini: PID 1 that forwards SIGTERM to kmsplug and reaps what exec probes leave behind.
# ca-certificates: TLS to remote KMSes (Alibaba, AWS, Vault).
packages=${KMSPLUG_BASE_PACKAGES:-python3,tini,ca-certificates}
mirror=${KMSPLUG_BASE_MIRROR:-$(
  # the mirror apt already uses (deb822 or one-line sources), else Debian's CDN
  { grep -hs '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}' || true
    grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' || true; } |
    awk '/\/debian\/?$/ && !found {print; found=1} END {if (!found) print "http://deb.debian.org/debian"}')}
key=$( { echo "$suite $mirror $packages"; cat "$here/build-base.sh"; } | sha256sum | cut -c1-12)
image=localhost/kmsplug-base:$suite-$key
cache=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}/base-$suite-$key
tarball=$cache/rootfs.tar

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "build-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  echo "debootstrap $suite ($packages) from $mirror into $cache (first time only, a few minutes)" >&2
  start=$(date +%s)
  mkdir -p "$cache"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >&2
  # debootstrap installs the release as it shipped: add the point and security updates.
  cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian*}/debian-security $suite-security main
SOURCES
  chroot "$rootfs" apt-get -qq update >&2
  DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get -qq -y upgrade >&2
  chroot "$rootfs" apt-get clean
  # What a runtime never reads: package caches and lists, docs, man pages, locales, logs.
  # dpkg's database stays so image scanners can list the packages.
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* "$rootfs"/dev/*
  tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  echo "rootfs built in $(( $(date +%s) - start )) s ($(du -h "$tarball" | cut -f1))" >&2
fi

if ! podman image exists "$image"; then
  podman import --quiet --change 'CMD ["/bin/sh"]' "$tarball" "$image" >/dev/null
fi
echo "$image"
