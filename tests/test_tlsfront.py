"""
The TLS of a C{tls:} front (L{gateway.front.tls}): its endpoint string, the
certificate chosen by server name, ALPN, the sampled log of unknown names,
and reading the folder again.

Handshakes run in memory: an OpenSSL client connection and the server
connection the front's connection creator makes, joined by their memory BIOs.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.usage import UsageError

from gateway.config import ConfigError
from gateway.front.pemfolder import load_folder
from gateway.front.tls import (
    SNICertificates,
    TLSFront,
    UnknownNames,
    parse_tls_front,
    printable_name,
)
from gateway.options import GatewayOptions
from gateway.process.listener import LISTEN_BACKLOG, server_endpoint
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    """
    Two openssl-made PKIs: one for localhost (and *.localhost), one for
    game.example.
    """
    base = tmp_path_factory.mktemp("pkis")
    return make_pki(base / "local"), make_pki(base / "game", ("game.example",))


def _creator(tmp_path: Path, pkis: tuple[Pki, Pki], clock: Clock) -> SNICertificates:
    local, game = pkis
    folder = tmp_path / "certs"
    folder.mkdir(exist_ok=True)
    (folder / "b-localhost.pem").write_bytes(local.bundle("key", "leaf", "intermediate", "root"))
    (folder / "a-game.pem").write_bytes(game.bundle("key", "leaf", "intermediate", "root"))
    return SNICertificates(
        load_folder(str(folder), datetime.datetime.now(datetime.UTC)),
        UnknownNames(clock, "tls:certs"),
    )


def _handshake(
    creator: SNICertificates,
    root: Path,
    name: bytes | None,
    alpn: list[bytes] | None,
) -> SSL.Connection:
    """
    Complete a handshake between a client (trusting C{root}, sending C{name}
    and offering C{alpn}) and a server connection of C{creator}.

    @return: the client's connection, once established.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(str(root))
    context.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    client = SSL.Connection(context, None)
    if name is not None:
        client.set_tlsext_host_name(name)
    if alpn is not None:
        client.set_alpn_protos(alpn)
    client.set_connect_state()
    server = creator.serverConnectionForTLS(None)
    server.set_accept_state()
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, this, other in (("client", client, server), ("server", server, client)):
            try:
                this.do_handshake()
                done[side] = True
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(this.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return client
    raise AssertionError("the handshake did not complete")


def _common_name(client: SSL.Connection) -> str:
    certificate = client.get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"localhost", "localhost"),
        (b"LOCALHOST", "localhost"),
        (b"www.localhost", "localhost"),
        (b"game.example", "game.example"),
        (None, "game.example"),
        (b"unknown.example", "game.example"),
    ],
)
def test_certificate_by_server_name(
    tmp_path: Path, pkis: tuple[Pki, Pki], name: bytes | None, expected: str
) -> None:
    """
    The server name picks the certificate (any case, C{*.} wildcards); a
    client without a name, or with one the folder has no certificate for,
    gets the default one (the file that sorts first).  The chain sent holds
    the intermediate, not the root, and verifies against the root.
    """
    creator = _creator(tmp_path, pkis, Clock())
    local, game = pkis
    root = game.root if expected == "game.example" else local.root
    client = _handshake(creator, root, name, None)
    assert _common_name(client) == expected
    chain = client.get_peer_cert_chain(as_cryptography=True)
    assert chain is not None
    assert [c.subject.rfc4514_string() for c in chain] == [
        f"CN={expected}",
        "CN=gateway test intermediate CA",
    ]


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([b"h2", b"http/1.1"], b"http/1.1"),
        ([b"http/1.1"], b"http/1.1"),
        ([b"http/1.0"], b"http/1.0"),
        ([b"h2"], b""),
        ([b"my-game/1"], b""),
        (None, b""),
    ],
)
def test_alpn(
    tmp_path: Path, pkis: tuple[Pki, Pki], offered: list[bytes] | None, chosen: bytes
) -> None:
    """
    A client that offers ALPN gets C{http/1.1} (or C{http/1.0}) when it
    offers it; one that offers only what the gateway does not speak (C{h2},
    a game's protocol), or no ALPN at all, completes its handshake without
    an application protocol.  (Twisted's own C{tls:} endpoint failed every
    client that offers ALPN with an "internal error" alert.)
    """
    creator = _creator(tmp_path, pkis, Clock())
    client = _handshake(creator, pkis[0].root, b"localhost", offered)
    assert client.get_alpn_proto_negotiated() == chosen


def test_unknown_names_are_sampled_and_escaped(tmp_path: Path, pkis: tuple[Pki, Pki]) -> None:
    """
    Handshakes for unknown server names are all counted; the first five of a
    10 s window are logged one by one, with the client's name quoted, escaped
    (no line break or quote of its own) and cut; the rest are summed up in
    one line at the end of the window, most frequent names first.
    """
    clock = Clock()
    creator = _creator(tmp_path, pkis, clock)
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        forged = b'x"\n2026-01-01 [gateway#info] forged line'
        for _ in range(3):
            _handshake(creator, pkis[1].root, forged, None)
        for number in range(40):
            _handshake(creator, pkis[1].root, b"n%d.example" % (number % 2), None)
        _handshake(creator, pkis[1].root, b"a" * 200, None)
        lines = [formatEvent(e) for e in observer if "server name" in formatEvent(e)]
        assert creator.unknown.count == 44
        assert len(lines) == 5
        assert '"x\\x22\\x0a2026-01-01\\x20[gateway#info]\\x20forged\\x20line"' in lines[0]
        assert all("\n" not in line for line in lines)
        clock.advance(10)
        summaries = [formatEvent(e) for e in observer if "more handshakes" in formatEvent(e)]
        assert len(summaries) == 1
        assert "39 more handshakes for unknown server names in the last 10 s" in summaries[0]
        assert '"n0.example" (19), "n1.example" (19)' in summaries[0]
        assert '"' + "a" * 64 + '" (+136 bytes) (1)' in summaries[0]
    finally:
        globalLogPublisher.removeObserver(observer)


