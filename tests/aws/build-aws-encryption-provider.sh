#!/usr/bin/env bash
# Build the aws-encryption-provider peer plugin (sigs.k8s.io/aws-encryption-provider,
# cmd/server) once into a versioned cache directory and print the binary's path. A second
# run finds the binary and builds nothing.
#
# NOT VERIFIED HERE: on the machine this script was written on, the Go module proxy
# refused this module outright (403 "This module version is not available") for its
# version list, @latest, @master, v1.0.0 and v0.3.0, so no version could be downloaded or
# built. v1.0.0 is the newest release tag we know of; override it with
# AWS_ENCRYPTION_PROVIDER_VERSION (a tag or a pseudo-version) once one is served.
# The build exits non-zero when the module cannot be had; callers skip on that.
set -euo pipefail

VERSION="${AWS_ENCRYPTION_PROVIDER_VERSION:-v1.0.0}"
CACHE="${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}"
BIN_DIR="$CACHE/aws-encryption-provider-$VERSION"
BIN="$BIN_DIR/aws-encryption-provider"

if [[ ! -x "$BIN" ]]; then
  mkdir -p "$BIN_DIR"
  echo "building sigs.k8s.io/aws-encryption-provider/cmd/server@$VERSION into $BIN_DIR" >&2
  if ! GOTOOLCHAIN=local GOBIN="$BIN_DIR" \
    go install "sigs.k8s.io/aws-encryption-provider/cmd/server@$VERSION" >&2; then
    rmdir "$BIN_DIR" 2>/dev/null || true
    exit 1
  fi
  mv "$BIN_DIR/server" "$BIN" # go install names it after its directory
fi
echo "$BIN"
