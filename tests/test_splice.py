"""
The zero-copy relay's fallbacks, in this process on the real reactor: when
splice(2) fails (at once, or in the middle of a transfer) the session goes
on through the transports without losing, duplicating or reordering a byte.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThread

from gateway.config import BackendSpec, GatewayConfig
from gateway.process.assemble import make_service
from gateway.session import splice
from gateway.session.relay import GameSession
from gateway.session.splice import POOL, SpliceRelay, splice_available, spliceable
from tests.support import Backend, echo, pattern, recv_exactly, recv_until_eof

reactor: Any = _reactor

pytestmark = pytest.mark.skipif(not splice_available(), reason="splice(2) is Linux only")


def _transfer(port: int, data: bytes) -> bytes:
    """
    Send C{data} (then a half-close) and read everything echoed back, in a thread.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def send() -> None:
        for start in range(0, len(data), 65536):
            sock.sendall(data[start : start + 65536])
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    received = recv_until_eof(sock)
    sender.join(timeout=30)
    sock.close()
    return received


def _config(backend: Backend) -> GatewayConfig:
    """
    A gateway on an ephemeral loopback port in front of C{backend}, splicing.
    """
    return GatewayConfig(
        listen=("tcp:0:interface=127.0.0.1",),
        backends=(BackendSpec(name="echo", endpoint=backend.endpoint),),
        admin=None,
        health_interval=0,
        sniff_timeout=0.1,
        relay="auto",
    )


def _record_endings(monkeypatch: pytest.MonkeyPatch) -> list[GameSession]:
    """
    The game sessions that end from now on, each once: C{_finish} is called
    again on the other side's close, which may come later (an earlier
    test's session whose backend closes a turn after its client, during
    this test), and only its first call ends the session.
    """
    ended: list[GameSession] = []
    original = GameSession._finish

    def finish(session: GameSession, reason: Any) -> None:
        if session.close_reason is None:
            ended.append(session)
        original(session, reason)

    monkeypatch.setattr(GameSession, "_finish", finish)
    return ended


def _failing_after(calls: int) -> Callable[..., int]:
    """
    os.splice that works C{calls} times, then fails as for a socket type
    splice(2) does not handle.
    """
    real = os.splice
    count = [0]

    def splice(*args: Any, **kwargs: Any) -> int:
        count[0] += 1
        if count[0] > calls:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(*args, **kwargs)

    return splice


@pytest.mark.parametrize("works", [0, 1, 7, 40])
@pytest_twisted.ensureDeferred
async def test_splice_failure_falls_back_without_losing_a_byte(
    works: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Whether splice(2) fails on its first use or after some bytes moved (with
    bytes possibly still in a pipe), 4 MiB echoed through the session come
    back byte-exact, and the session's byte counters are exact.
    """
    # A threaded echo server (a Twisted protocol that is not half-closeable
    # would drop its unsent echo when the client's end of stream reaches it).
    with Backend(echo) as backend:
        service = make_service(_config(backend), reactor)
        ended = _record_endings(monkeypatch)
        service.startService()
        try:
            front = service.listeners[0].port
            assert front is not None
            monkeypatch.setattr(os, "splice", _failing_after(works))
            data = pattern(4 << 20, seed=works)
            received = await deferToThread(_transfer, front.getHost().port, data)  # type: ignore[attr-defined]
        finally:
            await service.stopService()
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    [session] = ended
    assert (session.bytes_in, session.bytes_out) == (len(data), len(data))
    # "spliced" (the access log's relay field) means bytes moved by splice(2).
    if works == 0:
        assert not session.spliced
    if works >= 7:
        assert session.spliced


@pytest.mark.parametrize("fast_path", [True, False])
@pytest_twisted.ensureDeferred
async def test_splice_failure_after_the_client_ended_keeps_the_backend_side(
    fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The relay passed the client's end of stream on (the backend's socket is
    half-closed), then splice(2) fails on the backend's bytes: the
    transports relay every byte the backend still sends, and the session
    ends when the backend does.  (The transports once half-closed the
    backend's connection a second time, which failed as a lost connection
    and cut the session short.)
    """
    question = b"\x00the question\n"
    reply = pattern(1 << 20, seed=3)
    asked, failing = threading.Event(), threading.Event()

    def answer_after_the_end(sock: socket.socket, backend: Backend) -> None:
        backend.record(recv_exactly(sock, len(question)))
        asked.set()  # the session splices now: the client's end goes through the relay
        backend.record(recv_until_eof(sock))
        failing.set()  # splice(2) fails from now on: the reply goes by copy
        sock.sendall(reply)
        sock.close()

    real = os.splice
    calls = {"worked": 0, "failed": 0}

    def splice_until_told(*args: Any, **kwargs: Any) -> int:
        if failing.is_set():
            calls["failed"] += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        calls["worked"] += 1
        return real(*args, **kwargs)

    def ask(port: int) -> bytes:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        with sock:
            sock.sendall(question)
            assert asked.wait(10)
            sock.shutdown(socket.SHUT_WR)
            return recv_until_eof(sock)

    ended = _record_endings(monkeypatch)
    with Backend(answer_after_the_end) as backend:
        config = dataclasses.replace(_config(backend), tcp_fast_path=fast_path)
        service = make_service(config, reactor)
        service.startService()
        try:
            front = service.listeners[0].port
            assert front is not None
            monkeypatch.setattr(os, "splice", splice_until_told)
            received = await deferToThread(ask, front.getHost().port)  # type: ignore[attr-defined]
        finally:
            await service.stopService()
    assert backend.received == [question, b""]
    assert len(received) == len(reply)
    assert received == reply
    # The relay read the client's end (splice(2) said 0) and passed it on;
    # then the reply's first splice(2) failed.
    assert calls["worked"] >= 1
    assert calls["failed"] >= 1
    [session] = ended
    assert (session.bytes_in, session.bytes_out) == (len(question), len(reply))


def test_only_plain_sockets_are_spliceable() -> None:
    """
    Transports that are not the reactor's own sockets (TLS, wrappers, test
    transports) are never spliced.
    """
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    assert not spliceable(StringTransport())
    assert not spliceable(object())
    assert not spliceable(TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol))


