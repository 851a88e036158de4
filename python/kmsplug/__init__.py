"""kmsplug: a Kubernetes KMS plugin that keeps the remote KMS out of the request path.

kube-apiserver reaches it over gRPC on a UNIX socket (KMS v1beta1 and v2 on one socket);
DEKs are sealed locally under a local KEK that the remote KMS wraps once, in a Rust core.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kmsplug")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
