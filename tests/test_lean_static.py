"""
Unit tests of the lean static path (L{gateway.http.lean}): the same
requests through a front door on an in-memory transport with the lean path
on and off give the same bytes (but the C{Date}) and the same access events;
its head parser takes only the narrow form it answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.front.door import FrontDoor, GatewayFactory
from gateway.http.lean import FILE_LIMIT, HEAD_LIMIT, LeanStatic, parse_head
from gateway.http.site import make_site
from gateway.pool.backends import Backend, Pool
from gateway.session.settings import SessionSettings
from tests.test_front import RecordingEndpoint, splits

PEER = IPv4Address("TCP", "127.0.0.1", 40001)
MTIME = 1_700_000_000


def _tree(root: Path) -> None:
    """
    The files every test serves: small ones, precompressed siblings (one
    stale), a hidden one, a large one, one whose extension implies a
    coding, a folder, and a link out of the root.
    """
    files = {
        "index.html": b"<h1>home</h1>\n",
        "a.txt": b"alpha\n" * 10,
        "empty.txt": b"",
        "app.js": b"console.log('x');\n" * 20,
        "app.js.gz": b"GZ" * 30,
        "app.js.br": b"BR" * 20,
        "old.css": b"body{}\n",
        "old.css.gz": b"stale",
        ".env": b"SECRET=1\n",
        ".well-known/x.txt": b"known\n",
        "sub/c.css": b"p{color:red}\n",
        "sub/index.html": b"<p>sub</p>\n",
        "htm/index.htm": b"<p>htm</p>\n",
        "big.bin": b"\xab" * (FILE_LIMIT + 1),
        "data.tar.gz": b"\x1f\x8b" + b"\x00" * 40,
        "name with+plus.txt": b"plus\n",
    }
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        os.utime(path, (MTIME, MTIME))
    os.utime(root / "old.css.gz", (MTIME - 10, MTIME - 10))
    outside = root.parent / "outside.txt"
    outside.write_bytes(b"outside\n")
    (root / "out.txt").symlink_to(outside)


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lean") / "www"
    root.mkdir()
    _tree(root)
    return root


def make_front(
    root: Path, *, fast_path: bool
) -> tuple[FrontDoor, StringTransport, MemoryReactorClock]:
    """
    A front door serving C{root}, with the lean path on or off (its
    transport, like a reactor's, only notes a close: L{exchange} ends the
    connection once the piece is read).
    """
    reactor = MemoryReactorClock()
    pool = Pool([Backend(name="b", description="b", endpoint=RecordingEndpoint())])
    factory = GatewayFactory(
        site=make_site(str(root), listing=False, reactor=reactor, fast_path=fast_path),
        chooser=pool,
        clock=reactor,
        settings=SessionSettings(
            sniff_timeout=2, connect_timeout=5, idle_timeout=0, fin_timeout=60
        ),
    )
    front = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    front.makeConnection(transport)
    return front, transport, reactor


@implementer(ILogObserver)
class Events:
    """
    The access events of HTTP requests logged while it is open.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("kind") == "http":
            self.events.append(
                {
                    key: event.get(key)
                    for key in ("peer", "method", "path", "status", "bytes_in", "bytes_out")
                    + ("duration", "reason", "route", "backend")
                }
            )

    def __enter__(self) -> Events:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def exchange(root: Path, pieces: list[bytes], *, fast_path: bool) -> tuple[bytes, list[Any], int]:
    """
    Send C{pieces} one by one (running due calls between them, so files
    stream) and return what the client got (C{Date} values blanked), the
    access events and the bytes the connection counted out.
    """
    front, transport, reactor = make_front(root, fast_path=fast_path)
    with Events() as events:
        for piece in pieces:
            front.dataReceived(piece)
            for _ in range(50):
                reactor.advance(0)
            if transport.disconnecting:
                front.connectionLost(Failure(ConnectionDone()))
                break
    return _DATE.sub(b"\r\nDate: -\r\n", transport.value()), events.events, front.bytes_out


def _etag(root: Path, name: str, coding: bytes = b"") -> bytes:
    from gateway.http.conditional import entity_tag

    info = (root / name).stat()
    return entity_tag(info.st_size, info.st_mtime_ns, coding)


