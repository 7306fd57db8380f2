"""
End-to-end tests of the HTTP side of the front: a real C{twistd -n gateway}
subprocess serving C{--http-root} on loopback, talked to with C{http.client}
and raw sockets (so that nothing on the client side normalises a path or
frames a request for us).

Most tests share one module-scoped gateway over one folder tree (L{Tree});
the listing tests share a second one started with C{--http-listing}; the
large-file test starts its own, so that its memory figures are its own.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    Backend,
    GatewayProcess,
    connect,
    echo,
    pattern,
    recv_exactly,
    recv_until_eof,
    rss_kib,
)

# Every test with the lean static path on and off (conftest.http_path).
pytestmark = pytest.mark.usefixtures("http_path")

MIB = 1 << 20

TIMEOUT = 10.0
"""Seconds any one socket operation of these tests may block."""

SECRET = b"SECRET-must-never-be-served-7f3a"
"""The content of every file that must not be served (outside the root, or hidden)."""

INDEX = b"<!doctype html><title>front</title><h1>gateway front page</h1>\n"
SUB_INDEX = b"<!doctype html><title>sub</title><h1>sub index</h1>\n"
NOTES = b"plain text notes\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
MEDIUM_SIZE = 4 * MIB

FILES = {
    "index.html": INDEX,
    "style.css": b"body { color: #333 }\n",
    "app.js": b"console.log('front');\n",
    "logo.png": PNG,
    "data.json": b'{"ok": true}\n',
    "notes.txt": NOTES,
    "sub/index.html": SUB_INDEX,
    "plain/file.txt": b"a folder without an index\n",
    ".well-known/x.txt": b"well known\n",
    ".env": SECRET,
    ".git/config": SECRET,
    "sub/.env": SECRET,
    "plain/.env": SECRET,
    "unknown.dat": b"<script>alert('not html')</script>\n",
}
"""The files of the served tree, by path relative to the root."""

GET_INDEX = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Tree:
    """
    The folder tree the module's gateways serve.

    @ivar root: the C{--http-root}.
    @ivar secret: a file outside the root, next to it (C{root/../secret}).
    @ivar medium: the content of C{root/medium.bin} (L{MEDIUM_SIZE} bytes).
    """

    root: Path
    secret: Path
    medium: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One parsed HTTP response.

    @ivar status: the status code.
    @ivar headers: header values by lower-cased name.
    @ivar body: everything after the blank line.
    @ivar raw: the whole response as received.
    """

    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


