"""Signed JWTs for OpenBao's JWT auth method (jwt_validation_pubkeys), ES256 by hand."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JwtIssuer:
    """An EC P-256 key that signs service-account-like tokens."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    def public_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token(self, subject: str, audience: str, lifetime: int = 600, **claims: Any) -> str:
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT"}
        body = {"sub": subject, "aud": audience, "iat": now, "nbf": now - 5, "exp": now + lifetime}
        body.update(claims)
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(body).encode())}"
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
