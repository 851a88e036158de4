#!/usr/bin/env bash
# Install SoftHSM2 (a real PKCS#11 token in software) and OpenSC's pkcs11-tool, if missing.
# Idempotent; needs root (CI runs as root). Prints the PKCS#11 library path on success.
set -euo pipefail

LIB=/usr/lib/softhsm/libsofthsm2.so

if [[ -e "$LIB" ]] && command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null; then
    echo "$LIB"
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install-deps: apt-get not found; install softhsm2 and opensc by hand" >&2
    exit 1
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends softhsm2 opensc >/dev/null

if [[ ! -e "$LIB" ]]; then
    # Some distributions put it under the multiarch directory only.
    found=$(dpkg -L softhsm2-common softhsm2 libsofthsm2 2>/dev/null | grep -m1 'libsofthsm2\.so$' || true)
    if [[ -z "$found" ]]; then
        echo "install-deps: libsofthsm2.so not found after installing softhsm2" >&2
        exit 1
    fi
    LIB=$found
fi
echo "$LIB"
