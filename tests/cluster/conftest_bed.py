"""pytest fixture for a real kube-apiserver + etcd bed (see bed.py).

`cluster_bed` is a factory: each call starts one bed with the given EncryptionConfiguration
and returns it started; every bed is stopped (processes by PID, temp directory removed) at
the test's teardown. KMSPLUG_SKIP_CLUSTER=1 skips the tests that use it; otherwise a
missing etcd or kube-apiserver is an error, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from .bed import ClusterBed

SKIP_ENV = "KMSPLUG_SKIP_CLUSTER"


class BedFactory(Protocol):
    def __call__(
        self,
        encryption_config_path: Path | str,
        feature_gates: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        *,
        automatic_reload: bool = False,
    ) -> ClusterBed: ...


@pytest.fixture
def cluster_bed() -> Iterator[BedFactory]:
    """Start real etcd + kube-apiserver beds; all are stopped at teardown."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: real kube-apiserver + etcd tests are skipped")
    beds: list[ClusterBed] = []

    def start(
        encryption_config_path: Path | str,
        feature_gates: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        *,
        automatic_reload: bool = False,
    ) -> ClusterBed:
        bed = ClusterBed()
        beds.append(bed)
        return bed.start(
            encryption_config_path,
            feature_gates=feature_gates,
            extra_args=extra_args,
            automatic_reload=automatic_reload,
        )

    yield start
    for bed in reversed(beds):
        bed.stop()
