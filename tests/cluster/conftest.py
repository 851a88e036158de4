"""Fixtures for tests/cluster: the real kube-apiserver + etcd bed."""

from .conftest_bed import cluster_bed

__all__ = ["cluster_bed"]