def parse_reply(raw: bytes) -> Reply:
    """
    Parse one whole HTTP/1.x response (the body is whatever follows the headers).

    @raise AssertionError: C{raw} has no complete header block.
    """
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no complete response head in {raw[:200]!r}"
    lines = head.decode("iso-8859-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version.startswith("HTTP/1."), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status), headers, body, raw)


def read_to_eof(sock: socket.socket, within: float = 5.0) -> bytes:
    """
    Read until the gateway closes the connection, which must happen within
    C{within} seconds.
    """
    sock.settimeout(within)
    started = time.monotonic()
    try:
        data = recv_until_eof(sock)
    except TimeoutError:
        pytest.fail(f"the gateway did not close the connection within {within} s")
    assert time.monotonic() - started < within
    return data


def exchange(port: int, request: bytes) -> Reply:
    """
    Send C{request} on a new connection and read the response up to the
    gateway's close (so C{request} must end the connection: HTTP/1.0, or
    C{Connection: close}, or a bad request).
    """
    with connect(port, timeout=TIMEOUT) as sock:
        sock.sendall(request)
        return parse_reply(read_to_eof(sock, TIMEOUT))


def get(port: int, target: str | bytes) -> Reply:
    """
    C{GET target} with HTTP/1.0, on a new connection; C{target} is sent as is.
    """
    if isinstance(target, str):
        target = target.encode()
    return exchange(port, b"GET " + target + b" HTTP/1.0\r\n\r\n")


def assert_serving(gateway: GatewayProcess) -> None:
    """
    The gateway is still running and still serves its index page.
    """
    assert gateway.process is not None and gateway.process.poll() is None
    reply = get(gateway.port, "/")
    assert (reply.status, reply.body) == (200, INDEX)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """
    The served tree: L{FILES}, a 4 MiB file, and symbolic links; the secret
    file sits next to the root.
    """
    base = tmp_path_factory.mktemp("http-tree")
    secret = base / "secret"
    secret.write_bytes(SECRET)
    root = base / "www"
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    medium = pattern(MEDIUM_SIZE, seed=11)
    (root / "medium.bin").write_bytes(medium)
    # Links that leave the root (to a file, and to a folder holding the
    # secret), and one that stays inside it and must keep working.
    (root / "link-out").symlink_to(secret)
    (root / "dir-out").symlink_to(base, target_is_directory=True)
    (root / "link-in.txt").symlink_to(root / "notes.txt")
    (root / "plain" / "outside").symlink_to(secret)
    return Tree(root=root, secret=secret, medium=medium)


def _serve(
    tree: Tree, tmp_path_factory: pytest.TempPathFactory, *extra: str
) -> Iterator[GatewayProcess]:
    with (
        Backend(echo) as backend,
        GatewayProcess(
            ["--backend", backend.endpoint, "--http-root", str(tree.root), *extra],
            tmp_path_factory.mktemp("gateway"),
        ) as gateway,
    ):
        yield gateway
        # Whatever the tests sent, the gateway is still up at the end.
        assert gateway.process is not None and gateway.process.poll() is None, gateway.log()


@pytest.fixture(scope="module")
def gateway(
    tree: Tree, tmp_path_factory: pytest.TempPathFactory, http_path: str
) -> Iterator[GatewayProcess]:
    """
    A gateway serving L{tree} with the default options (no listing).
    """
    yield from _serve(tree, tmp_path_factory)


@pytest.fixture(scope="module")
def listing_gateway(
    tree: Tree, tmp_path_factory: pytest.TempPathFactory, http_path: str
) -> Iterator[GatewayProcess]:
    """
    A gateway serving L{tree} with C{--http-listing}.
    """
    yield from _serve(tree, tmp_path_factory, "--http-listing")


# Content types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/index.html", {"text/html"}),
        ("/style.css", {"text/css"}),
        # Twisted takes types from the host's /etc/mime.types (Debian's says
        # text/javascript, the RFC 9239 name) and falls back on Python 3.11's
        # own table (application/javascript).  Browsers run both, including as
        # module scripts (a "JavaScript MIME type" in the WHATWG sense).
        ("/app.js", {"text/javascript", "application/javascript"}),
        ("/logo.png", {"image/png"}),
        ("/data.json", {"application/json"}),
        ("/notes.txt", {"text/plain"}),
    ],
)
def test_content_type_by_extension(gateway: GatewayProcess, path: str, expected: set[str]) -> None:
    """
    Each static file is served with the Content-Type a browser expects for
    its extension, and with its exact content.
    """
    reply = get(gateway.port, path)
    assert reply.status == 200
    assert reply.headers["content-type"] in expected
    assert reply.body == FILES[path[1:]]


def test_unknown_extension_is_not_served_as_html(gateway: GatewayProcess) -> None:
    """
    A file whose extension has no known type is not labelled text/html (a
    browser would render any markup in it as a page of this origin).
    """
    reply = get(gateway.port, "/unknown.dat")
    assert reply.status == 200
    assert not reply.headers["content-type"].startswith("text/html")


# HEAD, 404, index files, folders ---------------------------------------------


@pytest.mark.parametrize("path", ["/", "/notes.txt", "/logo.png", "/medium.bin"])
def test_head_has_get_headers_and_no_body(gateway: GatewayProcess, path: str) -> None:
    """
    HEAD answers with the same status, Content-Type and Content-Length as GET
    (the length of the file), and sends no body at all: the connection ends
    right after the header block.
    """
    got = get(gateway.port, path)
    head = exchange(gateway.port, f"HEAD {path} HTTP/1.0\r\n\r\n".encode())
    assert head.status == got.status == 200
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]
    assert int(head.headers["content-length"]) == len(got.body)
    assert head.body == b""


def test_head_then_get_on_one_connection(gateway: GatewayProcess) -> None:
    """
    After a HEAD on a keep-alive connection, the next response on it is
    framed correctly (no stray body bytes from the HEAD).
    """
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=TIMEOUT)
    try:
        conn.request("HEAD", "/notes.txt")
        head = conn.getresponse()
        assert head.read() == b""
        assert head.getheader("Content-Length") == str(len(NOTES))
        conn.request("GET", "/notes.txt")
        assert conn.getresponse().read() == NOTES
    finally:
        conn.close()


def test_missing_file_is_404(gateway: GatewayProcess) -> None:
    """
    A path that names no file is a 404.
    """
    assert get(gateway.port, "/no-such-file.html").status == 404
    assert get(gateway.port, "/sub/no-such-file.html").status == 404
    # A file taken as a folder.
    assert get(gateway.port, "/notes.txt/").status == 404


