"""Container images for the node tests, made with podman and no registry.

- kmsplug's own image comes from `make image` (deploy/image/build-image.sh);
- etcd and kube-apiserver images hold the static binaries tests/e2e builds from Go
  modules, FROM scratch, tagged with the binaries' versions;
- the pod sandbox ("pause") image holds Debian's static catatonit, the init podman uses
  for its own pause containers, FROM scratch.
Each is built once into podman's store; `oci_archive()` saves one for containerd (cached
by image ID).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPTS = ROOT / "deploy" / "image"
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from bed import apiserver_binary, etcd_binary  # noqa: E402


@cache
def podman_env() -> dict[str, str]:
    """The environment podman runs in: CONTAINERS_CONF for this machine's rlimits."""
    if "CONTAINERS_CONF" in os.environ:
        return dict(os.environ)
    conf = subprocess.run(
        [str(IMAGE_SCRIPTS / "containers-conf.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {**os.environ, "CONTAINERS_CONF": conf}


def podman(
    *args: str, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env=podman_env(),
    )


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def kmsplug_image() -> str:
    """The image `make image` built for the version installed in .venv."""
    from kmsplug import __version__

    return f"localhost/kmsplug:{__version__}"


def _from_scratch(name: str, files: dict[str, Path], entrypoint: list[str]) -> str:
    """Build NAME (if absent) from scratch with FILES (path in image -> host file)."""
    if image_exists(name):
        return name
    with tempfile.TemporaryDirectory(prefix="kmsplug-image-") as context:
        lines = ["FROM scratch"]
        for index, (target, source) in enumerate(files.items()):
            staged = Path(context) / f"file{index}"
            staged.write_bytes(source.read_bytes())
            staged.chmod(0o755)
            lines.append(f"COPY file{index} {target}")
        lines.append("ENTRYPOINT " + str(entrypoint).replace("'", '"'))
        (Path(context) / "Containerfile").write_text("\n".join(lines) + "\n")
        podman("build", "--quiet", "--tag", name, context)
    return name


def _version_tag(binary: Path) -> str:
    # the cache directory is named after the pinned version: etcd-v3.6.16/etcd
    return binary.parent.name.split("-", 1)[1].removesuffix("-stamped")


def etcd_image() -> str:
    binary = etcd_binary()
    return _from_scratch(
        f"localhost/kmsplug-etcd:{_version_tag(binary)}",
        {"/usr/local/bin/etcd": binary},
        ["/usr/local/bin/etcd"],
    )


def apiserver_image() -> str:
    binary = apiserver_binary()
    return _from_scratch(
        f"localhost/kmsplug-kube-apiserver:{_version_tag(binary)}",
        {"/usr/local/bin/kube-apiserver": binary},
        ["/usr/local/bin/kube-apiserver"],
    )


def pause_image(name: str) -> str:
    """catatonit -P: PID 1 of a pod sandbox that only waits (and reaps) until stopped."""
    return _from_scratch(name, {"/catatonit": Path("/usr/bin/catatonit")}, ["/catatonit", "-P"])


def oci_archive(image: str) -> Path:
    """IMAGE saved for containerd, cached by image ID (one archive kept per repository)."""
    image_id = podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()[:12]
    repository = image.rsplit("/", 1)[-1].split(":")[0]
    cache = Path(os.environ.get("KMSPLUG_CACHE", Path.home() / ".cache" / "kmsplug"))
    directory = cache / "oci-archives"
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{repository}@{image_id}.tar"
    if not out.exists():
        for stale in directory.glob(f"{repository}@*.tar"):
            stale.unlink()
        partial = out.with_suffix(f".{os.getpid()}.partial")
        podman("save", "--quiet", "--format", "oci-archive", "--output", str(partial), image)
        partial.rename(out)
    return out