PATHS = [
    b"/a.txt",
    b"/index.html",
    b"/empty.txt",
    b"/app.js",
    b"/old.css",
    b"/sub/c.css",
    b"/sub",
    b"/sub/",
    b"/",
    b"/.env",
    b"/.well-known/x.txt",
    b"/big.bin",
    b"/data.tar.gz",
    b"/out.txt",
    b"/missing",
    b"/a.txt?x=1&y",
    b"/a.txt/",
    b"/a.txt/more",
    b"/sub//c.css",
    b"/sub/../a.txt",
    b"/./a.txt",
    b"/%61.txt",
    b"/name%20with+plus.txt",
    b"/a.txt#frag",
    b"http://example/a.txt",
    b"*",
]

HEADERS = [
    b"Host: example",
    b"host: example",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Keep-Alive, close",
    b"Connection: close,foo",
    b"Connection: foo close",
    b"Accept-Encoding: gzip",
    b"Accept-Encoding: br, gzip",
    b"Accept-Encoding: br;q=0, gzip;q=0.5",
    b"Accept-Encoding: *",
    b"If-None-Match: *",
    b'If-None-Match: "nope"',
    b'If-Match: "nope"',
    b"If-Match: *",
    b"If-Modified-Since: Sun, 06 Nov 2044 08:49:37 GMT",
    b"If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
    b"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT",
    b"If-Modified-Since: garbage",
    b"Range: bytes=0-3",
    b'If-Range: "x"',
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Transfer-Encoding: chunked",
    b"Expect: 100-continue",
    b"Upgrade: websocket",
    b"X-Thing: a\tb",
    b"X-Thing: \x01",
    b" folded",
    b"Bad Name: x",
    b"NoColon",
    b"User-Agent: t",
    b"User-Agent: t",
]


ANSWERED = [b"/a.txt", b"/index.html", b"/empty.txt", b"/app.js", b"/old.css", b"/sub/c.css"]
ANSWERED += [b"/", b"/sub/", b"/htm/"]
PLAIN_HEADERS = HEADERS[:19]


@st.composite
def requests(draw: st.DrawFn, root: Path) -> bytes:
    """
    One request: mostly ones the lean path answers (a plain C{GET} or
    C{HEAD} of a small file), the others anything of L{PATHS} and
    L{HEADERS}.
    """
    if draw(st.integers(0, 9)) < 7:
        method = draw(st.sampled_from([b"GET", b"HEAD"]))
        path = draw(st.sampled_from(ANSWERED))
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
        headers = draw(st.lists(st.sampled_from(PLAIN_HEADERS), max_size=3, unique=True))
    else:
        method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"OPTIONS"]))
        path = draw(st.sampled_from(PATHS))
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]))
        headers = draw(st.lists(st.sampled_from(HEADERS), max_size=4))
    if draw(st.integers(0, 3)) == 0:
        name, coding = draw(
            st.sampled_from([("a.txt", b""), ("app.js", b""), ("app.js.gz", b"gzip")])
        )
        tag = _etag(root, name, coding)
        headers.append(draw(st.sampled_from([b"If-None-Match: ", b"If-Match: "])) + tag)
    line = draw(st.sampled_from([b"%s %s %s"] * 8 + [b"%s  %s %s", b"%s %s %s "]))
    body = b"abc" if b"Content-Length: 3" in headers else b""
    return b"\r\n".join([line % (method, path, version), *headers, b"", b""]) + body


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_lean_path_is_twisted_web_but_faster(www: Path, data: st.DataObject) -> None:
    """
    Any pipeline of requests, cut anywhere, gives the same bytes (but the
    C{Date}), the same access events and the same count of bytes out with
    the lean path on and off.
    """
    pipeline = b"".join(data.draw(st.lists(requests(www), min_size=1, max_size=4)))
    pieces = data.draw(st.one_of(st.just([pipeline]), splits(pipeline)))
    lean = exchange(www, pieces, fast_path=True)
    twisted = exchange(www, pieces, fast_path=False)
    assert lean == twisted


