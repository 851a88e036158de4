"""Generate kmsplug's protobuf and gRPC modules: `python proto/generate.py [PYTHON_ROOT]`.

`make proto` runs it into python/ (the modules are committed, so every wheel ships them);
tests/packaging/test_proto.py runs it into a temporary directory and compares. Use the
grpcio-tools pinned in requirements-dev.txt: its version is written into the output.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
#: The import path the modules get: kmsplug._proto.<api>.<name>_pb2
PACKAGE = "kmsplug/_proto"
PROTOS = ("v1beta1/api.proto", "v2/api.proto", "v2/encrypted_object.proto")


def generate(python_root: Path) -> None:
    """Write the modules (and their .pyi stubs) under `python_root`/kmsplug/_proto."""
    python_root.mkdir(parents=True, exist_ok=True)
    out = str(python_root)
    args = [
        "protoc",
        f"-I{PACKAGE}={PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(PROTO_DIR / proto) for proto in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR.parent / "python")
