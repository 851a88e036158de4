#!/usr/bin/env bash
# Debian packages the node tests and `make image` need: podman (builds and runs the
# image), debootstrap (the base image), containerd + runc (what the kubelet drives),
# catatonit (the pod sandbox's init). Installs what is missing when run as root (CI);
# otherwise says what is missing, and the node tests skip.
set -euo pipefail
declare -A package=(
  [podman]=podman [debootstrap]=debootstrap [containerd]=containerd [ctr]=containerd
  [runc]=runc [catatonit]=catatonit
)
missing=()
for cmd in "${!package[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${package[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "node deps: $(podman --version), containerd $(containerd --version | awk '{print $3}'), $(runc --version | head -1)"
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "node deps missing: ${missing[*]} (apt-get install them as root); the node tests will skip" >&2
  exit 0
fi
echo "installing ${missing[*]}"
start=$(date +%s)
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
echo "installed in $(( $(date +%s) - start )) s"
