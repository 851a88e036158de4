"""The optional parts of kmsplug and the pip extra that brings each.

`pip install kmsplug` installs the core and the local key-file provider. Each remote KMS's
SDK, the cluster tools and the benchmark tools come with an extra (`pip install
'kmsplug[vault]'`, `[all]` for everything). Before a part imports its SDK it calls
`require`, so a missing extra is one line naming the pip command, not a traceback.
"""

from __future__ import annotations

import importlib.util

from kmsplug.errors import MissingExtra

#: extra -> the top-level modules it installs that kmsplug imports (pyproject.toml's
#: [project.optional-dependencies] has the distributions; a test keeps the two in step).
EXTRAS: dict[str, tuple[str, ...]] = {
    "alibaba": ("alibabacloud_kms20160120", "alibabacloud_credentials"),
    "aws": ("boto3",),
    "vault": ("httpx",),
    "pkcs11": ("pkcs11",),
    "cluster": ("kubernetes", "tqdm"),
    "bench": ("tqdm", "cachetools", "matplotlib"),
}


def require(extra: str, what: str, modules: tuple[str, ...] = ()) -> None:
    """Raise MissingExtra unless `modules` (default: all of the extra's) can be imported.

    `what` names the part that needs them in the message, e.g. "the vault provider".
    """
    for module in modules or EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(
                f"{what} needs kmsplug's {extra} extra: pip install 'kmsplug[{extra}]'"
            )
