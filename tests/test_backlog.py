"""
The fronts' listen queue: L{gateway.process.listener.with_backlog} (a
front's string gets C{backlog=}L{LISTEN_BACKLOG} unless it sets one), and a
login storm that a stopped gateway's kernel queue holds whole.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import time
from pathlib import Path

import pytest
from twisted.internet.endpoints import _parse

from gateway.process.listener import LISTEN_BACKLOG, with_backlog
from tests.support import Backend, GatewayProcess, recv_exactly

ADDED = f":backlog={LISTEN_BACKLOG}"


@pytest.mark.parametrize(
    "description",
    [
        "tcp:8080",
        "tcp:8080:interface=127.0.0.1",
        "TCP:80",
        "tcp6:8080:interface=\\:\\:1",
        "unix:/run/gw.sock",
        "unix:/run/gw\\:1.sock:mode=660",
        "ssl:443:privateKey=key.pem",
        "tls:/etc/gateway/certs:port=443",
    ],
)
def test_a_queue_is_added(description: str) -> None:
    """
    A front of a kind with a listen queue that does not size it gets
    L{LISTEN_BACKLOG}, its other arguments untouched.
    """
    added = with_backlog(description)
    assert added == description + ADDED
    args, kwargs = _parse(added)
    assert kwargs.pop("backlog") == str(LISTEN_BACKLOG)
    assert (args, kwargs) == _parse(description)


@pytest.mark.parametrize(
    "description",
    [
        "tcp:8080:backlog=10",
        "tcp:8080:127.0.0.1:10",  # port, interface, backlog
        "tcp6:8080:10",  # port, backlog
        "unix:/run/gw.sock:660:10",  # path, mode, backlog
        "ssl:443:k.pem:c.pem:SSLv23_METHOD:127.0.0.1:10",
        "tls:/certs:443:10",
        "systemd:domain=INET:index=0",  # adopts a socket that already listens
        "tcp:8080\\",  # ends in an escape: left to the parser's own error
        "",
    ],
)
def test_a_queue_already_sized_or_none_is_left(description: str) -> None:
    """
    A front that sizes its queue (by name or by position), a kind without
    one, and a string that does not parse, are left as they are.
    """
    assert with_backlog(description) == description


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as value:
        return int(value.read())


def test_login_storm_waits_in_the_queue(tmp_path: Path, echo_backend: Backend) -> None:
    """
    While the gateway does not accept (stopped: a busy process, a slow
    start), a login storm several times Twisted's default queue of 50
    completes its handshakes in the kernel's queue at once, instead of
    waiting for retransmissions; once the gateway runs again, every player
    is served.
    """
    storm = min(300, _somaxconn() - 1)
    assert storm > 100, "net.core.somaxconn is too small for this test"
    with GatewayProcess(["--backend", echo_backend.endpoint], tmp_path) as gateway:
        players = [socket.socket() for _ in range(storm)]
        selector = selectors.DefaultSelector()
        try:
            os.kill(gateway.pid, signal.SIGSTOP)
            try:
                for player in players:
                    player.setblocking(False)
                    assert player.connect_ex(("127.0.0.1", gateway.port)) == errno.EINPROGRESS
                    selector.register(player, selectors.EVENT_WRITE)
                # A dropped handshake is retried after 1 s: wait less than that.
                deadline = time.monotonic() + 0.8
                queued = 0
                while queued < storm and time.monotonic() < deadline:
                    for key, _ in selector.select(0.1):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                        selector.unregister(sock)
                        queued += 1
                assert queued == storm, f"{storm - queued} of {storm} handshakes not queued"
            finally:
                os.kill(gateway.pid, signal.SIGCONT)
            for number, player in enumerate(players):
                player.setblocking(True)
                player.settimeout(10)
                player.sendall(b"\x00player %d\n" % number)
            for number, player in enumerate(players):
                line = b"\x00player %d\n" % number
                assert recv_exactly(player, len(line)) == line
        finally:
            selector.close()
            for player in players:
                player.close()
