#!/usr/bin/env bash
# `make image`: build kmsplug's image with podman and no registry.
#   1. the base image from Debian packages (build-base.sh, cached);
#   2. kmsplug's wheel, built here with maturin (the Rust extension needs a newer rustc
#      than Debian's), and every dependency's wheel for the extras a node needs, at the
#      versions requirements-dev.txt pins (the ones the tests ran), into dist/image/wheels;
#   3. podman build -f deploy/Dockerfile dist/image.
# Prints the image name (localhost/kmsplug:VERSION) on its last line.
# KMSPLUG_IMAGE_EXTRAS: the extras to install, comma-separated (default: every KMS
# provider; none of the admin tools, [cluster] and [bench], which run off the node).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
py=${PY:-.venv/bin/python}
context=dist/image
start=$(date +%s)

export CONTAINERS_CONF=${CONTAINERS_CONF:-$(deploy/image/containers-conf.sh)}
base=$(deploy/image/build-base.sh)

rm -rf "$context"
mkdir -p "$context/wheels"
.venv/bin/maturin build --release --quiet --out "$context/kmsplug" >&2
wheel=$(ls "$context"/kmsplug/kmsplug-*.whl)
version=$(basename "$wheel" | cut -d- -f2)
extras=${KMSPLUG_IMAGE_EXTRAS-alibaba,aws,vault,pkcs11}
requirement="$wheel${extras:+[$extras]}"
# Wheels only from PyPI (nothing compiles in the image); sdists are built here.
"$py" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$context/wheels" \
  --constraint requirements-dev.txt "$requirement" >&2
# pip itself, run from its wheel in the build stage only: the image carries no pip.
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$context/wheels" pip >&2
mv "$context"/wheels/pip-*.whl "$context/wheels/pip.whl"

image=localhost/kmsplug:$version
podman build --quiet --file deploy/Dockerfile --build-arg "BASE=$base" \
  --build-arg "EXTRAS=$extras" --tag "$image" "$context" >&2
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "built $image in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB" >&2
echo "$image"