def test_lean_path_answers_what_it_can(www: Path) -> None:
    """
    The differential test is not vacuous: plain requests for small files
    are answered without a twisted.web request, and the connection stays
    on the lean path.
    """
    front, transport, _reactor = make_front(www, fast_path=True)
    pipeline = (
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /sub/c.css HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
        b"GET /app.js HTTP/1.1\r\nAccept-Encoding: br\r\n\r\n"
    )
    front.dataReceived(pipeline)
    assert front._lean is not None
    assert front.http is not None and not front.http.requests
    got = transport.value()
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert got.endswith(b"Content-Length: 40\r\n\r\n" + b"BR" * 20)
    front.dataReceived(b"GET /missing HTTP/1.1\r\n\r\n")
    assert front._lean is None
    assert b"HTTP/1.1 404 Not Found" in transport.value()


def test_index_on_the_lean_path(www: Path) -> None:
    """
    A folder's C{index.html} is answered on the lean path (C{/}, C{/sub/});
    a folder whose index is C{index.htm} is left to twisted.web (an
    C{index.html} made later would be chosen before it, and the cached
    entry's C{stat} would not see it).
    """
    front, transport, reactor = make_front(www, fast_path=True)
    front.dataReceived(b"GET / HTTP/1.1\r\n\r\nGET /sub/ HTTP/1.1\r\n\r\n")
    assert front._lean is not None
    assert front.http is not None and not front.http.requests
    got = transport.value()
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert got.endswith(b"Content-Length: 11\r\n\r\n<p>sub</p>\n")
    front.dataReceived(b"GET /htm/ HTTP/1.1\r\n\r\n")
    assert front._lean is None
    for _ in range(5):
        reactor.advance(0)  # twisted.web sends the file's parts one a turn
    assert transport.value().endswith(b"<p>htm</p>\n")


def test_changed_file_is_read_again(www: Path, tmp_path: Path) -> None:
    """
    A cached file that changes is served as it is now (its validators
    too), and one that goes is twisted.web's 404.
    """
    root = tmp_path / "www"
    root.mkdir()
    page = root / "p.txt"
    page.write_bytes(b"one\n")
    front, transport, _reactor = make_front(root, fast_path=True)
    front.dataReceived(b"GET /p.txt HTTP/1.1\r\n\r\n")
    assert transport.value().endswith(b"\r\n\r\none\n")
    page.write_bytes(b"second\n")
    os.utime(page, (MTIME, MTIME))
    transport.clear()
    front.dataReceived(b"GET /p.txt HTTP/1.1\r\n\r\n")
    assert transport.value().endswith(b"\r\n\r\nsecond\n")
    assert _etag(root, "p.txt") in transport.value()
    page.unlink()
    transport.clear()
    front.dataReceived(b"GET /p.txt HTTP/1.1\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ")


def test_cache_is_bounded(www: Path) -> None:
    """
    A lean path's cache starts again past its bound.
    """
    from gateway.http import lean as module

    site = make_site(str(www), listing=False, reactor=MemoryReactorClock(), fast_path=True)
    static = site.lean_static()
    assert isinstance(static, LeanStatic)
    bound = module.CACHE_ENTRIES
    module.CACHE_ENTRIES = 2
    try:
        for path in (b"/a.txt", b"/index.html", b"/sub/c.css"):
            assert static._entry(path) is not None
        assert len(static._cache) == 1
    finally:
        module.CACHE_ENTRIES = bound


