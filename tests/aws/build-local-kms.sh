#!/usr/bin/env bash
# Build the local-kms AWS KMS emulator once into a versioned cache directory and print
# the binary's path. A second run finds the binary and builds nothing.
set -euo pipefail

VERSION="${LOCAL_KMS_VERSION:-v0.0.0-20260228092603-2a5e92d09ab6}"
CACHE="${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}"
BIN_DIR="$CACHE/local-kms-$VERSION"
BIN="$BIN_DIR/local-kms"

if [[ ! -x "$BIN" ]]; then
  mkdir -p "$BIN_DIR"
  echo "building github.com/nsmithuk/local-kms@$VERSION into $BIN_DIR" >&2
  GOTOOLCHAIN=local GOBIN="$BIN_DIR" go install "github.com/nsmithuk/local-kms@$VERSION" >&2
fi
echo "$BIN"
