"""The apiserver's test for v2 annotation keys, re-stated from its rule.

k8s.io/apimachinery IsFullyQualifiedDomainName: one trailing dot is dropped; the rest must be
a lowercase RFC 1123 subdomain (at most 253 characters, labels of [a-z0-9] and inner '-', each
at most 63) with at least two labels.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_NAME = 253
_MAX_LABEL = 63


def fqdn_problem(name: str) -> str | None:
    """Why the apiserver would refuse `name` as an annotation key, or None if it would not."""
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return "empty"
    if len(name) > _MAX_NAME:
        return f"longer than {_MAX_NAME} characters"
    labels = name.split(".")
    if len(labels) < 2:
        return "fewer than two dot-separated labels"
    for label in labels:
        if len(label) > _MAX_LABEL:
            return f"label longer than {_MAX_LABEL} characters"
        if not _LABEL.fullmatch(label):
            return f"label {label!r} is not lowercase RFC 1123"
    return None