def test_folder_without_index_is_404_not_listing(gateway: GatewayProcess) -> None:
    """
    By default a folder with no index.html is a 404 that names none of its
    files.
    """
    for path in ("/plain/", "/.well-known/"):
        reply = get(gateway.port, path)
        assert reply.status == 404
        assert b"file.txt" not in reply.body
        assert b"x.txt" not in reply.body
        assert b"Directory listing" not in reply.body


def test_listing_served_with_http_listing(listing_gateway: GatewayProcess) -> None:
    """
    With --http-listing, a folder with no index.html is answered with an
    HTML listing that names its files; a folder with an index still gets the
    index.
    """
    reply = get(listing_gateway.port, "/plain/")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert b"file.txt" in reply.body
    assert get(listing_gateway.port, "/sub/").body == SUB_INDEX


def test_listing_hides_what_is_not_served(listing_gateway: GatewayProcess) -> None:
    """
    The listing names only what would be served: no hidden files (.env) and
    no symbolic links that leave the root.
    """
    reply = get(listing_gateway.port, "/plain/")
    assert reply.status == 200
    assert b"file.txt" in reply.body
    for name in (b".env", b"outside"):
        assert name not in reply.body, name


def test_index_served_for_root_and_subfolder(gateway: GatewayProcess) -> None:
    """
    C{/} is answered with the root's index.html and C{/sub/} with
    C{sub/index.html}, as text/html.
    """
    root = get(gateway.port, "/")
    assert (root.status, root.body) == (200, INDEX)
    assert root.headers["content-type"] == "text/html"
    sub = get(gateway.port, "/sub/")
    assert (sub.status, sub.body) == (200, SUB_INDEX)


def test_folder_without_slash_redirects(gateway: GatewayProcess) -> None:
    """
    A folder requested without its trailing slash is redirected (302) to the
    same path with the slash, keeping the query; following it gets the index.
    """
    reply = get(gateway.port, "/sub")
    assert reply.status == 302
    assert reply.headers["location"] == "/sub/"
    query = get(gateway.port, "/sub?x=1")
    assert (query.status, query.headers["location"]) == (302, "/sub/?x=1")
    assert get(gateway.port, reply.headers["location"]).body == SUB_INDEX


# Keep-alive ------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(gateway: GatewayProcess) -> None:
    """
    Several HTTP/1.1 requests (200s, a 404, a HEAD, a redirect) on one
    C{HTTPConnection} are all answered in HTTP/1.1 on one socket: the client's
    local port never changes and no response closes the connection.
    """
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=TIMEOUT)
    ports = set()
    try:
        for method, path, status in [
            ("GET", "/", 200),
            ("GET", "/style.css", 200),
            ("GET", "/missing", 404),
            ("HEAD", "/logo.png", 200),
            ("GET", "/sub", 302),
            ("GET", "/notes.txt", 200),
        ]:
            conn.request(method, path)
            response = conn.getresponse()
            response.read()
            assert response.status == status, path
            assert response.version == 11
            assert not response.will_close, path
            assert conn.sock is not None
            ports.add(conn.sock.getsockname()[1])
    finally:
        conn.close()
    assert len(ports) == 1, ports


