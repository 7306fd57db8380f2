"""
Unit tests of large static bodies by C{sendfile(2)} (L{gateway.http.sendfile}):
a front door on a real TCP connection whose transport runs on a memory
reactor, so each of the transport's turns is taken by the test (the
end-to-end HTTP tests, tests/test_e2e_http*.py, serve their large files both
ways through the gateway as users start it: conftest.http_path).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.tcp import Server
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.front.door import FrontDoor
from gateway.http import sendfile
from gateway.http.sendfile import SENDFILE_FROM, TURN_BYTES, file_sender
from tests.support import pattern
from tests.test_lean_static import PEER, Events, make_front

BIG = 3 * TURN_BYTES + 12_345
"""A file that takes several of a connection's turns."""

REQUEST = b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n"

REAL_SENDFILE = os.sendfile


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A folder with C{big.bin} (L{BIG} bytes) and C{small.txt}.
    """
    folder = tmp_path_factory.mktemp("www")
    (folder / "big.bin").write_bytes(pattern(BIG, seed=3))
    (folder / "small.txt").write_bytes(b"small\n")
    return folder


@implementer(ILogObserver)
class Failures:
    """
    The failures logged while it is open (their formats).
    """

    def __init__(self) -> None:
        self.formats: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.formats.append(event.get("log_format") or "")

    def __enter__(self) -> Failures:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


class Connection:
    """
    A front door on one end of a real TCP connection (its transport on a
    memory reactor), and the client's end.
    """

    def __init__(self, root: Path, *, fast_path: bool = True, rcvbuf: int = 0) -> None:
        first, _, clock = make_front(root, fast_path=fast_path)
        self.clock: MemoryReactorClock = clock
        self.front: FrontDoor = first.factory.buildProtocol(PEER)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.client = socket.socket()
            if rcvbuf:
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.client.connect(listener.getsockname())
            accepted, address = listener.accept()
        self.client.setblocking(False)
        self.transport = Server(accepted, self.front, address, None, 1, clock)  # type: ignore[arg-type]
        self.front.makeConnection(self.transport)

    def turn(self) -> None:
        """
        One reactor turn: the transport writes if it asked to, due calls run.
        """
        if self.transport in self.clock.getWriters():
            why = self.transport.doWrite()
            if why:
                self.transport.connectionLost(Failure(why))
        self.clock.advance(0)

    def receive(self, size: int, *, turns: int = 2_000) -> bytes:
        """
        Turn and read until C{size} bytes arrived (or the connection ended,
        or C{turns} ran out).
        """
        got = bytearray()
        for _ in range(turns):
            self.turn()
            try:
                chunk = self.client.recv(1 << 20)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
            if len(got) >= size:
                break
        return bytes(got)

    def response(self, size: int, *, turns: int = 5_000) -> tuple[bytes, bytes]:
        """
        Turn and read one response's head and C{size} bytes of body (less if
        the connection ended, or C{turns} ran out).
        """
        data = b""
        for _ in range(turns):
            head, found, body = data.partition(b"\r\n\r\n")
            if found and len(body) >= size:
                return head, body
            more = self.receive(1, turns=1)
            if self.transport.disconnected and not more:
                break
            data += more
        return data.partition(b"\r\n\r\n")[::2]

    def close(self) -> None:
        if self.transport.connected:
            self.transport.connectionLost(Failure(ConnectionDone()))
        self.client.close()


@contextmanager
def connection(root: Path, **kwargs: Any) -> Iterator[Connection]:
    conn = Connection(root, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def counted_sendfile(
    replace: Callable[..., int] | None = None,
) -> Iterator[list[int]]:
    """
    Count the bytes each C{os.sendfile} call sent (or run C{replace} instead).
    """
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        sent = (replace or real)(out_fd, in_fd, offset, count)
        calls.append(sent)
        return sent

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "sendfile", counting)
        yield calls


def split_response(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_large_file_goes_by_sendfile_and_the_connection_goes_on(root: Path) -> None:
    """
    A file of several turns' bytes arrives whole by C{sendfile}, no more
    than L{TURN_BYTES} per turn, with the response's head first; the
    connection is kept and answers its next request (the channel has its
    transport back), and the access event counts the body's bytes.
    """
    body = (root / "big.bin").read_bytes()
    with Events() as events, counted_sendfile() as calls, connection(root) as conn:
        conn.front.dataReceived(REQUEST)
        head, got = conn.response(BIG)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nContent-Length: %d" % BIG in head
        assert got == body
        assert sum(calls) == BIG
        assert conn.transport.producer is conn.front.http
        conn.front.dataReceived(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        head, small = split_response(conn.receive(100))
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and small == b"small\n"
    assert [(e["path"], e["status"], e["bytes_out"]) for e in events.events] == [
        ("/big.bin", 200, BIG),
        ("/small.txt", 200, 6),
    ]


def test_pipelined_requests_after_a_large_file_wait_their_turn(root: Path) -> None:
    """
    A request pipelined behind a large file is answered after the file's
    last byte, not in the middle of it.
    """
    body = (root / "big.bin").read_bytes()
    with counted_sendfile() as calls, connection(root) as conn:
        conn.front.dataReceived(REQUEST + b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        for _ in range(200):
            data += conn.receive(1 << 30, turns=100)
            if data.endswith(b"small\n"):
                break
        head, rest = split_response(data)
        assert rest[:BIG] == body
        second, small = split_response(rest[BIG:])
        assert second.startswith(b"HTTP/1.1 200 OK\r\n") and small == b"small\n"
        assert sum(calls) == BIG


def test_a_single_range_goes_by_sendfile(root: Path) -> None:
    """
    One large range is sent from its offset; several ranges (a multipart
    body) and a small range are copied.
    """
    body = (root / "big.bin").read_bytes()
    with counted_sendfile() as calls, connection(root) as conn:
        conn.front.dataReceived(
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-299999\r\n\r\n"
        )
        head, got = conn.response(299_000)
        assert head.startswith(b"HTTP/1.1 206 Partial Content\r\n")
        assert got == body[1000:300_000]
        assert sum(calls) == 299_000
        calls.clear()
        conn.front.dataReceived(
            b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99999,200000-299999\r\n\r\n"
        )
        multipart = conn.receive(200_300, turns=2000)
        assert b"multipart/byteranges" in multipart and calls == []
        assert body[:100_000] in multipart and body[200_000:300_000] in multipart
        conn.front.dataReceived(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\n\r\n")
        head, got = split_response(conn.receive(500, turns=2000))
        assert head.startswith(b"HTTP/1.1 206 ") and got == body[:100]
        assert calls == []


def test_small_bodies_and_the_switch_copy(root: Path) -> None:
    """
    A body under L{SENDFILE_FROM} bytes, and any body with the fast path
    off, are copied; a body of exactly L{SENDFILE_FROM} is sent.  (Ranges:
    a whole file that small is the lean path's.)
    """
    with counted_sendfile() as calls, connection(root, fast_path=False) as conn:
        conn.front.dataReceived(REQUEST)
        _, got = conn.response(BIG)
        assert got == (root / "big.bin").read_bytes() and calls == []
    body = (root / "big.bin").read_bytes()
    for size, sent in [(SENDFILE_FROM - 1, 0), (SENDFILE_FROM, SENDFILE_FROM)]:
        span = b"Range: bytes=10-%d\r\n" % (10 + size - 1)
        with counted_sendfile() as calls, connection(root) as conn:
            conn.front.dataReceived(REQUEST[:-2] + span + b"\r\n")
            _, got = conn.response(size)
            assert got == body[10 : 10 + size] and sum(calls) == sent


def test_only_plain_connections_of_the_gateways_channel_send(root: Path) -> None:
    """
    L{file_sender} sends only on a plain socket's transport of a channel
    that can lend it, with the site's fast path on, for a large enough body.
    """

    class Site:
        fast_path = True

    class Channel:
        def __init__(self, transport: object) -> None:
            self.transport = transport

        def lend_transport(self, producer: object) -> None:
            raise AssertionError("not called here")

    class Request:
        def __init__(self, channel: object, site: object) -> None:
            self.channel = channel
            self.site = site

    with connection(root) as conn, open(__file__, "rb") as file:
        plain = conn.transport
        size = SENDFILE_FROM
        assert file_sender(Request(Channel(plain), Site()), file, 0, size) is not None
        assert file_sender(Request(Channel(plain), Site()), file, 1, size) is None
        assert file_sender(Request(Channel(StringTransport()), Site()), file, 0, size) is None
        off = Site()
        off.fast_path = False
        assert file_sender(Request(Channel(plain), off), file, 0, size) is None
        assert file_sender(Request(object(), Site()), file, 0, size) is None
        plain.TLS = True
        assert file_sender(Request(Channel(plain), Site()), file, 0, size) is None


def test_a_file_system_without_sendfile_gets_the_copy(root: Path) -> None:
    """
    C{EINVAL} before any byte was sent (a file system that cannot send
    files so): the body is copied instead, whole, on the same connection,
    which goes on.
    """

    def refuse(*_: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    with counted_sendfile(refuse), connection(root) as conn:
        conn.front.dataReceived(REQUEST)
        head, got = conn.response(BIG)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got == (root / "big.bin").read_bytes()
        conn.front.dataReceived(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.receive(200).endswith(b"\r\n\r\nsmall\n")


def test_a_file_cut_while_sent_aborts_the_connection(tmp_path: Path) -> None:
    """
    A file cut while its body is sent (C{sendfile} returns 0 before the end):
    the connection is aborted (the client sees it end short, its slot is
    freed), the failure is logged, and the file is closed.
    """
    (tmp_path / "big.bin").write_bytes(pattern(BIG, seed=3))
    with (
        pytest.MonkeyPatch.context() as patch,
        Events() as events,
        Failures() as failures,
        connection(tmp_path, rcvbuf=65536) as conn,
    ):
        senders: list[Any] = []
        real = sendfile.FileSender.__init__

        def keep(self: Any, *args: Any) -> None:
            real(self, *args)
            senders.append(self)

        patch.setattr(sendfile.FileSender, "__init__", keep)
        conn.front.dataReceived(REQUEST)
        first = conn.receive(65536, turns=50)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        os.truncate(tmp_path / "big.bin", 100_000)
        got = len(split_response(first)[1]) + len(conn.receive(BIG))
        assert 0 < got < BIG
        assert not conn.transport.connected
        [sender] = senders
        assert sender._file is None
    assert failures.formats == ["response to {peer} failed mid-response; connection aborted"]
    assert [(e["path"], e["reason"]) for e in events.events] == [("/big.bin", "client-left")]


def test_a_client_that_leaves_mid_body_ends_quietly(root: Path) -> None:
    """
    A client that resets the connection mid-body: the transport is aborted,
    nothing is logged as a failure, the request is logged as its client
    having left.
    """
    with Events() as events, Failures() as failures, connection(root, rcvbuf=65536) as conn:
        conn.front.dataReceived(REQUEST)
        assert conn.receive(65536, turns=50)
        linger = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
        conn.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        conn.client.close()
        for _ in range(200):
            conn.turn()
            if not conn.transport.connected:
                break
        assert not conn.transport.connected
    assert failures.formats == []
    assert [(e["path"], e["reason"]) for e in events.events] == [("/big.bin", "client-left")]


def test_a_turn_sends_at_most_its_share(root: Path) -> None:
    """
    One connection's turn sends at most L{TURN_BYTES} (then it waits for
    the socket to be writable again), however much the socket would take.
    """
    body = (root / "big.bin").read_bytes()
    per_turn: list[int] = []
    with (
        pytest.MonkeyPatch.context() as patch,
        counted_sendfile() as calls,
        connection(root, rcvbuf=4 * 1024 * 1024) as conn,
    ):
        patch.setattr(sendfile, "TURN_BYTES", 128 * 1024)
        patch.setattr(sendfile, "STEP", 32 * 1024)
        conn.front.dataReceived(REQUEST)
        got = b""
        for _ in range(5_000):
            before = len(calls)
            got += conn.receive(1, turns=1)
            per_turn.append(sum(calls[before:]))
            if len(got) >= BIG + 200 and b"\r\n\r\n" in got:
                head, _, rest = got.partition(b"\r\n\r\n")
                if len(rest) == BIG:
                    break
        assert got.partition(b"\r\n\r\n")[2] == body
    assert max(per_turn) <= 128 * 1024
    assert sum(per_turn) == BIG


def test_a_close_while_the_body_is_sent_ends_the_connection(root: Path) -> None:
    """
    The transport's C{loseConnection} (the gateway stopping) while the
    sender has it: the connection closes at its next turn, the rest unsent,
    as for a copied body; the channel's own C{loseConnection} likewise.  The
    file is closed either way, and the request logged as its client having
    left (the response did not complete).
    """
    for close in ("transport", "channel"):
        senders: list[Any] = []
        with (
            pytest.MonkeyPatch.context() as patch,
            Events() as events,
            connection(root, rcvbuf=65536) as conn,
        ):
            real = sendfile.FileSender.__init__

            def keep(self: Any, *args: Any, real: Any = real, senders: Any = senders) -> None:
                real(self, *args)
                senders.append(self)

            patch.setattr(sendfile.FileSender, "__init__", keep)
            conn.front.dataReceived(REQUEST)
            assert conn.receive(65536, turns=50)
            if close == "transport":
                conn.transport.loseConnection()
            else:
                assert conn.front.http is not None
                conn.front.http.loseConnection()
            for _ in range(50):
                conn.turn()
                if not conn.transport.connected:
                    break
            assert not conn.transport.connected, close
            [sender] = senders
            assert sender._file is None, close
        assert [(e["path"], e["reason"]) for e in events.events] == [
            ("/big.bin", "client-left")
        ], close


def test_a_reset_seen_by_sendfile_ends_quietly(root: Path) -> None:
    """
    C{sendfile} failing with C{ECONNRESET} (the client reset the
    connection): the connection is aborted, nothing is logged as a failure.
    """
    sent: list[int] = []

    def reset_after_one(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if sent:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        sent.append(REAL_SENDFILE(out_fd, in_fd, offset, min(count, 65536)))
        return sent[0]

    with (
        Events() as events,
        Failures() as failures,
        counted_sendfile(reset_after_one),
        connection(root) as conn,
    ):
        conn.front.dataReceived(REQUEST)
        for _ in range(50):
            conn.turn()
            if not conn.transport.connected:
                break
        assert not conn.transport.connected
        assert sent == [65536]
    assert failures.formats == []
    assert [(e["path"], e["reason"]) for e in events.events] == [("/big.bin", "client-left")]


def test_a_channel_paused_before_the_body_reads_again_after(root: Path) -> None:
    """
    A channel its transport had paused (a full buffer before this response)
    is told the transport takes data again when it gets the transport back:
    else it would never read the connection's next request.
    """
    with counted_sendfile() as calls, connection(root) as conn:
        conn.front.dataReceived(b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.response(6)[1] == b"small\n"
        channel = conn.front.http
        assert channel is not None
        channel.pauseProducing()  # what the transport does when its buffer is full
        conn.front.dataReceived(REQUEST)
        head, got = conn.response(BIG)
        assert len(got) == BIG and sum(calls) == BIG
        for _ in range(5):
            conn.turn()
        assert conn.transport in conn.clock.getReaders()
