"""The network's own certificate authority: a CA, server certificates for Central and the
registry, client certificates for charge points, all as PEM files (keys 0600).

One job: make and read certificates. Who gets which one is the launcher's and the
registry's business; checking them is TLS's (``evproto.aio.tls_*_context``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "IssuedCertificate", "write_private"]

#: How long certificates live. A CA outlives what it signs; rotating it is in docs/security.md.
CA_DAYS = 3650
CERT_DAYS = 825  # the longest a browser accepts for a server certificate


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path
    fingerprint_sha256: str


class CertificateAuthority:
    """A CA kept as ``ca.pem`` (public) and ``ca.key`` (0600) in a directory."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.cert_path = self.dir / "ca.pem"
        self.key_path = self.dir / "ca.key"

    @classmethod
    def ensure(cls, directory: str | Path, *, name: str = "evproto network CA") -> CertificateAuthority:
        """Load the CA in ``directory``, creating it first when there is none."""
        ca = cls(directory)
        if not ca.cert_path.exists():
            ca._create(name)
        return ca

    def _create(self, name: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evproto")]
        )
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(self.key_path, _key_pem(key))
        # Not secret, but private like every file the network writes (its owner reads it).
        write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def issue(
        self,
        common_name: str,
        out_dir: str | Path,
        *,
        hosts: tuple[str, ...] = (),
        client: bool = False,
        stem: str | None = None,
    ) -> IssuedCertificate:
        """Sign a certificate for ``common_name``: a server certificate valid for ``hosts``
        (names or IP addresses), or with ``client`` a client certificate whose CN is the
        node id. Written as ``STEM.pem`` and ``STEM.key`` (0600) in ``out_dir``."""
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evproto"),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out = Path(out_dir)
        stem = stem or common_name
        cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
        write_private(key_path, _key_pem(key))
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return IssuedCertificate(
            cert=cert_path, key=key_path, fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex()
        )