def test_pipelined_requests_answered_in_order(gateway: GatewayProcess) -> None:
    """
    Two requests sent in one write on one connection are both answered, in
    order; the second asks to close, and the gateway then closes.
    """
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        sock.sendall(
            b"GET /notes.txt HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /sub/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = read_to_eof(sock)
    first = parse_reply(data)
    assert first.status == 200
    assert first.body.startswith(NOTES)
    second = parse_reply(first.body[len(NOTES) :])
    assert (second.status, second.body) == (200, SUB_INDEX)


# Nothing outside the root ----------------------------------------------------

ESCAPES = [
    "/../secret",
    "/../../secret",
    "/sub/../../secret",
    "/%2e%2e/secret",
    "/%2E%2E/secret",
    "/.%2e/secret",
    "/%2e%2e%2fsecret",
    "/sub/..%2f..%2fsecret",
    "/sub/%2e%2e%2f%2e%2e%2fsecret",
    "/..%5csecret",
    "/sub/..%5c..%5csecret",
    "/%5c..%5csecret",
    "/..\\secret",
    "/sub/..\\..\\secret",
    "{secret}",  # the secret's absolute path, as the request path
    "/{secret}",  # ... after a second slash
    "/%2f{secret_tail}",  # ... with the slash encoded
    "{secret_tail}",  # no leading slash at all
    "http://x/../secret",  # absolute-form
    "/link-out",  # a symbolic link to the secret
    "/dir-out/secret",  # through a symbolic link to the root's parent
    "/.env",
    "/.git/config",
    "/sub/.env",
    "/plain/.env",
    "/plain/outside",
    "/%2eenv",
    "/%2egit/config",
    "/.well-known/../.env",
    "/.well-known/..%2f.env",
]
"""Request targets that try to reach a file that must not be served."""


@pytest.mark.parametrize("template", ESCAPES)
def test_no_path_escapes_the_root(
    gateway: GatewayProcess, listing_gateway: GatewayProcess, tree: Tree, template: str
) -> None:
    """
    No request target reaches a file outside the root or a hidden file: each
    is a 404 and the secret never appears in the response, with or without
    folder listing.
    """
    target = template.format(secret=tree.secret, secret_tail=str(tree.secret).lstrip("/"))
    for server in (gateway, listing_gateway):
        reply = get(server.port, target)
        assert SECRET not in reply.raw
        assert reply.status == 404, (target, reply.raw[:300])


def test_well_known_and_inner_links_are_served(gateway: GatewayProcess) -> None:
    """
    C{/.well-known/} is the one hidden folder that is served, and a symbolic
    link that stays inside the root is served like its target.
    """
    well_known = get(gateway.port, "/.well-known/x.txt")
    assert (well_known.status, well_known.body) == (200, b"well known\n")
    link = get(gateway.port, "/link-in.txt")
    assert (link.status, link.body) == (200, NOTES)


# Large files, ranges ---------------------------------------------------------


def test_large_file_to_slow_reader_keeps_memory_bounded(
    tmp_path: Path, echo_backend: Backend
) -> None:
    """
    A 64 MiB file is served byte-exact (same length, same SHA-256) to a
    client that reads nothing for a second and then reads slowly, while the
    gateway's resident memory grows by far less than the file (the file is
    streamed, not loaded).
    """
    size = 64 * MIB
    root = tmp_path / "www"
    root.mkdir()
    expected = hashlib.sha256()
    with open(root / "big.bin", "wb") as big:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            expected.update(block)
            big.write(block)

    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--http-root", str(root)], tmp_path
    ) as gateway:
        # Warm up the code path (imports, first response) before the baseline.
        warm = exchange(gateway.port, b"GET /big.bin HTTP/1.0\r\nRange: bytes=0-0\r\n\r\n")
        assert warm.status == 206
        baseline = rss_kib(gateway.pid)

        sock = socket.socket()
        # A small receive window, so the gateway meets back-pressure early.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", gateway.port))
        with sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            time.sleep(1.0)
            paused = rss_kib(gateway.pid)
            peak = paused

            head = b""
            while b"\r\n\r\n" not in head:
                head += recv_exactly(sock, 1)
            reply = parse_reply(head)
            assert reply.status == 200
            assert int(reply.headers["content-length"]) == size

            digest = hashlib.sha256()
            received = 0
            while received < size:
                chunk = sock.recv(256 * 1024)
                if not chunk:
                    break
                digest.update(chunk)
                received += len(chunk)
                if received < 8 * MIB:
                    time.sleep(0.005)  # slow at first
                if received % (4 * MIB) < len(chunk):
                    peak = max(peak, rss_kib(gateway.pid))
            assert read_to_eof(sock) == b""

    assert received == size
    assert digest.digest() == expected.digest()
    growth_mib = (peak - baseline) / 1024
    print(
        f"large file: gateway RSS {baseline} KiB before, {paused} KiB after 1 s paused, "
        f"peak {peak} KiB while reading: growth {growth_mib:.2f} MiB for a "
        f"{size // MIB} MiB file"
    )
    assert growth_mib < 16, f"gateway RSS grew by {growth_mib:.1f} MiB"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=100-199", 100, 199),
        ("bytes=-5", MEDIUM_SIZE - 5, MEDIUM_SIZE - 1),
        (f"bytes={MEDIUM_SIZE - 3}-", MEDIUM_SIZE - 3, MEDIUM_SIZE - 1),
    ],
)
def test_range_request_gets_206_and_the_bytes(
    gateway: GatewayProcess, tree: Tree, header: str, start: int, end: int
) -> None:
    """
    A single-range request is answered 206 with exactly the asked bytes and a
    Content-Range naming them and the file size.
    """
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/medium.bin", headers={"Range": header})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes {start}-{end}/{MEDIUM_SIZE}"
    assert response.getheader("Content-Length") == str(end - start + 1)
    assert body == tree.medium[start : end + 1]


