"""
C{tls:} fronts end to end: a real C{twistd -n gateway} with a PEM folder made
by the C{openssl} command line (root CA -> intermediate -> localhost), reached
by C{curl} with its default ALPN offer, by a game client over TLS, and by
headless Chromium.

Twisted's own C{tls:} endpoint looped for ever on a folder holding the root
certificate (start-up and C{--check-config} hung, and so did a running
gateway at the next unknown-name handshake after such a file was copied in),
and failed every client offering ALPN.  Every wait here is bounded.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.pki import Pki, make_pki, spki_hash
from tests.support import (
    DEADLINE,
    HEADLESS_CHROMIUM,
    TWISTD,
    GatewayProcess,
    admin_url,
    echo,
    listening_ports,
    recv_exactly,
    wait_for,
)
from tests.support import Backend as ServerBackend
from tests.test_dashboard_browser import BROWSER
from tests.test_workers import running

TLS_HOST = "127.0.0.2"
"""The TLS front's address (the plain front is on 127.0.0.1)."""

CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """
    One openssl-made PKI for the module.
    """
    return make_pki(tmp_path_factory.mktemp("pki"))


def full_chain_folder(folder: Path, pki: Pki) -> Path:
    """
    A PEM folder as operators make it: C{cat key leaf.pem intermediate.pem
    ca.pem > certs/localhost.pem}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "localhost.pem").write_bytes(pki.bundle("key", "leaf", "intermediate", "root"))
    return folder


def tls_args(folder: Path, backend: ServerBackend, *extra: str) -> list[str]:
    """
    Options of a gateway with a plain front and a C{tls:} front on C{TLS_HOST}.
    """
    return [
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        f"tls:{folder}:port=0:interface={TLS_HOST}",
        "--backend",
        backend.endpoint,
        "--health-interval",
        "0",
        "--sniff-timeout",
        "0.3",
        *extra,
    ]


def tls_port(gateway: GatewayProcess) -> int:
    """
    The port of the gateway's TLS front, once it listens.
    """
    wait_for(lambda: TLS_HOST in listening_ports(gateway.pid), "the TLS front")
    return listening_ports(gateway.pid)[TLS_HOST][0]


def curl(port: int, root: Path, name: str = "localhost", path: str = "/") -> str:
    """
    C{curl} with its defaults (ALPN offering h2 and http/1.1), trusting
    C{root}, for C{https://NAME:PORT/PATH} on C{TLS_HOST}.

    @return: the body, then a line with the status and the HTTP version.
    """
    assert CURL is not None, "curl is needed"
    result = subprocess.run(
        [
            CURL,
            "-sS",
            "--max-time",
            str(DEADLINE),
            "--cacert",
            str(root),
            "--resolve",
            f"{name}:{port}:{TLS_HOST}",
            "-w",
            "\n%{http_code} %{http_version}",
            f"https://{name}:{port}{path}",
        ],
        capture_output=True,
        timeout=DEADLINE + 5,
    )
    return result.stdout.decode() + result.stderr.decode()


def check_config(*args: str) -> subprocess.CompletedProcess[bytes]:
    """
    Run C{twistd gateway --check-config ARGS} (bounded in time: a hang is a
    failure, and the process is killed).
    """
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "gateway", "--check-config", *args],
        capture_output=True,
        timeout=DEADLINE,
    )


@pytest.mark.parametrize(
    "front",
    ["tls:{folder}:port=8443", "haproxy:tls:{folder}:port=8443", "admin"],
    ids=["tls", "haproxy-tls", "admin-tls"],
)
def test_check_config_accepts_full_chain_with_root(tmp_path: Path, pki: Pki, front: str) -> None:
    """
    C{--check-config} with a front (or an admin endpoint) whose folder holds
    key, certificate, intermediate and root in one file says the
    configuration is valid (it hung, spinning, before).
    """
    folder = full_chain_folder(tmp_path / "certs", pki)
    if front == "admin":
        args = ["--admin", f"tls:{folder}:port=9443:interface=127.0.0.1"]
    else:
        args = ["--listen", front.format(folder=folder)]
    result = check_config(*args, "--backend", "tcp:127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    assert b"the configuration is valid" in result.stdout


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "no certificate with its private key in it (no .pem file)"),
        ({"key.pem": ("key",)}, "key.pem: a private key without its certificate"),
        (
            {"chain.pem": ("leaf", "intermediate")},
            "chain.pem: the certificate for localhost, *.localhost has no private key",
        ),
    ],
    ids=["empty", "key-without-certificate", "certificate-without-key"],
)
def test_check_config_names_the_bad_file(
    tmp_path: Path, pki: Pki, files: dict[str, tuple[str, ...]], message: str
) -> None:
    """
    A folder that cannot be served stops C{--check-config} and start-up with
    exit status 2 and one line naming the option, the front and the file.
    """
    folder = tmp_path / "certs"
    folder.mkdir()
    for name, parts in files.items():
        (folder / name).write_bytes(pki.bundle(*parts))
    front = f"tls:{folder}:port=0:interface={TLS_HOST}"
    for args in (
        ["--check-config", "--listen", front],
        ["--listen", front, "--admin", "none"],
    ):
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "gateway", *args, "--backend", "tcp:127.0.0.1:1"],
            capture_output=True,
            timeout=DEADLINE,
            cwd=tmp_path,
        )
        assert result.returncode == 2
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"gateway: error: --listen: {front}: ")
        assert message in lines[0]


def test_expired_certificate_is_named_at_start(tmp_path: Path) -> None:
    """
    An expired certificate stops start-up with one line naming its file.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.example")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "old.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + certificate.public_bytes(serialization.Encoding.PEM)
    )
    result = check_config("--listen", f"tls:{folder}", "--backend", "tcp:127.0.0.1:1")
    assert result.returncode == 2
    assert f"{folder}/old.pem: the certificate for old.example expired on" in (
        result.stderr.decode()
    )


