"""
The TCP fast path's bare backend connection (L{gateway.session.leanlink}):
which endpoint strings a bare socket may connect, and a L{LeanLink}'s connect,
failure, cancel and close on real loopback sockets, with a small reactor that
records what the link asks it to watch.
"""

from __future__ import annotations

import errno
import select
import socket
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    clientFromString,
)
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure

from gateway.session.backendlink import BackendLink, local_shortage
from gateway.session.leanlink import LeanLink, bare_address

reactor: Any = _reactor

BARE = [
    ("tcp:127.0.0.1:7000", (socket.AF_INET, ("127.0.0.1", 7000))),
    (r"tcp:\:\:1:7000", (socket.AF_INET6, ("::1", 7000))),
    ("tcp:host=10.0.0.2:port=25565", (socket.AF_INET, ("10.0.0.2", 25565))),
    ("tcp:10.0.0.2:port=80", (socket.AF_INET, ("10.0.0.2", 80))),
    ("tcp:port=80:host=10.0.0.2", (socket.AF_INET, ("10.0.0.2", 80))),
    ("tcp:127.0.0.1:65535", (socket.AF_INET, ("127.0.0.1", 65535))),
    ("unix:/run/game.sock", (socket.AF_UNIX, "/run/game.sock")),
    ("unix:path=/run/game.sock", (socket.AF_UNIX, "/run/game.sock")),
    ("tcp:localhost:7000", None),  # a host name: the endpoint resolves it
    ("tcp:game.example:7000", None),
    ("tcp:127.0.0.1:7000:timeout=5", None),
    ("tcp:127.0.0.1:7000:bindAddress=127.0.0.2", None),
    ("tcp:127.0.0.1:7000:5", None),  # a positional timeout
    ("unix:/run/game.sock:timeout=5", None),
    ("unix:/run/game.sock:lockfile=1", None),
    ("unix:", None),
    ("tls:127.0.0.1:7000", None),
    ("ssl:127.0.0.1:7000", None),
    ("tcp6:\\:\\:1:7000", None),
    ("tcp:127.0.0.1:0", None),
    ("tcp:127.0.0.1:65536", None),
    ("tcp:127.0.0.1:-1", None),
    ("tcp:127.0.0.1:http", None),
    ("tcp:127.0.0.1:\u00b2", None),  # a digit int() does not take
    ("tcp:127.0.0.1", None),
    ("tcp:127.0.0.1:7000:host=10.0.0.1", None),
    ("tcp:127.0.0.1:", None),
    ("tcp:", None),
    ("tcp", None),
    ("", None),
    (":::", None),
    ("tcp:1.2.3:80", None),
    ("tcp:fe80\\:\\:1%eth0:80", None),
    ("garbage", None),
    ("tcp:127.0.0.1:80\\", None),  # a trailing escape: Twisted's parser raises
]


@pytest.mark.parametrize(("description", "expected"), BARE)
def test_bare_address(description: str, expected: object) -> None:
    """
    A bare socket takes C{tcp:} to an IP address and C{unix:} to a path with
    no other argument; anything else is left to the endpoint.
    """
    assert bare_address(description) == expected


_HOSTS = st.sampled_from(
    ["127.0.0.1", "10.1.2.3", r"\:\:1", r"fe80\:\:2", "localhost", "1.2.3", "", "::1"]
)
_PORTS = st.one_of(
    st.integers(-2, 70000).map(str),
    st.sampled_from(["0080", "\u0663", "\u00b2", "http", "", " 80"]),
)
_EXTRA = st.sampled_from(["", ":timeout=5", ":bindAddress=127.0.0.1", ":5", ":host=1.2.3.4"])


@st.composite
def _descriptions(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["tcp", "unix", "tls", "other"]))
    if kind == "other":
        return draw(st.text(max_size=40))
    if kind == "unix":
        path = draw(st.sampled_from(["/run/x.sock", "rel.sock", "", "path=/a"]))
        return f"unix:{path}{draw(_EXTRA)}"
    host, port = draw(_HOSTS), draw(_PORTS)
    if draw(st.booleans()):
        return f"{kind}:host={host}:port={port}{draw(_EXTRA)}"
    return f"{kind}:{host}:{port}{draw(_EXTRA)}"


@settings(max_examples=400, deadline=None)
@given(_descriptions())
def test_bare_address_matches_the_endpoint(description: str) -> None:
    """
    bare_address never raises, and whatever it returns is where the
    endpoint of the same string connects, with nothing else asked of it.
    """
    result = bare_address(description)
    if result is None:
        return
    endpoint = clientFromString(reactor, description)
    family, target = result
    if family == socket.AF_UNIX:
        assert isinstance(endpoint, UNIXClientEndpoint)
        assert endpoint._path == target
        assert (endpoint._timeout, endpoint._checkPID) == (30, 0)
        return
    assert isinstance(endpoint, TCP4ClientEndpoint)
    assert (endpoint._host, endpoint._port) == target
    assert (endpoint._timeout, endpoint._bindAddress) == (30, None)
    assert socket.inet_pton(family, endpoint._host)