def test_unsatisfiable_range_is_416(gateway: GatewayProcess) -> None:
    """
    A range that starts past the end of the file is a 416 naming the size.
    """
    reply = exchange(gateway.port, b"GET /notes.txt HTTP/1.0\r\nRange: bytes=1000-2000\r\n\r\n")
    assert reply.status == 416
    assert reply.headers["content-range"] == f"bytes */{len(NOTES)}"


# Half-close, split requests --------------------------------------------------


def test_half_close_after_request_gets_whole_response(gateway: GatewayProcess) -> None:
    """
    A client that sends a request and then shuts down its sending side (as
    C{nc -N} does) receives the whole response, and the gateway then closes
    the connection within a few seconds.
    """
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        sock.sendall(GET_INDEX)
        sock.shutdown(socket.SHUT_WR)
        reply = parse_reply(read_to_eof(sock, within=5.0))
    assert reply.status == 200
    assert int(reply.headers["content-length"]) == len(INDEX)
    assert reply.body == INDEX


def test_half_close_after_large_request_gets_whole_file(
    gateway: GatewayProcess, tree: Tree
) -> None:
    """
    A 4 MiB file asked for by a client that half-closes right after the
    request arrives whole and byte-exact, then the gateway closes.
    """
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /medium.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = parse_reply(read_to_eof(sock, within=10.0))
    assert reply.status == 200
    assert len(reply.body) == MEDIUM_SIZE
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(tree.medium).digest()


def test_half_close_mid_request_closes(gateway: GatewayProcess) -> None:
    """
    A client that half-closes in the middle of its request headers gets no
    response, and the connection is closed rather than left open.
    """
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock, within=5.0) == b""
    assert_serving(gateway)


def test_request_one_byte_per_write(gateway: GatewayProcess) -> None:
    """
    An HTTP request sent one byte per write, with pauses (well within the
    sniff timeout), is classified as HTTP and answered.
    """
    request = b"GET /notes.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        for byte in request:
            sock.send(bytes([byte]))
            time.sleep(0.005)
        reply = parse_reply(read_to_eof(sock))
    assert (reply.status, reply.body) == (200, NOTES)


@pytest.mark.parametrize("split", [1, 3, 4, 9])
def test_request_split_after_method(gateway: GatewayProcess, split: int) -> None:
    """
    An HTTP request cut in two writes, e.g. right after the method (C{GET},
    then C{ /index.html ...}), is answered as if sent at once.
    """
    request = b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        sock.sendall(request[:split])
        time.sleep(0.3)
        sock.sendall(request[split:])
        reply = parse_reply(read_to_eof(sock))
    assert (reply.status, reply.body) == (200, INDEX)


# Bad requests, other methods -------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /\x00 junk\r\n\r\n",
        b"GET /\r\n\r\n",  # no version
        b"GET / junk\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",  # raw non-ASCII target
    ],
)
def test_bad_request_line_is_4xx_and_gateway_stays_up(
    gateway: GatewayProcess, request_bytes: bytes
) -> None:
    """
    A malformed request line after a valid method gets a 4xx and the
    connection is closed; the gateway keeps serving new connections.
    """
    reply = exchange(gateway.port, request_bytes)
    assert 400 <= reply.status < 500, reply.raw[:200]
    assert_serving(gateway)


@pytest.mark.parametrize("path", ["/%00", "/sub/%00", "/notes.txt%00.html"])
def test_encoded_nul_in_path_is_404(gateway: GatewayProcess, path: str) -> None:
    """
    A path with an encoded NUL byte names no file: a 404, not a server error.
    """
    reply = get(gateway.port, path)
    assert reply.status == 404, reply.raw[:200]


def test_post_to_static_file_is_405(gateway: GatewayProcess) -> None:
    """
    POST to a static file (or to C{/}, its index) is a clean 405 with an
    Allow header naming GET and HEAD, not a server error; the gateway stays up.
    """
    for path in ("/", "/notes.txt"):
        reply = exchange(
            gateway.port,
            f"POST {path} HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello".encode(),
        )
        assert reply.status == 405, reply.raw[:200]
        assert set(reply.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert_serving(gateway)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_other_methods_on_static_file_are_4xx(gateway: GatewayProcess, method: str) -> None:
    """
    The other methods the front classifies as HTTP get a client error (405)
    on a static file, not a 5xx.
    """
    reply = exchange(
        gateway.port, f"{method} /notes.txt HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert 400 <= reply.status < 500, reply.raw[:200]
