"""Remote KEK providers: where the key that wraps kmsplug's local KEKs lives."""

from kmsplug.providers.base import RemoteKek
from kmsplug.providers.local import LocalKek

__all__ = ["LocalKek", "RemoteKek"]
