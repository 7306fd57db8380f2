"""
A real three-level PKI made with the C{openssl} command line, the way
operators make theirs: a root CA, an intermediate CA it signs, and a server
certificate for C{localhost} (and C{*.localhost}) the intermediate signs.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["Pki", "make_pki", "spki_hash"]


@dataclass(frozen=True)
class Pki:
    """
    The PEM files of a scratch PKI (each key in its own file).

    @ivar root: the root CA's certificate (what clients trust).
    @ivar intermediate: the intermediate CA's certificate.
    @ivar leaf: the server's certificate (C{localhost}, C{*.localhost}).
    @ivar leaf_key: the server's private key.
    """

    root: Path
    intermediate: Path
    leaf: Path
    leaf_key: Path

    def bundle(self, *parts: str) -> bytes:
        """
        The concatenation of the named files (C{"key"}, C{"leaf"},
        C{"intermediate"}, C{"root"}), like C{cat key leaf.pem ca.pem}.
        """
        files = {
            "key": self.leaf_key,
            "leaf": self.leaf,
            "intermediate": self.intermediate,
            "root": self.root,
        }
        return b"".join(files[part].read_bytes() for part in parts)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_request(cwd: Path, name: str, subject: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=cwd,
    )


def make_pki(folder: Path, names: tuple[str, ...] = ("localhost", "*.localhost")) -> Pki:
    """
    Create root CA -> intermediate CA -> server certificate in C{folder}.

    @param names: the server certificate's DNS names (the first is its CN).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.ext").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    san = ",".join(f"DNS:{name}" for name in names)
    (folder / "leaf.ext").write_text(
        f"basicConstraints=critical,CA:FALSE\nsubjectAltName={san}\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "3",
        "-subj",
        "/CN=gateway test root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    _key_and_request(folder, "intermediate", "/CN=gateway test intermediate CA")
    _openssl(
        "x509",
        "-req",
        "-in",
        "intermediate.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ca.ext",
        "-out",
        "intermediate.pem",
        cwd=folder,
    )
    _key_and_request(folder, "leaf", f"/CN={names[0]}")
    _openssl(
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "intermediate.pem",
        "-CAkey",
        "intermediate.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
        cwd=folder,
    )
    return Pki(
        folder / "root.pem", folder / "intermediate.pem", folder / "leaf.pem", folder / "leaf.key"
    )


def spki_hash(certificate: Path) -> str:
    """
    The base64 SHA-256 of a certificate's public key (SubjectPublicKeyInfo),
    as Chromium's C{--ignore-certificate-errors-spki-list} takes it.
    """
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    spki = loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()