class _Reactor:
    """
    Records what a link asks to be watched; adopts nothing for real.
    """

    def __init__(self) -> None:
        self.writers: list[Any] = []
        self.removed: list[Any] = []
        self.adopted: list[tuple[int, int, Any]] = []

    def addWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        assert writer not in self.writers
        self.writers.append(writer)

    def removeWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        if writer in self.writers:
            self.writers.remove(writer)
        self.removed.append(writer)

    def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> str:  # noqa: N802
        self.adopted.append((fd, family, factory))
        return "transport"


class _Session:
    """
    What a session hears of its link; it takes a ready link as the session does.
    """

    def __init__(self) -> None:
        self.ready: list[Any] = []
        self.lost: list[tuple[Any, Failure]] = []

    def link_ready(self, link: Any) -> None:
        link.ready = True
        self.ready.append(link)

    def link_lost(self, link: Any, reason: Failure) -> None:
        self.lost.append((link, reason))


BACKEND: Any = object()


def _link() -> tuple[LeanLink, _Reactor, _Session, list[Failure]]:
    clock, session, failures = _Reactor(), _Session(), []
    link = LeanLink(session, BACKEND, clock, lambda failure, _: failures.append(failure))  # type: ignore[arg-type]
    return link, clock, session, failures


def _wait_writable(link: LeanLink) -> None:
    _, writable, _ = select.select([], [link.fileno()], [], 10)
    assert writable, "the connect never completed"


@pytest.fixture
def listener() -> Any:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


@pytest.fixture
def closed_port() -> Any:
    """
    A loopback port bound but not listening: connecting to it is refused.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def _connected(link: LeanLink, clock: _Reactor, address: Any) -> None:
    link.connect(address)
    assert clock.writers == [link]
    _wait_writable(link)
    link.doWrite()


def test_connect_succeeds(listener: socket.socket) -> None:
    """
    A completed connect makes the link its own transport and tells the
    session; the reactor no longer watches it.
    """
    link, clock, session, failures = _link()
    _connected(link, clock, (socket.AF_INET, listener.getsockname()))
    assert session.ready == [link]
    assert link.transport is link
    assert clock.writers == [] and clock.removed == [link]
    assert failures == []
    peer, _ = listener.accept()
    assert link.socket is not None
    assert not link.socket.getblocking() and link.socket.gettimeout() == 0.0
    link.socket.sendall(b"hi")
    assert peer.recv(2) == b"hi"
    peer.close()
    link.cancel()  # too late: nothing happens
    assert failures == [] and link.socket is not None
    link.loseConnection()


def test_connect_unix(tmp_path: Path) -> None:
    """
    A C{unix:} address connects the same way.
    """
    path = str(tmp_path / "game.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    try:
        address = bare_address(f"unix:{path}")
        assert address is not None
        link, clock, session, failures = _link()
        _connected(link, clock, address)
        assert session.ready == [link] and failures == []
        peer, _ = server.accept()
        peer.sendall(b"ok")
        assert link.socket is not None and link.socket.recv(2) == b"ok"
        peer.close()
        link.loseConnection()
    finally:
        server.close()


def test_connect_unix_missing_path(tmp_path: Path) -> None:
    """
    A C{unix:} path nobody listens on fails at once, as the endpoint's would.
    """
    link, clock, session, failures = _link()
    link.connect((socket.AF_UNIX, str(tmp_path / "none.sock")))
    [failure] = failures
    assert failure.check(ConnectError)
    assert session.ready == [] and clock.writers == [] and link.socket is None


def test_connect_unix_path_too_long() -> None:
    """
    A C{unix:} path longer than C{connect()} takes (which the configuration
    accepts) fails the attempt, with the reason, rather than raising out of
    the dialer into the front door.
    """
    address = bare_address("unix:/tmp/" + "a" * 200)
    assert address is not None
    link, clock, session, failures = _link()
    link.connect(address)
    [failure] = failures
    assert failure.check(ConnectError)
    assert "too long" in failure.getErrorMessage()
    assert session.ready == [] and clock.writers == [] and link.socket is None


def test_unix_backlog_full(tmp_path: Path) -> None:
    """
    A C{unix:} listener whose backlog is full answers C{connect()} with
    C{EAGAIN}, which is no connect under way: the attempt fails at once
    (it is not taken for connected when the socket turns writable).
    """
    path = str(tmp_path / "full.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(0)
    waiting = []
    try:
        for _ in range(64):
            pending = socket.socket(socket.AF_UNIX)
            pending.setblocking(False)
            waiting.append(pending)
            if pending.connect_ex(path) == errno.EAGAIN:
                break
        else:
            pytest.skip("the backlog never filled")
        link, clock, session, failures = _link()
        link.connect((socket.AF_UNIX, path))
        [failure] = failures
        assert failure.check(ConnectError)
        assert session.ready == [] and clock.writers == [] and link.socket is None
    finally:
        for each in (server, *waiting):
            each.close()


@pytest.mark.parametrize("seen_by", ["doWrite", "connectionLost"])
def test_refused(closed_port: int, seen_by: str) -> None:
    """
    A refused connect fails the attempt with Twisted's refusal, whether the
    reactor reports it as writable or as lost; the socket is closed.
    """
    link, clock, session, failures = _link()
    link.connect((socket.AF_INET, ("127.0.0.1", closed_port)))
    if failures:  # refused before connect() returned (not seen on Linux)
        pytest.skip("the kernel refused at once")
    fd = link.fileno()
    _wait_writable(link)
    if seen_by == "doWrite":
        link.doWrite()
    else:
        clock.writers.remove(link)  # the reactor drops a lost descriptor
        link.connectionLost(Failure(ConnectionDone()))
    [failure] = failures
    assert failure.check(ConnectionRefusedError)
    assert session.ready == [] and link.transport is None
    assert link.socket is None and link.fileno() == -1
    assert clock.writers == []
    with pytest.raises(OSError) as raised:
        socket.socket(fileno=fd).close()  # nothing left open at that number
    assert raised.value.errno == errno.EBADF
    link.loseConnection()  # nothing more happens
    link.cancel()
    assert len(failures) == 1 and session.lost == []


def test_cancel_while_connecting(listener: socket.socket) -> None:
    """
    Cancelling a connect in flight (the reactor has not reported it) fails
    it with CancelledError, stops the watch and closes the socket; a second
    cancel does nothing.
    """
    link, clock, session, failures = _link()
    link.connect((socket.AF_INET, listener.getsockname()))
    assert clock.writers == [link]
    link.cancel()
    [failure] = failures
    assert failure.check(CancelledError)
    assert clock.writers == [] and clock.removed == [link]
    assert link.socket is None
    link.cancel()
    assert len(failures) == 1 and session.ready == []


def test_no_descriptors(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A socket() that fails for want of descriptors fails the attempt in a way
    the dialer counts as the gateway's own shortage, not the backend's.
    """

    def no_socket(*args: Any, **kwargs: Any) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socket", no_socket)
    link, clock, session, failures = _link()
    link.connect((socket.AF_INET, ("127.0.0.1", 9)))
    [failure] = failures
    assert local_shortage(failure)
    assert clock.writers == [] and session.ready == []