def test_printable_name() -> None:
    """
    A client's name is shown quoted, with every byte but printable ASCII
    (spaces, quotes, backslashes, control and non-ASCII bytes) escaped, and
    cut at 64 bytes with the number of bytes left out.
    """
    assert printable_name(b"game.example") == '"game.example"'
    assert printable_name(b'a b"\\\r\n\xff') == '"a\\x20b\\x22\\x5c\\x0d\\x0a\\xff"'
    assert printable_name(b"z" * 70) == '"' + "z" * 64 + '" (+6 bytes)'


def test_reload_keeps_certificates_of_a_bad_folder(tmp_path: Path, pkis: tuple[Pki, Pki]) -> None:
    """
    Reading the folder again serves what it holds now (a name added); if it
    cannot be served (here a key without its certificate), the certificates
    served so far stay and one error line says why (none in a worker).
    """
    creator = _creator(tmp_path, pkis, Clock())
    third = make_pki(tmp_path / "third", ("third.example",))
    folder = tmp_path / "certs"
    (folder / "c-third.pem").write_bytes(third.bundle("key", "leaf", "intermediate", "root"))
    assert creator.lookup(b"third.example") is None
    now = datetime.datetime.now(datetime.UTC)  # after the third PKI's start of validity
    assert "read again (3)" in creator.reload(now)
    client = _handshake(creator, third.root, b"third.example", None)
    assert _common_name(client) == "third.example"
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        stray = ec.generate_private_key(ec.SECP256R1())
        (folder / "stray-key.pem").write_bytes(
            stray.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        assert "kept" in creator.reload(now)
        # A worker process reloads quietly: its acceptor logs the error.
        assert "kept: " in creator.reload(now, quiet=True)
    finally:
        globalLogPublisher.removeObserver(observer)
    errors = [formatEvent(e) for e in observer if e["log_level"].name == "error"]
    assert len(errors) == 1
    assert "stray-key.pem: a private key without its certificate" in errors[0]
    assert _common_name(_handshake(creator, third.root, b"third.example", None)) == (
        "third.example"
    )


@pytest.mark.parametrize(
    ("text", "front"),
    [
        ("tls:/srv/certs", TLSFront("/srv/certs", 443, None, "::")),
        ("tls:/srv/certs:port=8443", TLSFront("/srv/certs", 8443, None, "::")),
        ("tls:/srv/certs:8443", TLSFront("/srv/certs", 8443, None, "::")),
        (
            "tls:/srv/certs:port=0:interface=\\:\\:1:backlog=7",
            TLSFront("/srv/certs", 0, 7, "::1"),
        ),
    ],
)
def test_parse_tls_front(text: str, front: TLSFront) -> None:
    """
    C{tls:} strings take the arguments of Twisted's C{tls:} server endpoint
    (by name or position, with its escapes).
    """
    assert parse_tls_front(text) == front


@pytest.mark.parametrize(
    "text", ["tls:", "tls:/srv:port=x", "tls:/srv:colour=blue", "tcp:80", "tls:/a:1:2:3:4"]
)
def test_parse_tls_front_errors(text: str) -> None:
    """
    A C{tls:} string that does not parse is a ValueError.
    """
    with pytest.raises(ValueError):
        parse_tls_front(text)


def test_reload_options_leave_folders_to_the_fronts(tmp_path: Path, pkis: tuple[Pki, Pki]) -> None:
    """
    The options read a tls: front's folder at start (a bad one is a usage
    error naming the file), but not when SIGHUP builds them again: a folder
    that went bad then must not refuse the whole reload (the front keeps its
    certificates and says so, see L{SNICertificates.reload}).
    """
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "localhost.pem").write_bytes(pkis[0].bundle("key", "leaf", "intermediate", "root"))
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(["--listen", f"tls:{folder}:port=0", "--backend", "tcp:127.0.0.1:1"])
    (folder / "localhost.pem").write_bytes(pkis[0].bundle("leaf", "intermediate"))
    assert options.rebuild_now().listen == (f"tls:{folder}:port=0",)
    with pytest.raises(ConfigError, match=r"localhost\.pem: the certificate for localhost"):
        options.rebuild(MemoryReactor())
    with pytest.raises(
        UsageError, match=r"^--listen: haproxy:tls:.*localhost\.pem: the certificate"
    ):
        GatewayOptions(reactor=MemoryReactor()).parseOptions(
            ["--listen", f"haproxy:tls:{folder}", "--backend", "tcp:127.0.0.1:1"]
        )


@pytest.mark.parametrize(("suffix", "queue"), [("", LISTEN_BACKLOG), (":backlog=7", 7)])
def test_a_tls_front_gets_the_listen_queue(
    tmp_path: Path, pkis: tuple[Pki, Pki], suffix: str, queue: int
) -> None:
    """
    A C{tls:} front listens with the gateway's queue unless its string sizes
    it, and its certificates' log lines name it as configured.
    """
    from twisted.internet import reactor

    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "localhost.pem").write_bytes(pkis[0].bundle("key", "leaf", "intermediate", "root"))
    text = f"tls:{folder}:port=0{suffix}"
    certificates: list[SNICertificates] = []
    endpoint = server_endpoint(reactor, text, "--listen", certificates)
    assert endpoint.endpoint._backlog == queue  # type: ignore[attr-defined]
    [creator] = certificates
    assert creator.unknown.front == text