@pytest_twisted.ensureDeferred
async def test_out_of_descriptors_falls_back_and_idle_sessions_hold_no_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    When no pipe can be made (the process is out of file descriptors), the
    session goes on through the transports, byte-exact; and a session whose
    bytes have all been delivered holds no pipe (the pool has them all back).
    """
    with Backend(echo) as backend:
        service = make_service(_config(backend), reactor)
        service.startService()
        try:
            front = service.listeners[0].port
            assert front is not None
            port = front.getHost().port  # type: ignore[attr-defined]
            data = pattern(1 << 20, seed=11)
            assert await deferToThread(_transfer, port, data) == data
            assert POOL.in_use == 0

            def no_pipes(flags: int) -> tuple[int, int]:
                raise OSError(errno.EMFILE, "Too many open files")

            monkeypatch.setattr(os, "pipe2", no_pipes)
            monkeypatch.setattr(POOL, "_free", [])
            assert await deferToThread(_transfer, port, data) == data
        finally:
            await service.stopService()


class _Plain:
    """
    What the relay asks of a transport, over a plain socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def fileno(self) -> int:
        return self.socket.fileno()

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        pass

    def stopWriting(self) -> None:  # noqa: N802 - Twisted's name
        pass


class _Watcher:
    """
    A reactor for one relay: records what it watches, and runs it over
    select(2) on the real sockets (L{pump}).
    """

    def __init__(self) -> None:
        self.readers: list[Any] = []
        self.writers: list[Any] = []
        self.ends: dict[str, Any] = {}

    def addReader(self, end: Any) -> None:  # noqa: N802 - Twisted's name
        self.ends.setdefault(end.name, end)
        if end not in self.readers:
            self.readers.append(end)

    def removeReader(self, end: Any) -> None:  # noqa: N802 - Twisted's name
        if end in self.readers:
            self.readers.remove(end)

    def addWriter(self, end: Any) -> None:  # noqa: N802 - Twisted's name
        if end not in self.writers:
            self.writers.append(end)

    def removeWriter(self, end: Any) -> None:  # noqa: N802 - Twisted's name
        if end in self.writers:
            self.writers.remove(end)

    def pump(self, done: Callable[[], bool], rounds: int = 500) -> None:
        """
        Run the relay's events until C{done()} (a bounded number of rounds;
        a round with nothing to do within 10 s fails).
        """
        for _ in range(rounds):
            if done():
                return
            readable, writable, _ = select.select(self.readers, self.writers, [], 10)
            assert readable or writable, "the relay waits for nothing that happens"
            for end in readable:
                end.doRead()
            for end in writable:
                end.doWrite()
        assert done(), "not done within the rounds"


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """
    Two ends of a loopback TCP connection: (the peer's, the relay's).
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        peer = socket.create_connection(listener.getsockname())
        mine, _ = listener.accept()
    peer.settimeout(10)
    mine.setblocking(False)
    return peer, mine


class _Spliced:
    """
    A relay between a client and a server connection, and what it reported.
    """

    def __init__(self) -> None:
        self.client, client = _tcp_pair()
        self.server, server = _tcp_pair()
        self.watcher = _Watcher()
        self.moved = [0, 0]
        self.ended: list[tuple[str, bool]] = []
        self.finished: list[tuple[bytes, bytes]] = []
        self.relay = SpliceRelay(self.watcher, self)
        self._sockets = (self.client, client, self.server, server)
        self.relay.start(
            _Plain(client),  # type: ignore[arg-type]
            _Plain(server),  # type: ignore[arg-type]
        )

    def splice_moved(self, up: int, down: int) -> None:
        self.moved[0] += up
        self.moved[1] += down

    def splice_handed_back(self, up: bytes, down: bytes) -> None:
        self.finished.append((up, down))

    def splice_passed_end(self, name: str, both: bool) -> None:
        self.ended.append((name, both))

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def spliced() -> Any:
    pair = _Spliced()
    yield pair
    pair.close()


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "end of stream too early"
        data += chunk
    return data


@pytest.mark.parametrize("first", ["client", "server"])
def test_ends_of_stream_pass_through(spliced: _Spliced, first: str) -> None:
    """
    One side's end of stream half-closes the other's socket (its peer reads
    the end) while bytes still flow the other way; the other side's end then
    stops the relay without handing the sockets back.
    """
    ender, other = (
        (spliced.client, spliced.server) if first == "client" else (spliced.server, spliced.client)
    )
    index = 0 if first == "client" else 1
    ender.sendall(b"hello")
    spliced.watcher.pump(lambda: spliced.moved[index] == 5)
    assert _recv_exactly(other, 5) == b"hello"

    ender.shutdown(socket.SHUT_WR)
    spliced.watcher.pump(lambda: bool(spliced.ended))
    assert spliced.ended == [(first, False)]
    assert other.recv(1) == b""  # the half-close reached the far end
    assert spliced.relay.active

    data = pattern(300_000, seed=3)
    other.sendall(data)
    spliced.watcher.pump(lambda: spliced.moved[1 - index] == len(data))
    assert _recv_exactly(ender, len(data)) == data

    other.shutdown(socket.SHUT_WR)
    second = "server" if first == "client" else "client"
    spliced.watcher.pump(lambda: len(spliced.ended) == 2)
    assert spliced.ended == [(first, False), (second, True)]
    assert ender.recv(1) == b""
    assert not spliced.relay.active
    assert spliced.finished == []
    assert spliced.watcher.readers == [] and spliced.watcher.writers == []
    assert POOL.in_use == 0


def _fill(sock: socket.socket) -> int:
    """
    Write to C{sock} (non-blocking) until it takes no more; the byte count.
    """
    count = 0
    while True:
        try:
            count += sock.send(b"x" * 65536)
        except BlockingIOError:
            return count


def test_end_of_stream_with_bytes_in_the_pipe_hands_back(spliced: _Spliced) -> None:
    """
    An end of stream read while bytes of that direction still wait in the
    pipe (the destination is full; the reactor reported the source readable
    in the same round) stops splicing: the pipe is delivered, then the
    sockets are handed back; no byte is lost and no end is passed on.
    """
    server_side = spliced._sockets[3]
    filler = _fill(server_side)
    data = pattern(32_768, seed=5)
    spliced.client.sendall(data)
    spliced.client.shutdown(socket.SHUT_WR)
    client_end = spliced.watcher.ends["client"]
    select.select([client_end], [], [], 10)
    for _ in range(10):
        if spliced.relay.reason:
            break
        client_end.doRead()  # read by the relay, then a stale event
    assert spliced.relay.reason == "client ended its stream"
    assert spliced.relay.active and spliced.finished == []
    assert spliced.watcher.writers  # bytes wait in the pipe for the server

    received = b""
    spliced.server.setblocking(False)
    for _ in range(1000):
        if spliced.finished:
            break
        try:
            received += spliced.server.recv(1 << 20)
        except BlockingIOError:
            pass
        _, writable, _ = select.select([], spliced.watcher.writers, [], 0.1)
        for end in writable:
            end.doWrite()
    spliced.server.settimeout(10)
    received += _recv_exactly(spliced.server, filler + spliced.moved[0] - len(received))
    [(up, down)] = spliced.finished
    assert received[:filler] == b"x" * filler
    assert received[filler:] + up == data
    assert down == b""
    assert spliced.ended == []
    assert not spliced.relay.active


def test_a_full_pipe_is_not_an_end_of_stream(
    spliced: _Spliced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A read event for a source whose pipe is full (its destination is full
    too; the event came in the same round as the one that filled it) reads
    nothing and ends nothing: splicing goes on once the destination drains.
    """
    monkeypatch.setattr(splice, "PIPE_SIZE", 4096)
    monkeypatch.setattr(POOL, "_free", [])
    filler = _fill(spliced._sockets[3])
    data = pattern(32_768, seed=6)
    spliced.client.sendall(data)
    client_end = spliced.watcher.ends["client"]
    select.select([client_end], [], [], 10)
    client_end.doRead()
    assert spliced.watcher.writers  # the destination is full
    client_end.doRead()  # the stale event
    assert spliced.relay.reason == ""
    assert spliced.relay.active

    spliced.server.setblocking(False)
    received = b""
    for _ in range(1000):
        if spliced.moved[0] == len(data):
            break
        try:
            received += spliced.server.recv(1 << 20)
        except BlockingIOError:
            pass
        readable, writable, _ = select.select(
            spliced.watcher.readers, spliced.watcher.writers, [], 0.1
        )
        for end in readable:
            end.doRead()
        for end in writable:
            end.doWrite()
    spliced.server.settimeout(10)
    received += _recv_exactly(spliced.server, filler + len(data) - len(received))
    assert received[filler:] == data
    assert spliced.relay.active and spliced.finished == [] and spliced.ended == []
