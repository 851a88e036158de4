"""A throwaway certificate authority for the bed's etcd: TLS with client certificates,
as kubeadm sets etcd up (the apiserver and `kmsplug verify` both present a client cert)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Server and client auth, as kubeadm issues etcd's server and peer certificates: etcd's
# JSON gateway (what `kmsplug verify` reads) dials etcd's own gRPC port with the server
# certificate as a client, and members dial each other with the peer one.
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
CLIENT_ONLY = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@dataclass(frozen=True)
class EtcdPki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


class CertificateAuthority:
    """A CA valid a day, in `directory` (ca.crt); `issue` writes NAME.crt and NAME.key."""

    def __init__(self, directory: Path, common_name: str = "bed-etcd-ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(common_name)
        self._cert = (
            self._builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.crt"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(minutes=5))
            .not_valid_after(self._now + datetime.timedelta(days=1))
        )

    def issue(
        self, name: str, usage: tuple[x509.ObjectIdentifier, ...], *, server: bool
    ) -> tuple[Path, Path]:
        """A certificate for `usage` (a server one names 127.0.0.1 and localhost)."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(name), self._cert.subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage(list(usage)), critical=False
        )
        if server:
            san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path = self.directory / f"{name}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, _write_key(key, self.directory / f"{name}.key")


def make_etcd_pki(directory: Path) -> EtcdPki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, valid a day."""
    ca = CertificateAuthority(directory)
    server_cert, server_key = ca.issue("etcd-server", SERVER_AND_CLIENT, server=True)
    client_cert, client_key = ca.issue("etcd-client", CLIENT_ONLY, server=False)
    return EtcdPki(ca.cert_path, server_cert, server_key, client_cert, client_key)
