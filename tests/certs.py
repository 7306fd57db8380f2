"""
A throw-away certificate authority for TLS tests: a CA and a server
certificate for C{localhost}, written as PEM files.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ScratchCA", "make_ca"]


@dataclass(frozen=True)
class ScratchCA:
    """
    Paths of a test CA's files.

    @ivar trust_dir: a folder holding only the CA certificate (for C{trustRoots=}).
    @ivar server_cert: the server's certificate (for C{localhost}), PEM.
    @ivar server_key: the server's private key, PEM.
    @ivar server_pem: key and certificate in one file.
    """

    trust_dir: Path
    server_cert: Path
    server_key: Path
    server_pem: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(folder: Path, hostname: str = "localhost") -> ScratchCA:
    """
    Create a CA and a server certificate for C{hostname} in C{folder}.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("gateway test CA"))
        .issuer_name(_name("gateway test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostname))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    trust_dir = folder / "trust"
    trust_dir.mkdir(parents=True, exist_ok=True)
    (trust_dir / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    server_cert = folder / "server.crt"
    server_key = folder / "server.key"
    server_pem = folder / "server.pem"
    server_cert.write_bytes(cert_pem)
    server_key.write_bytes(key_pem)
    server_pem.write_bytes(key_pem + cert_pem)
    return ScratchCA(trust_dir, server_cert, server_key, server_pem)