def test_responses_kept_by_head(www: Path) -> None:
    """
    The response to a head is kept for that head (not when precompressed
    siblings were looked for), answered again with the Date of the moment,
    and the kept heads are bounded.
    """
    from gateway.http import lean as module

    front, transport, _reactor = make_front(www, fast_path=True)
    head = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    front.dataReceived(head * 2)
    static = front._lean
    assert static is not None
    front.dataReceived(b"GET /app.js HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
    assert list(static._heads) == [head[:-4]]
    assert transport.value().count(b"\r\n\r\n" + b"alpha\n" * 10) == 2
    bound = module.HEAD_CACHE_ENTRIES
    module.HEAD_CACHE_ENTRIES = 2
    try:
        for name in (b"/index.html", b"/empty.txt", b"/old.css"):
            front.dataReceived(b"GET " + name + b" HTTP/1.1\r\n\r\n")
        assert len(static._heads) <= 2 and head[:-4] not in static._heads
    finally:
        module.HEAD_CACHE_ENTRIES = bound


def test_no_lean_path_with_routes_or_switched_off(www: Path) -> None:
    """
    The lean path serves a site of files only, and only when it is on.
    """
    reactor = MemoryReactorClock()
    assert make_site(str(www), listing=False, reactor=reactor).lean_static() is None
    assert make_site(None, listing=False, reactor=reactor, fast_path=True).lean_static() is None
    bridged = make_site(
        str(www),
        listing=False,
        reactor=reactor,
        fast_path=True,
        websocket_paths=frozenset([b"/ws"]),
    )
    assert bridged.lean_static() is None
    site = make_site(str(www), listing=False, reactor=reactor, fast_path=True)
    first = site.lean_static()
    assert first is not None and site.lean_static() is first
    site.reconfigure(header_timeout=5)
    assert site.lean_static() is not first
    site.reconfigure(header_timeout=5, fast_path=False)
    assert site.lean_static() is None


# The parser ------------------------------------------------------------------

_TCHAR = st.sampled_from(
    list(b"!#$&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")
)
NAMES = (
    st.lists(_TCHAR, min_size=1, max_size=12)
    .map(bytes)
    .filter(
        lambda name: (
            name.lower()
            not in (
                b"content-length",
                b"transfer-encoding",
                b"range",
                b"if-range",
                b"upgrade",
                b"expect",
            )
        )
    )
)
VALUES = st.binary(max_size=30).map(
    lambda value: bytes(b for b in value if b >= 0x20 and b != 0x7F)
)
SEGMENTS = st.lists(
    st.sampled_from(list(b"abcxyz0189-_~!$&'()*+,;=:@")), min_size=1, max_size=8
).map(bytes)


@st.composite
def lean_heads(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, bytes, dict[bytes, bytes]]:
    method = draw(st.sampled_from([b"GET", b"HEAD"]))
    path = b"/" + b"/".join(draw(st.lists(SEGMENTS, min_size=1, max_size=4)))
    query = draw(st.sampled_from([b"", b"?", b"?a=1&b=/x"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    fields = draw(st.dictionaries(NAMES.map(bytes.lower), VALUES.map(bytes.strip), max_size=8))
    return method, path + query, path, version, fields


@given(lean_heads())
def test_parser_reads_the_heads_it_answers(head: Any) -> None:
    """
    A well-formed plain head is read back exactly: method, target, path
    (without the query), version and each header's value, stripped.
    """
    method, target, path, version, fields = head
    lines = [b"%s %s %s" % (method, target, version)]
    lines += [name + b": " + value for name, value in fields.items()]
    request = parse_head(b"\r\n".join(lines))
    assert request is not None
    assert (request.method, request.target, request.path, request.version) == (
        method,
        target,
        path,
        version,
    )
    assert request.headers == fields


def _mutations() -> Iterator[tuple[bytes, bytes]]:
    yield b"GET /a HTTP/1.1", b"GET  /a HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET /a HTTP/1.1 "
    yield b"GET /a HTTP/1.1", b"POST /a HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"get /a HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET /a HTTP/2.0"
    yield b"GET /a HTTP/1.1", b"GET a HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET /%61 HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET /a#b HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET //a HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET /.a HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET /a\x00 HTTP/1.1"
    yield b"GET /a HTTP/1.1", b"GET /\xc3\xa9 HTTP/1.1"
    yield b"X: 1", b" X: 1"
    yield b"X: 1", b"X : 1"
    yield b"X: 1", b"X: 1\r\nx: 2"
    yield b"X: 1", b"X: 1\r\n\tmore"
    yield b"X: 1", b"X: 1\x00"
    yield b"X: 1", b"X: 1\r"
    yield b"X: 1", b"X: \n1"
    yield b"X: 1", b"X 1"
    yield b"X: 1", b"Range: bytes=0-1"
    yield b"X: 1", b"If-Range: x"
    yield b"X: 1", b"content-length: 0"
    yield b"X: 1", b"Transfer-Encoding: chunked"
    yield b"X: 1", b"Expect: 100-continue"
    yield b"X: 1", b"Upgrade: h2c"
    yield b"X: 1", b"X: " + b"v" * HEAD_LIMIT


@pytest.mark.parametrize(("good", "bad"), list(_mutations()))
def test_parser_leaves_anything_else(good: bytes, bad: bytes) -> None:
    """
    One change away from a plain head, the parser leaves it to twisted.web.
    """
    head = b"GET /a HTTP/1.1\r\nX: 1"
    assert parse_head(head) is not None
    assert parse_head(head.replace(good, bad)) is None


@given(st.binary(max_size=200))
def test_parser_takes_no_control_bytes(head: bytes) -> None:
    """
    Whatever it reads, a head it accepts has a plain request line and no
    control byte but HTAB in a header.
    """
    request = parse_head(head)
    if request is not None:
        assert request.method in (b"GET", b"HEAD")
        assert all(0x21 <= byte <= 0x7E for byte in request.target)
        for name, value in request.headers.items():
            assert name == name.lower() and name
            assert all(byte == 9 or byte >= 0x20 and byte != 0x7F for byte in value)


# The switch ------------------------------------------------------------------


def test_switch_from_the_command_line_and_the_file(tmp_path: Path) -> None:
    """
    The lean path is on by default; C{--no-http-fast-path} or the file's
    C{no-http-fast-path = true} turn it off, and the site made from the
    configuration follows.
    """
    from twisted.internet.testing import MemoryReactor

    from gateway.options import GatewayOptions

    def config(*argv: str) -> bool:
        options = GatewayOptions(reactor=MemoryReactor())
        options.parseOptions(["--backend", "tcp:127.0.0.1:7000", *argv])
        return options.config.http_fast_path

    assert config() is True
    assert config("--no-http-fast-path") is False
    file = tmp_path / "gw.toml"
    file.write_text("no-http-fast-path = true\n")
    assert config("--config", str(file)) is False
    file.write_text("no-http-fast-path = false\n")
    assert config("--config", str(file)) is True


def test_pipelined_responses_to_a_slow_reader_arrive_whole(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """
    Over a real connection the lean path writes straight to the socket when
    nothing is queued, and what the socket does not take goes through the
    transport's buffer: many pipelined responses of a file near the limit,
    to a client whose receive window is small and who reads only after
    sending them all, arrive whole, in order, each once.
    """
    import socket

    from tests.support import Backend, GatewayProcess, echo, pattern, recv_until_eof

    body = pattern(FILE_LIMIT - 1000, seed=5)
    (tmp_path / "big.bin").write_bytes(body)
    count = 200
    requests = b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n" * (count - 1)
    requests += b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with (
        Backend(echo) as backend,
        GatewayProcess(
            ["--backend", backend.endpoint, "--http-root", str(tmp_path)],
            tmp_path_factory.mktemp("gateway"),
        ) as gateway,
        socket.socket() as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", gateway.port))
        sock.sendall(requests)
        data = recv_until_eof(sock)
    seen = 0
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head[:80]
        assert b"Content-Length: %d\r\n" % len(body) in head + b"\r\n"
        assert data[: len(body)] == body
        data = data[len(body) :]
        seen += 1
    assert seen == count


@pytest.mark.parametrize("close", [True, False])
def test_response_goes_straight_to_a_tcp_socket(www: Path, close: bool) -> None:
    """
    On a TCP connection with nothing queued the response is in the client's
    socket before the reactor turns (no write is left to the reactor); a
    request that asks to close is then closed before the reactor turns too
    (no send timeout armed, no write registered: no bytes wait for the
    client), and a keep-alive one keeps the connection.
    """
    import socket

    from twisted.internet.tcp import Server

    first, _, clock = make_front(www, fast_path=True)
    front = first.factory.buildProtocol(PEER)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, address = listener.accept()
    with client:
        transport = Server(accepted, front, address, None, 1, clock)  # type: ignore[arg-type]
        front.makeConnection(transport)
        head = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n"
        front.dataReceived(head + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        client.settimeout(5)
        reply = client.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert not transport.dataBuffer and not transport._tempDataBuffer
        if close:
            # Closed before the reactor turned: nothing waited to be sent.
            assert not transport.connected and client.recv(100) == b""
            assert transport not in clock.getWriters()
        else:
            assert transport.connected and not transport.disconnecting
            channel = front.http
            assert channel is not None
            assert channel._closing_call is None
            transport.connectionLost(Failure(ConnectionDone()))
