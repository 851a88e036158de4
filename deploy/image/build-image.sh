#!/usr/bin/env bash
# `make image`: build kmsplug's image with podman and no registry.
#   1. the base image from Debian packages (build-base.sh, cached);
#   2. kmsplug's wheel, built here with maturin (the Rust extension needs a newer rustc
#      than Debian's), and the wheels of its dependencies for the extras a node needs at
#      the versions requirements-dev.txt pins (the ones the tests ran), collected with
#      pip into a cache keyed by what decides them;
#   3. podman build -f deploy/Dockerfile dist/image.
# Prints the image name (localhost/kmsplug:VERSION) on its last line.
# KMSPLUG_IMAGE_EXTRAS: the extras to install, comma-separated (default: every KMS
# provider; none of the admin tools, [cluster] and [bench], which run off the node).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
py=${PY:-.venv/bin/python}
context=dist/image
cache=${KMSPLUG_CACHE:-$HOME/.cache/kmsplug}
extras=${KMSPLUG_IMAGE_EXTRAS-alibaba,aws,vault,pkcs11}
start=$(date +%s)
step() { echo "  $1: $(( $(date +%s) - ${2} )) s" >&2; }

export CONTAINERS_CONF=${CONTAINERS_CONF:-$(deploy/image/containers-conf.sh)}
t=$(date +%s)
base=$(deploy/image/build-base.sh)
step "base image" "$t"

t=$(date +%s)
rm -rf "$context"
mkdir -p "$context/kmsplug" "$context/wheels" "$context/pip"
.venv/bin/maturin build --release --quiet --out "$context/kmsplug" >&2
wheel=$(ls "$context"/kmsplug/kmsplug-*.whl)
version=$(basename "$wheel" | cut -d- -f2)
# Each build differs only in its SBOM's timestamp (and RECORD's hash of it): when the
# rest is what the last image got, reuse that file, so podman reuses its layers.
"$py" - "$wheel" "$cache/kmsplug-wheel" <<'PY'
import hashlib, shutil, sys, zipfile
from pathlib import Path
wheel, keep = Path(sys.argv[1]), Path(sys.argv[2])
def content(path: Path) -> str:
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if "/sboms/" not in name and not name.endswith("/RECORD"):
                digest.update(name.encode() + b"\0" + archive.read(name))
    return digest.hexdigest()
kept = keep / wheel.name
if kept.exists() and content(kept) == content(wheel):
    shutil.copy2(kept, wheel)
else:
    keep.mkdir(parents=True, exist_ok=True)
    for old in keep.glob("*.whl"):
        old.unlink()
    shutil.copy2(wheel, kept)
PY
step "kmsplug wheel" "$t"

# The dependency set is decided by kmsplug's requirements, the extras, the pins and the
# interpreter: key the wheelhouse by them, so an unchanged set costs no pip run at all.
t=$(date +%s)
requires=$("$py" - "$wheel" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    print("\n".join(l for l in wheel.read(meta).decode().splitlines() if l.startswith("Requires-Dist")))
PY
)
key=$( { echo "$requires"; echo "$extras"; cat requirements-dev.txt; "$py" -VV; } | sha256sum | cut -c1-12)
wheelhouse=$cache/wheelhouse-$key
if [ ! -f "$wheelhouse/.complete" ]; then
  rm -rf "$wheelhouse" && mkdir -p "$wheelhouse"
  # wheels from PyPI as they are; any sdist is built into a wheel here (nothing compiles
  # in the image)
  "$py" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheelhouse" \
    --constraint requirements-dev.txt "$wheel${extras:+[$extras]}" >&2
  rm -f "$wheelhouse"/kmsplug-*.whl
  # pip itself, run from its wheel in the build stage only: the image carries no pip
  mkdir -p "$wheelhouse/pip"
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$wheelhouse/pip" pip >&2
  mv "$wheelhouse"/pip/pip-*.whl "$wheelhouse/pip/pip.whl"
  touch "$wheelhouse/.complete"
fi
cp -l "$wheelhouse"/*.whl "$context/wheels/" 2>/dev/null || cp "$wheelhouse"/*.whl "$context/wheels/"
cp "$wheelhouse/pip/pip.whl" "$context/pip/"
step "dependency wheels ($(ls "$context/wheels" | wc -l), extras: ${extras:-none})" "$t"

t=$(date +%s)
image=localhost/kmsplug:$version
podman build --quiet --file deploy/Dockerfile --build-arg "BASE=$base" --tag "$image" \
  "$context" >/dev/null
step "podman build" "$t"
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "built $image in $(( $(date +%s) - start )) s: $(( size / 1000000 )) MB" >&2
echo "$image"
