"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aws.emulator import LocalKms


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKms]:
    """local-kms, a real AWS KMS wire protocol on 127.0.0.1, one per test module."""
    server = LocalKms(tmp_path_factory.mktemp("local-kms")).start()
    yield server
    server.stop()