@pytest.mark.parametrize(
    "layout",
    [("key", "leaf"), ("key", "leaf", "intermediate"), ("key", "leaf", "intermediate", "root")],
    ids=["leaf", "leaf+intermediate", "leaf+intermediate+root"],
)
def test_front_serves_curl_and_game_clients(
    tmp_path: Path, pki: Pki, layout: tuple[str, ...]
) -> None:
    """
    A gateway starts with any valid folder (the server certificate alone,
    with its intermediate, or with the root too: it hung on that one); curl
    with its default ALPN offer (h2, http/1.1) gets the page over HTTP/1.1
    (it got "tlsv1 alert internal error" before), verified against the
    root; a game client that offers an ALPN protocol of its own, and one
    that offers none, get their sessions.
    """
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "localhost.pem").write_bytes(pki.bundle(*layout))
    # Without the intermediate in the folder, the client must have it.
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(pki.bundle("root", "intermediate"))
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("secure page")
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(tls_args(folder, backend, "--http-root", str(www)), tmp_path) as gateway,
    ):
        port = tls_port(gateway)
        assert curl(port, trusted) == "secure page\n200 1.1"
        for alpn in (["my-game/1"], None):
            context = ssl.create_default_context(cafile=str(trusted))
            if alpn is not None:
                context.set_alpn_protocols(alpn)
            raw = socket.create_connection((TLS_HOST, port), timeout=DEADLINE)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() is None
                tls.sendall(b"game over tls\n")
                assert recv_exactly(tls, 14) == b"game over tls\n"


def _handshake(port: int, root: Path, name: str) -> None:
    context = ssl.create_default_context(cafile=str(root))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(
        socket.create_connection((TLS_HOST, port), timeout=DEADLINE), server_hostname=name
    ):
        pass