def test_refusal_is_not_a_shortage(closed_port: int) -> None:
    """
    A refusal is the backend's, not the gateway's.
    """
    link, _, _, failures = _link()
    link.connect((socket.AF_INET, ("127.0.0.1", closed_port)))
    _wait_writable(link)
    link.doWrite()
    [failure] = failures
    assert not local_shortage(failure)


def test_lose_connection_of_a_ready_link(listener: socket.socket) -> None:
    """
    Closing a taken link tells its session once, as a transport would.
    """
    link, clock, session, _ = _link()
    _connected(link, clock, (socket.AF_INET, listener.getsockname()))
    peer, _ = listener.accept()
    link.loseConnection()
    link.loseConnection()
    link.abortConnection()
    [(lost, reason)] = session.lost
    assert lost is link and reason.check(ConnectionDone)
    assert peer.recv(1) == b""  # the peer sees the close
    peer.close()


def test_lose_connection_of_a_link_not_taken(listener: socket.socket) -> None:
    """
    Closing a link the session never took (connecting, or connected but
    refused by the session) tells the session nothing.
    """
    link, clock, session, failures = _link()
    link.connect((socket.AF_INET, listener.getsockname()))
    link.loseConnection()
    assert session.lost == [] and clock.writers == [] and link.socket is None
    assert failures == []

    other = LeanLink(_Session(), BACKEND, clock, lambda failure, _: failures.append(failure))  # type: ignore[arg-type]
    other.session.link_ready = lambda link: None  # type: ignore[method-assign]
    _connected(other, clock, (socket.AF_INET, listener.getsockname()))
    assert other.transport is other and not other.ready
    other.loseConnection()
    assert other.session.lost == []  # type: ignore[attr-defined]


def test_adopt(listener: socket.socket) -> None:
    """
    Adopting a connected link gives its descriptor to the reactor with a
    ready BackendLink of the same session and backend, and lets go of it.
    """
    link, clock, session, _ = _link()
    _connected(link, clock, (socket.AF_INET, listener.getsockname()))
    fd = link.fileno()
    assert link.adopt() == "transport"
    [(adopted_fd, family, factory)] = clock.adopted
    assert (adopted_fd, family) == (fd, socket.AF_INET)
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, BackendLink)
    assert protocol.ready and protocol.session is cast(object, session)
    assert protocol.backend is BACKEND
    assert link.socket is None
    link.loseConnection()
    assert session.lost == []
