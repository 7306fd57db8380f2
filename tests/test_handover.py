"""
The hand-over protocol's edges: nobody to take over from, an old process
that answers wrongly, the --handover setting's checks, and a TLS front
handed over.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError

from gateway.handover import HandoverError, take_over
from gateway.options import GatewayOptions
from tests.certs import make_ca
from tests.support import DEADLINE, GatewayProcess, echo, listening_ports, recv_exactly, wait_for
from tests.support import Backend as ServerBackend


def test_nobody_there(tmp_path: Path) -> None:
    """
    With no socket at the path, or a stale one nobody listens on, there is
    nothing to take over: the gateway starts as the first.
    """
    assert take_over(str(tmp_path / "none.sock")) is None
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    assert take_over(str(tmp_path / "stale.sock")) is None


def _answering(path: Path, answer: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        connection, _ = server.accept()
        connection.recv(100)
        connection.sendall(answer)
        connection.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "closed the connection"),
        (b"not json\n", "failed"),
        (b'{"error": "not the same user"}\n', "refused: not the same user"),
        (b'{"pid": 1, "sockets": [{"description": "tcp:1", "family": 2}]}\n', "got 0 sockets"),
    ],
)
def test_bad_answers(tmp_path: Path, answer: bytes, message: str) -> None:
    """
    A process at the path that answers wrongly fails the hand-over with a
    clear reason (start-up then stops instead of binding over it).
    """
    path = tmp_path / "h.sock"
    thread = _answering(path, answer)
    with pytest.raises(HandoverError, match=message):
        take_over(str(path), timeout=5)
    thread.join(timeout=5)


def test_handover_setting(tmp_path: Path) -> None:
    """
    --handover is kept as an absolute path; a path in a missing folder, or a
    file that is not a socket, is refused naming the option.
    """
    os.chdir(tmp_path)
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(["--backend", "tcp:127.0.0.1:1", "--handover", "h.sock"])
    assert options.config.handover == str(tmp_path / "h.sock")
    (tmp_path / "plain").write_text("x")
    for path, message in [
        (str(tmp_path / "missing" / "h.sock"), "the folder of"),
        (str(tmp_path / "plain"), "exists and is not a socket"),
    ]:
        with pytest.raises(UsageError, match=f"--handover: .*{message}"):
            GatewayOptions(reactor=MemoryReactor()).parseOptions(
                ["--backend", "tcp:127.0.0.1:1", "--handover", path]
            )


def test_tls_front_is_handed_over_with_tls(tmp_path: Path) -> None:
    """
    A tls: front taken over by a new process still speaks TLS (the adopted
    socket gets the same TLS wrapper), with the same certificate, once the
    old process has stopped accepting and exited.
    """
    ca = make_ca(tmp_path / "ca", "localhost")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca.server_pem, certs / "localhost.pem")
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with ServerBackend(echo) as backend:
        args = [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            f"tls:{certs}:port=0:interface=\\:\\:1",
            "--backend",
            backend.endpoint,
            "--handover",
            str(tmp_path / "h.sock"),
            "--sniff-timeout",
            "0.2",
            "--health-interval",
            "0",
        ]
        with GatewayProcess(args, tmp_path / "old") as old:
            wait_for(lambda: "::1" in listening_ports(old.pid), "the TLS front")
            tls_port = listening_ports(old.pid)["::1"][0]
            with GatewayProcess(args, tmp_path / "new") as new:
                wait_for(lambda: "no longer accepts" in new.log(), "the hand-over")
                assert listening_ports(new.pid)["::1"] == [tls_port]
                assert old.stop() == 0
                context = ssl.create_default_context(cafile=str(ca.trust_dir / "ca.pem"))
                raw = socket.create_connection(("::1", tls_port), timeout=DEADLINE)
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"over tls\n")
                    assert recv_exactly(tls, 9) == b"over tls\n"
