"""
Reading a C{tls:} front's PEM folder (L{gateway.front.pemfolder.load_folder}):
every layout operators use is served with the right chain, and every folder
that cannot be served is refused with one line naming the file.

The PKI is made with the C{openssl} command line (root -> intermediate ->
server certificate for localhost); the odd certificates (expired, a loop of
two CAs that sign each other) with C{cryptography}.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.front.pemfolder import FolderError, load_folder
from tests.pki import Pki, make_pki

NOW = datetime.datetime.now(datetime.UTC)


def _now() -> datetime.datetime:
    """
    The time now (openssl's certificates start being valid when made).
    """
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """
    One openssl-made PKI for the module's tests.
    """
    return make_pki(tmp_path_factory.mktemp("pki"))


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "certs"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    "files",
    [
        {"localhost.pem": ("key", "leaf")},
        {"localhost.pem": ("key", "leaf", "intermediate")},
        {"localhost.pem": ("key", "leaf", "intermediate", "root")},
        {"localhost.pem": ("leaf", "intermediate", "root", "key")},
        {"a-key.pem": ("key",), "b-chain.pem": ("leaf", "intermediate"), "ca.pem": ("root",)},
    ],
    ids=["leaf", "leaf+intermediate", "leaf+intermediate+root", "key-last", "separate-files"],
)
def test_valid_layouts(tmp_path: Path, pki: Pki, files: dict[str, tuple[str, ...]]) -> None:
    """
    A folder with the server certificate and its key, with or without its
    intermediate and root (in one file or several, in any order) is read
    (a root, its own issuer, does not make the reader loop): the
    certificate serves its names, its chain holds the intermediate when the
    folder has it, and never the root.
    """
    folder = _folder(tmp_path, {name: pki.bundle(*parts) for name, parts in files.items()})
    loaded = load_folder(str(folder), _now())
    [server] = loaded.servers
    assert _subject(server.certificate) == "CN=localhost"
    assert set(loaded.by_name) == {"localhost", "*.localhost"}
    has_intermediate = any("intermediate" in parts for parts in files.values())
    assert [_subject(c) for c in server.chain] == (
        ["CN=gateway test intermediate CA"] if has_intermediate else []
    )


def test_several_names_and_default(tmp_path: Path, pki: Pki) -> None:
    """
    Several server certificates: each name maps to its own, and the default
    (for clients without a known name) is the one whose file sorts first.
    """
    other = make_pki(tmp_path / "other", ("game.example", "www.game.example"))
    folder = _folder(
        tmp_path,
        {
            "b-localhost.pem": pki.bundle("key", "leaf", "intermediate", "root"),
            "a-game.pem": other.bundle("key", "leaf", "intermediate", "root"),
        },
    )
    loaded = load_folder(str(folder), _now())
    assert [Path(s.path).name for s in loaded.servers] == ["a-game.pem", "b-localhost.pem"]
    assert Path(loaded.by_name["www.game.example"].path).name == "a-game.pem"
    assert Path(loaded.by_name["localhost"].path).name == "b-localhost.pem"


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    days: tuple[int, int] = (-1, 1),
) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + datetime.timedelta(days=days[0]))
        .not_valid_after(NOW + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_chain_loop_ends(tmp_path: Path) -> None:
    """
    Two CA certificates that sign each other (A issued by B, B by A) above a
    server certificate: the chain stops where it would come back, instead of
    going round for ever.
    """
    a, b, leaf = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    folder = _folder(
        tmp_path,
        {
            "server.pem": _key_pem(leaf) + _certificate("x.example", leaf, "A", a, ca=False),
            "a.pem": _certificate("A", a, "B", b, ca=True),
            "b.pem": _certificate("B", b, "A", a, ca=True),
        },
    )
    [server] = load_folder(str(folder), _now()).servers
    assert [_subject(c) for c in server.chain] == ["CN=A", "CN=B"]


def test_expired_certificate_is_named(tmp_path: Path) -> None:
    """
    An expired server certificate is refused, naming its file and when it
    expired; so is one not valid yet.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    expired = _key_pem(key) + _certificate(
        "old.example", key, "old.example", key, ca=False, days=(-9, -2)
    )
    folder = _folder(tmp_path, {"old.pem": expired})
    with pytest.raises(
        FolderError, match=r"old\.pem: the certificate for old\.example expired on"
    ):
        load_folder(str(folder), _now())
    early = _key_pem(key) + _certificate(
        "new.example", key, "new.example", key, ca=False, days=(2, 9)
    )
    (folder / "old.pem").write_bytes(early)
    with pytest.raises(FolderError, match=r"old\.pem: .* new\.example is not valid before"):
        load_folder(str(folder), _now())


def test_expired_intermediate_is_named(tmp_path: Path) -> None:
    """
    An expired intermediate in a server certificate's chain is refused,
    naming the server certificate's file.
    """
    root, middle, leaf = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    folder = _folder(
        tmp_path,
        {
            "server.pem": _key_pem(leaf)
            + _certificate("x.example", leaf, "Middle", middle, ca=False)
            + _certificate("Middle", middle, "Root", root, ca=True, days=(-9, -1)),
        },
    )
    with pytest.raises(FolderError, match=r"server\.pem: the certificate for CN=Middle expired"):
        load_folder(str(folder), _now())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, r"certs: no certificate with its private key in it \(no \.pem file\)"),
        ({"notes.txt": ("key", "leaf")}, r"no certificate with its private key in it"),
        ({"only-key.pem": ("key",)}, r"only-key\.pem: a private key without its certificate"),
        (
            {"chain.pem": ("leaf", "intermediate", "root")},
            r"chain\.pem: the certificate for localhost, \*\.localhost has no private key",
        ),
        ({"ca.pem": ("intermediate", "root")}, r"certs: no certificate with its private key"),
    ],
    ids=["empty", "no-pem-file", "key-without-certificate", "certificate-without-key", "only-cas"],
)
def test_unusable_folders_are_named(
    tmp_path: Path, pki: Pki, files: dict[str, tuple[str, ...]], message: str
) -> None:
    """
    A folder that cannot be served is refused with a message naming the
    folder or the file at fault and why.
    """
    folder = _folder(tmp_path, {name: pki.bundle(*parts) for name, parts in files.items()})
    with pytest.raises(FolderError, match=message):
        load_folder(str(folder), _now())


def test_bad_files_are_named(tmp_path: Path, pki: Pki) -> None:
    """
    A .pem file that holds no PEM data, a damaged certificate, a block cut
    short or an encrypted key is refused, naming the file; a missing folder
    too.
    """
    folder = _folder(tmp_path, {"good.pem": pki.bundle("key", "leaf")})
    (folder / "empty.pem").write_bytes(b"")
    with pytest.raises(FolderError, match=r"empty\.pem: no PEM certificate or private key"):
        load_folder(str(folder), _now())
    (folder / "empty.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(FolderError, match=r"empty\.pem: PEM block 1 is not a valid certificate"):
        load_folder(str(folder), _now())
    (folder / "empty.pem").write_bytes(pki.leaf.read_bytes()[:-30])
    with pytest.raises(FolderError, match=r"empty\.pem: PEM block 1 has no END line"):
        load_folder(str(folder), _now())
    (folder / "empty.pem").unlink()
    key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    (folder / "good.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        + pki.leaf.read_bytes()
    )
    with pytest.raises(FolderError, match=r"good\.pem: the private key is encrypted"):
        load_folder(str(folder), _now())
    with pytest.raises(FolderError, match=r"missing: not a folder"):
        load_folder(str(tmp_path / "missing"), _now())
