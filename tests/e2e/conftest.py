"""Fixtures for end-to-end tests: a real kube-apiserver + etcd bed next to kmsplug."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ha_bed import HaBed, running_bed

from bed import ClusterBed

BedFactory = Callable[..., ClusterBed]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("KMSPLUG_SKIP_CLUSTER") == "1":
        skip = pytest.mark.skip(reason="KMSPLUG_SKIP_CLUSTER=1")
        for item in items:
            if "e2e" in item.nodeid:
                item.add_marker(skip)


@pytest.fixture
def bed_factory() -> Iterator[BedFactory]:
    """Start beds (etcd + kube-apiserver); all are stopped and removed at teardown."""
    beds: list[ClusterBed] = []

    def start(config: Path, **kwargs: object) -> ClusterBed:
        bed = ClusterBed(Path(tempfile.mkdtemp(prefix="kmsplug-bed-", dir="/tmp")))
        beds.append(bed)
        return bed.start(config, **kwargs)  # type: ignore[arg-type]

    yield start
    for bed in beds:
        bed.stop()
        shutil.rmtree(bed.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def ha_bed_session() -> Iterator[HaBed]:
    """Three control-plane nodes sharing the Alibaba fake (ha_bed.py), started once; the
    plugins probe their key every KMSPLUG_HA_PROBE_INTERVAL seconds (5; kmsplug's own
    default is 30)."""
    interval = os.environ.get("KMSPLUG_HA_PROBE_INTERVAL", "5")
    with running_bed(plugin_args=("--health-probe-interval", interval)) as bed:
        yield bed


@pytest.fixture
def ha(ha_bed_session: HaBed) -> HaBed:
    """The shared HA bed, healed first: the KMS answers, the key is enabled, every plugin
    and apiserver runs and reports its KMS providers healthy."""
    ha_bed_session.heal()
    return ha_bed_session
