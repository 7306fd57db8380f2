"""
The folder of PEM files behind a C{tls:} front, read and checked.

L{load_folder} reads every C{*.pem} file under the folder (keys and
certificates in any files, in any order), pairs each private key with its
certificate, builds each certificate's chain from the other certificates of
the folder, and refuses a folder it cannot serve with one line naming the
file: no usable certificate at all, a key without its certificate, a server
certificate without its key, an expired (or not yet valid) certificate, an
encrypted key, a file that is not PEM.

The chain is built by issuer, checking each link's signature, and stops at a
self-signed certificate (a root: clients have their own, so it is not sent),
at a certificate already in the chain, or after L{MAX_CHAIN} links.  Twisted's
own PEM-folder loader (C{twisted.protocols._sni}) follows issuer names while
the issuer is in the folder, so a root certificate (its own issuer) makes it
loop forever; that is why the gateway reads the folder itself.

Pure file reading and checking: no reactor, no OpenSSL contexts (see
L{gateway.front.tls} for those).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509.oid import NameOID

__all__ = [
    "MAX_CHAIN",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "CertificateFolder",
    "FolderError",
    "ServerCertificate",
    "load_folder",
]

MAX_CHAIN = 8
"""Certificates above a server certificate at most (real chains have 1 to 3)."""

MAX_FILES = 10_000
"""C{.pem} files read from one folder at most."""

MAX_FILE_BYTES = 1 << 20
"""Bytes of one C{.pem} file at most (a chain is a few KiB)."""

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


_SHA256 = SHA256()


class FolderError(Exception):
    """
    The folder cannot be served; the message names the folder or the file.
    """


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """
    A certificate with its private key, ready to be served.

    @ivar path: the file holding the certificate.
    @ivar certificate: the server's certificate.
    @ivar key: its private key.
    @ivar chain: the certificates sent after it, its issuer first (no root).
    @ivar names: the DNS names it serves, lower case (C{*.example.com} for a
        wildcard): the subject alternative names, or the common name if it
        has none.
    """

    path: str
    certificate: x509.Certificate
    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CertificateFolder:
    """
    Every server certificate of a folder.

    @ivar path: the folder, absolute.
    @ivar servers: in file order; the first is the default (clients that send
        no server name, or one no certificate has).
    @ivar by_name: each name to the certificate that serves it (for a name
        two certificates have, the one that expires last).
    """

    path: str
    servers: tuple[ServerCertificate, ...]
    by_name: dict[str, ServerCertificate]


@dataclass(frozen=True, slots=True)
class _Read:
    """
    What one file holds.
    """

    path: str
    certificates: list[x509.Certificate]
    keys: list[PrivateKeyTypes]


def _public(item: x509.Certificate | PrivateKeyTypes) -> bytes:
    public = item.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    return tuple(name.lower() for name in san.value.get_values_for_type(x509.DNSName))


def _self_signed(certificate: x509.Certificate) -> bool:
    return certificate.issuer == certificate.subject


def _is_ca(certificate: x509.Certificate) -> bool:
    """
    Whether C{certificate} is an authority's (it may issue others): its basic
    constraints say so, or it has none and is self-signed (an old root).
    """
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return _self_signed(certificate)
    return constraints.value.ca


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _describe(certificate: x509.Certificate, *, server: bool = False) -> str:
    """
    A server certificate by its names, an authority's by its subject.
    """
    names = _names(certificate) if server or not _is_ca(certificate) else ()
    return ", ".join(names) if names else certificate.subject.rfc4514_string()


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _check_dates(
    path: str, certificate: x509.Certificate, now: datetime.datetime, *, server: bool = False
) -> None:
    what = f"{path}: the certificate for {_describe(certificate, server=server)}"
    if certificate.not_valid_after_utc < now:
        raise FolderError(f"{what} expired on {_when(certificate.not_valid_after_utc)}")
    if certificate.not_valid_before_utc > now:
        raise FolderError(f"{what} is not valid before {_when(certificate.not_valid_before_utc)}")


def _read_file(path: str) -> _Read:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise FolderError(f"{path}: cannot read it: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise FolderError(f"{path}: larger than {MAX_FILE_BYTES} bytes, not a PEM file")
    read = _Read(path, [], [])
    for number, (kind, block) in enumerate(_blocks(path, data), 1):
        if kind == b"CERTIFICATE":
            try:
                read.certificates.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise FolderError(
                    f"{path}: PEM block {number} is not a valid certificate"
                ) from None
        elif kind.endswith(b"PRIVATE KEY"):
            try:
                read.keys.append(serialization.load_pem_private_key(block, password=None))
            except TypeError:
                raise FolderError(
                    f"{path}: the private key is encrypted (the gateway needs it unencrypted)"
                ) from None
            except (ValueError, UnsupportedAlgorithm):
                raise FolderError(
                    f"{path}: PEM block {number} is not a valid private key"
                ) from None
    if not read.certificates and not read.keys:
        raise FolderError(f"{path}: no PEM certificate or private key in it")
    return read


def _blocks(path: str, data: bytes) -> list[tuple[bytes, bytes]]:
    """
    The PEM blocks of a file: (kind, text from its BEGIN to its END line),
    in one pass over the lines (text between blocks is ignored).

    @raise FolderError: a block has no END line.
    """
    blocks: list[tuple[bytes, bytes]] = []
    kind: bytes | None = None
    lines: list[bytes] = []
    for line in data.splitlines(keepends=True):
        stripped = line.strip()
        if kind is None:
            begin = _BEGIN.fullmatch(stripped)
            if begin is not None:
                kind, lines = begin.group(1), [line]
            continue
        lines.append(line)
        if stripped == b"-----END " + kind + b"-----":
            blocks.append((kind, b"".join(lines)))
            kind = None
    if kind is not None:
        raise FolderError(f"{path}: PEM block {len(blocks) + 1} has no END line")
    return blocks


def _pem_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FolderError(f"{folder}: not a folder")
    found: list[str] = []
    # Sorted, so that the default certificate does not depend on the order
    # the file system lists names in; symbolic links to folders not followed.
    for top, folders, files in os.walk(folder, onerror=_raise):
        folders.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            if name.endswith(".pem") and os.path.isfile(path):
                found.append(path)
                if len(found) > MAX_FILES:
                    raise FolderError(f"{folder}: more than {MAX_FILES} .pem files")
    return found


def _raise(error: OSError) -> None:
    raise FolderError(f"{error.filename}: cannot read it: {error.strerror or error}")


def _chain(
    server: x509.Certificate, authorities: dict[bytes, list[x509.Certificate]]
) -> tuple[x509.Certificate, ...]:
    """
    The certificates above C{server}, its issuer first, without the root.
    """
    chain: list[x509.Certificate] = []
    seen = {server.fingerprint(_SHA256)}
    current = server
    while len(chain) < MAX_CHAIN and not _self_signed(current):
        candidates = authorities.get(current.issuer.public_bytes(), [])
        issuer = next((c for c in candidates if _issued_by(current, c)), None)
        if issuer is None or issuer.fingerprint(_SHA256) in seen or _self_signed(issuer):
            break
        seen.add(issuer.fingerprint(_SHA256))
        chain.append(issuer)
        current = issuer
    return tuple(chain)


def load_folder(folder: str, now: datetime.datetime) -> CertificateFolder:
    """
    Read and check the PEM files of C{folder}.

    @param folder: the folder of a C{tls:} front (relative to the current one,
        or absolute).
    @param now: the time certificates must be valid at (UTC, aware).
    @return: its server certificates.
    @raise FolderError: the folder cannot be served as it is; the message
        names the file and says why.
    """
    folder = os.path.abspath(folder)
    reads = [_read_file(path) for path in _pem_files(folder)]
    certificates = [(r.path, c) for r in reads for c in r.certificates]
    by_key: dict[bytes, list[tuple[str, x509.Certificate]]] = {}
    for path, certificate in certificates:
        by_key.setdefault(_public(certificate), []).append((path, certificate))
    servers: list[ServerCertificate] = []
    paired: set[bytes] = set()
    authorities: dict[bytes, list[x509.Certificate]] = {}
    for _, certificate in certificates:
        if _is_ca(certificate):
            authorities.setdefault(certificate.subject.public_bytes(), []).append(certificate)
    for read in reads:
        for key in read.keys:
            public = _public(key)
            matching = by_key.get(public)
            if not matching:
                raise FolderError(f"{read.path}: a private key without its certificate")
            if public in paired:
                continue
            paired.add(public)
            # A renewed certificate may keep its key: serve the newest one.
            path, certificate = max(matching, key=lambda pc: pc[1].not_valid_after_utc)
            _check_dates(path, certificate, now, server=True)
            chain = _chain(certificate, authorities)
            for above in chain:
                _check_dates(path, above, now)
            servers.append(ServerCertificate(path, certificate, key, chain, _names(certificate)))
    for public, matching in by_key.items():
        path, certificate = matching[0]
        if public not in paired and not _is_ca(certificate):
            raise FolderError(
                f"{path}: the certificate for {_describe(certificate)} has no private key "
                "in the folder"
            )
    if not servers:
        raise FolderError(
            f"{folder}: no certificate with its private key in it"
            + ("" if reads else " (no .pem file)")
        )
    servers.sort(key=lambda s: s.path)
    by_name: dict[str, ServerCertificate] = {}
    for server in servers:
        for name in server.names:
            held = by_name.get(name)
            if held is None or (
                held.certificate.not_valid_after_utc < server.certificate.not_valid_after_utc
            ):
                by_name[name] = server
    return CertificateFolder(folder, tuple(servers), by_name)
