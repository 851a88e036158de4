from __future__ import annotations

import grpc
import pytest

from kmsplug import errors
from kmsplug.servicers import status_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidCiphertext("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.PlaintextTooLarge("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnknownKeyId("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ProviderUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.NeedsRotation("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.KeyFileError("x"), grpc.StatusCode.INTERNAL),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_mapping_is_generic(exc: Exception, code: grpc.StatusCode) -> None:
    got, message = status_for(exc)
    assert got == code
    assert "x" not in message.split() and "secret" not in message