def test_folder_changes_never_stall_and_apply_on_sighup(tmp_path: Path, pki: Pki) -> None:
    """
    A full-chain file (root included) copied into the folder of a running
    gateway does not stall it: handshakes for an unknown name go on with the
    default certificate, and the admin endpoint keeps answering (the whole
    process hung before).  SIGHUP reads the folder again and serves the new
    name; a folder that went bad at SIGHUP keeps the certificates and logs
    one error line naming the file.
    """
    folder = full_chain_folder(tmp_path / "certs", pki)
    game = make_pki(tmp_path / "game", ("game.example",))
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(
            tls_args(folder, backend, "--admin", "tcp:0:interface=127.0.0.3"), tmp_path
        ) as gateway,
    ):
        port = tls_port(gateway)
        admin = admin_url(gateway)
        (folder / "game.pem").write_bytes(game.bundle("key", "leaf", "intermediate", "root"))
        for _ in range(3):
            _handshake(port, game.root, "game.example")
        assert "secure" not in curl(port, pki.root)  # still served, by the default certificate
        result = subprocess.run(
            [CURL or "curl", "-sS", "--max-time", "5", f"{admin}/status.json"],
            capture_output=True,
            timeout=10,
        )
        assert result.returncode == 0 and b'"backends"' in result.stdout
        assert 'no certificate for the server name "game.example"' in gateway.log()
        os.kill(gateway.pid, signal.SIGHUP)
        wait_for(lambda: "read again (2)" in gateway.log(), "the reload")
        assert curl(port, game.root, "game.example").endswith("404 1.1")
        (folder / "stray.pem").write_bytes(game.leaf_key.read_bytes())
        (folder / "game.pem").unlink()
        os.kill(gateway.pid, signal.SIGHUP)
        wait_for(lambda: "stay as they were" in gateway.log(), "the refused folder")
        errors = [line for line in gateway.log().splitlines() if "stay as they were" in line]
        assert len(errors) == 1
        assert "stray.pem: a private key without its certificate" in errors[0]
        assert curl(port, game.root, "game.example").endswith("404 1.1")


def test_workers_serve_tls_with_alpn(tmp_path: Path, pki: Pki) -> None:
    """
    With --workers 2, the workers read the folder (root included) and speak
    TLS with ALPN: curl's default handshake gets its page.
    """
    folder = full_chain_folder(tmp_path / "certs", pki)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("from a worker")
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(
            tls_args(
                folder,
                backend,
                "--workers",
                "2",
                "--admin",
                "tcp:0:interface=127.0.0.3",
                "--http-root",
                str(www),
            ),
            tmp_path,
        ) as gateway,
    ):
        running(gateway, 2)
        port = tls_port(gateway)
        for _ in range(2):
            assert curl(port, pki.root) == "from a worker\n200 1.1"


def test_handed_over_tls_front_speaks_alpn(tmp_path: Path, pki: Pki) -> None:
    """
    A tls: front taken over by a new process (--handover) keeps the
    gateway's TLS: curl's default handshake gets its page from the new one.
    """
    folder = full_chain_folder(tmp_path / "certs", pki)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("handed over")
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with ServerBackend(echo) as backend:
        args = tls_args(
            folder, backend, "--http-root", str(www), "--handover", str(tmp_path / "h.sock")
        )
        with GatewayProcess(args, tmp_path / "old") as old:
            port = tls_port(old)
            with GatewayProcess(args, tmp_path / "new") as new:
                wait_for(lambda: "no longer accepts" in new.log(), "the hand-over")
                assert old.stop() == 0
                assert curl(port, pki.root) == "handed over\n200 1.1"


@pytest.mark.skipif(
    BROWSER is None and os.environ.get("GATEWAY_REQUIRE_BROWSER") != "1",
    reason="no chromium (apt-get install chromium); CI installs it and requires this test",
)
def test_browser_loads_page_over_https(tmp_path: Path, pki: Pki) -> None:
    """
    Headless Chromium loads a page over https from a tls: front (it showed
    ERR_SSL_PROTOCOL_ERROR before).  The browser accepts the server's key by
    its hash (C{--ignore-certificate-errors-spki-list}): only this key, not
    any certificate error.
    """
    assert BROWSER is not None, "chromium is required here (GATEWAY_REQUIRE_BROWSER=1)"
    # No root in the folder, so that only ALPN is at stake (see the tests above).
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "localhost.pem").write_bytes(pki.bundle("key", "leaf", "intermediate"))
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(
        "<html><body><p id='page'>served over https</p>"
        "<script>document.getElementById('page').textContent += ' and ' + location.protocol"
        "</script></body></html>"
    )
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(tls_args(folder, backend, "--http-root", str(www)), tmp_path) as gateway,
    ):
        port = tls_port(gateway)
        result = subprocess.run(
            [
                BROWSER,
                *HEADLESS_CHROMIUM,
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--host-resolver-rules=MAP localhost {TLS_HOST}",
                f"--ignore-certificate-errors-spki-list={spki_hash(pki.leaf)}",
                "--virtual-time-budget=3000",
                "--dump-dom",
                f"https://localhost:{port}/",
            ],
            capture_output=True,
            timeout=60,
        )
        assert "served over https and https:" in result.stdout.decode(), result.stderr.decode()
        assert '"GET /" 200' in gateway.log()
