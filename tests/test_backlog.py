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

from gateway.process.errors import StartupError
from gateway.process.listener import (
    LISTEN_BACKLOG,
    FrontListener,
    listen_backlog,
    resize_queue,
    server_endpoint,
    with_backlog,
)
from tests.support import Backend, GatewayProcess, recv_exactly

ADDED = f":backlog={LISTEN_BACKLOG}"


@pytest.mark.parametrize(
    "description",
    [
        "tcp:8080",
        "tcp:8080:interface=127.0.0.1",
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


@pytest.mark.parametrize(
    ("text", "queue"),
    [
        ("tcp:8080", LISTEN_BACKLOG),
        ("tcp:8080:backlog=10", 10),
        ("tcp:8080:127.0.0.1:10", 10),
        ("tcp6:8080:10", 10),
        ("unix:/run/gw.sock", LISTEN_BACKLOG),
        ("tls:/certs:443:10", 10),
        ("tls:/certs:port=443", LISTEN_BACKLOG),
        ("tcp:8080:backlog=many", None),
        ("systemd:domain=INET:index=0", None),
        ("tcp:8080\\", None),
    ],
)
def test_the_queue_a_front_asks_for(text: str, queue: int | None) -> None:
    """
    L{listen_backlog}: a front's own queue, else L{LISTEN_BACKLOG}; none
    for a kind without one, or a string that does not parse.
    """
    assert listen_backlog(text) == queue


def test_endpoints_get_the_queue() -> None:
    """
    The endpoints of TCP and UNIX fronts listen with L{LISTEN_BACKLOG}
    unless their string sizes the queue.
    """
    from twisted.internet import reactor

    made = [
        server_endpoint(reactor, text, "--listen", [])
        for text in ("tcp:0", "tcp6:0", "unix:/tmp/gw.sock", "tcp:0:backlog=7")
    ]
    assert [endpoint._backlog for endpoint in made] == [LISTEN_BACKLOG] * 3 + [7]  # type: ignore[attr-defined]


def test_messages_name_the_front_as_configured() -> None:
    """
    An error about a front quotes its string as the user wrote it, not
    with the queue added.
    """
    from twisted.internet import reactor

    with pytest.raises(StartupError) as raised:
        server_endpoint(reactor, "tls:/nonexistent/certs:port=8443", "--listen", [])
    assert "--listen tls:/nonexistent/certs:port=8443: " in str(raised.value)
    assert "backlog" not in str(raised.value)


def _handshakes(port: int, count: int) -> int:
    """
    How many of C{count} connections to C{port} complete their handshake
    within 0.5 s while nobody accepts (the queue's length, plus one).
    """
    clients = [socket.socket() for _ in range(count)]
    selector = selectors.DefaultSelector()
    done = 0
    try:
        for client in clients:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            selector.register(client, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 0.5
        while done < count and time.monotonic() < deadline:
            for key, _ in selector.select(0.05):
                selector.unregister(key.fileobj)
                done += 1
    finally:
        selector.close()
        for client in clients:
            client.close()
    return done


def test_a_taken_over_socket_gets_the_fronts_queue() -> None:
    """
    A front that takes over a listening socket (hand-over) sizes its queue
    as its own string asks: the gateway it came from may have listened with
    another (Twisted's 50, before this gateway's 4096).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory

    old = socket.socket()
    old.bind(("127.0.0.1", 0))
    old.listen(1)
    port = old.getsockname()[1]
    try:
        assert _handshakes(port, 20) <= 3  # the old queue: one, plus the kernel's one more
        front = FrontListener(
            f"tcp:{port}:interface=127.0.0.1", TCP4ServerEndpoint(reactor, port), Factory()
        )
        front.adopt(reactor, old.fileno(), socket.AF_INET)
        assert _handshakes(port, 20) == 20
        resize_queue(old.fileno(), 1)
        assert _handshakes(port, 20) <= 3
    finally:
        old.close()


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
