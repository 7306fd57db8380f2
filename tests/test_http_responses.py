"""
Unit tests of how L{gateway.http.channel}'s channel sends responses: static files
through L{gateway.http.ranges} (driven by the channel's own pump on the site's
clock), responses that fail or stall (the connection is aborted, never
left waiting), HTTP/1.0 keep-alive, and C{OPTIONS *}.

As in C{test_http_channel}, each channel is on a L{StringTransport} with a
L{MemoryReactorClock} as the site's reactor; the pump's steps run when a
test advances the clock by 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.interfaces import IPullProducer
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from gateway.http.channel import GatewayHTTPChannel
from gateway.http.ranges import CHUNK
from gateway.http.site import HTTPSite, make_site
from gateway.ops.registry import Counters, RefusalLog
from tests.test_http_channel import PEER, Client, status_line

SEND_TIMEOUT = 20.0


def _attach(site: HTTPSite, clock: MemoryReactorClock, counters: Counters) -> Client:
    site.send_timeout = SEND_TIMEOUT
    channel = site.buildProtocol(PEER)
    assert isinstance(channel, GatewayHTTPChannel)
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    return Client(channel, transport, clock, counters)


def serve_files(root: Path) -> Client:
    """
    A channel of the static site of C{root}.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    site = make_site(str(root), listing=False, reactor=clock, refusals=RefusalLog(clock, counters))
    return _attach(site, clock, counters)


def serve(resource: Resource) -> Client:
    """
    A channel of a site whose root is C{resource}.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    return _attach(HTTPSite(resource, reactor=clock), clock, counters)


def pump(client: Client, steps: int = 10_000) -> None:
    """
    Run the steps due now until nothing is due (at most C{steps}).
    """
    for _ in range(steps):
        due = [c for c in client.clock.getDelayedCalls() if c.getTime() <= client.clock.seconds()]
        if not due:
            return
        client.clock.advance(0)
    raise AssertionError("still producing")


def split(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """
    A response's status line, headers (lower-case names) and body.
    """
    head, _, body = response.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    headers = {}
    for header in lines:
        name, _, value = header.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return line, headers, body


@implementer(IPullProducer)
class Failing:
    """
    A pull producer that writes once, then raises.
    """

    def __init__(self, request: object) -> None:
        self.request = request
        self.steps = 0
        self.stopped = False

    def resumeProducing(self) -> None:  # noqa: N802
        """
        Write a chunk the first time, raise the next.
        """
        self.steps += 1
        if self.steps > 1:
            raise ValueError("read length must be non-negative")
        self.request.write(b"x" * 10)  # type: ignore[attr-defined]

    def stopProducing(self) -> None:  # noqa: N802
        """
        Note the stop.
        """
        self.stopped = True


class FailingResource(Resource):
    """
    Promises 100 bytes, then its producer fails after 10.
    """

    isLeaf = True  # noqa: N815
    producer: Failing | None = None

    def render_GET(self, request: object) -> object:  # noqa: N802
        """
        Start a failing response.
        """
        request.setHeader(b"content-length", b"100")  # type: ignore[attr-defined]
        self.producer = Failing(request)
        request.registerProducer(self.producer, False)  # type: ignore[attr-defined]
        return NOT_DONE_YET


class StuckResource(Resource):
    """
    Writes its headers and a few bytes, then nothing ever again.
    """

    isLeaf = True  # noqa: N815

    def render_GET(self, request: object) -> object:  # noqa: N802
        """
        Start a response that never finishes.
        """
        request.setHeader(b"content-length", b"100")  # type: ignore[attr-defined]
        request.write(b"y" * 10)  # type: ignore[attr-defined]
        return NOT_DONE_YET


def test_failing_producer_aborts_connection(log_events: EventLoggingObserver) -> None:
    """
    A response producer that raises mid-response (as Twisted's multi-range
    producer did) aborts the connection at once, stops the producer and
    logs the failure once; before, the response was left unfinished and
    the connection open for good.
    """
    resource = FailingResource()
    client = serve(resource)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    pump(client)
    assert client.transport.disconnected  # aborted, not a graceful close
    assert resource.producer is not None and resource.producer.steps == 2
    failures = [e for e in log_events if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert "failed mid-response" in failures[0]["log_format"]
    client.lose()
    assert resource.producer.stopped
    assert client.clock.getDelayedCalls() == []


def test_stalled_response_is_aborted_after_send_timeout(
    log_events: EventLoggingObserver,
) -> None:
    """
    A response that writes nothing more for the send timeout (a stuck
    producer, or a client that stopped reading) is aborted between S and
    1.25 S after its last write, and logged; not before.
    """
    client = serve(StuckResource())
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 200 OK"
    client.clock.pump([SEND_TIMEOUT / 8] * 7)
    assert client.open
    client.clock.pump([SEND_TIMEOUT / 8] * 4)
    assert client.transport.disconnected
    assert any("made no progress" in e.get("log_format", "") for e in log_events)


def test_progressing_response_is_not_aborted() -> None:
    """
    A slow response that keeps writing is never cut by the send timeout,
    however long it takes.
    """
    request_box: list[object] = []

    class Slow(Resource):
        isLeaf = True  # noqa: N815

        def render_GET(self, request: object) -> object:  # noqa: N802
            request_box.append(request)
            return NOT_DONE_YET

    client = serve(Slow())
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    request = request_box[0]
    for _ in range(20):
        client.clock.advance(SEND_TIMEOUT / 2)
        request.write(b"z")  # type: ignore[attr-defined]
    assert client.open
    request.finish()  # type: ignore[attr-defined]
    assert [c for c in client.clock.getDelayedCalls() if c.getTime() > 1000] == []


def test_closing_connection_that_is_not_read_is_aborted() -> None:
    """
    A connection the gateway closes after its last response (HTTP/1.0, a
    client that half-closed, a refusal) is aborted if its client does not
    take the last bytes within the send timeout.
    """
    client = serve(Resource())
    client.send(b"GET /nothing HTTP/1.0\r\n\r\n")
    assert status_line(client.take()) == b"HTTP/1.0 404 Not Found"
    assert client.transport.disconnecting and not client.transport.disconnected
    client.clock.advance(SEND_TIMEOUT)
    assert client.transport.disconnected


def test_file_served_through_the_pump(tmp_path: Path) -> None:
    """
    A file is sent in steps of at most 64 KiB on the site's clock (not
    Twisted's global cooperator), whole and in order, and the keep-alive
    connection then waits for the next request.
    """
    data = bytes(range(256)) * 1024
    (tmp_path / "f.bin").write_bytes(data)
    client = serve_files(tmp_path)
    client.send(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    pump(client)
    line, headers, body = split(client.take())
    assert (line, headers[b"content-length"], body) == (
        b"HTTP/1.1 200 OK",
        str(len(data)).encode(),
        data,
    )
    assert client.open


@pytest.mark.parametrize("header", [b"bytes=", b"bytes=5-1", b"bytes=x"])
def test_invalid_range_gets_whole_file(tmp_path: Path, header: bytes) -> None:
    """
    An invalid Range (an empty C{bytes=} was a 500 with a critical
    traceback) is ignored: 200 with the whole file.
    """
    (tmp_path / "f.txt").write_bytes(b"0123456789")
    client = serve_files(tmp_path)
    client.send(b"GET /f.txt HTTP/1.1\r\nHost: x\r\nRange: " + header + b"\r\n\r\n")
    pump(client)
    line, _, body = split(client.take())
    assert (line, body) == (b"HTTP/1.1 200 OK", b"0123456789")


def test_multipart_ranges_served_in_bounded_steps(tmp_path: Path) -> None:
    """
    The finding's two ranges (C{bytes=0-65328,100-199}: merged, as they
    overlap) and two disjoint ranges past 64 KiB of part data: each write
    is at most 64 KiB of file plus framing, and the body has the announced
    length.
    """
    data = bytes(range(256)) * 1024
    (tmp_path / "f.bin").write_bytes(data)
    client = serve_files(tmp_path)
    client.send(b"GET /f.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-65328,100-199\r\n\r\n")
    pump(client)
    line, headers, body = split(client.take())
    assert (line, headers[b"content-range"], body) == (
        b"HTTP/1.1 206 Partial Content",
        b"bytes 0-65328/%d" % len(data),
        data[:65329],
    )
    writes: list[bytes] = []
    client.transport.write = writes.append  # type: ignore[method-assign]
    client.transport.writeSequence = lambda seq: writes.append(b"".join(seq))  # type: ignore[method-assign]
    client.send(b"GET /f.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-70000,-100\r\n\r\n")
    pump(client)
    assert max(len(w) for w in writes[1:]) <= CHUNK + 200
    _, headers, body = split(b"".join(writes))
    assert headers[b"content-type"].startswith(b"multipart/byteranges")
    assert int(headers[b"content-length"]) == len(body)
    assert data[:70001] in body and data[-100:] in body


def test_file_cut_while_sent_aborts_connection(tmp_path: Path) -> None:
    """
    A file that shrinks while it is being sent cannot fill the promised
    length: the connection is aborted instead of a short response finished
    as if whole (which would leave a keep-alive client waiting).
    """
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * (4 * CHUNK))
    client = serve_files(tmp_path)
    client.send(b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    # Opened and its length promised, no byte of it read yet: cut it now.
    path.write_bytes(b"a" * 10)
    pump(client)
    assert client.transport.disconnected
    assert b"200 OK" not in client.take()


@pytest.mark.parametrize(
    ("request_bytes", "keep"),
    [
        (b"GET /f.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET /f.txt HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
        (b"HEAD /f.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET /f.txt HTTP/1.0\r\n\r\n", False),
        (b"GET /f.txt HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", False),
    ],
)
def test_http10_keep_alive(tmp_path: Path, request_bytes: bytes, keep: bool) -> None:
    """
    An HTTP/1.0 request with C{Connection: keep-alive} (C{ab -k}) gets a
    response with C{Connection: keep-alive} and a Content-Length, and the
    connection stays open for the next request; without it, the connection
    closes after the response as before.
    """
    (tmp_path / "f.txt").write_bytes(b"0123456789")
    client = serve_files(tmp_path)
    client.send(request_bytes)
    pump(client)
    _, headers, _ = split(client.take())
    assert b"content-length" in headers
    assert (headers.get(b"connection", b"").lower() == b"keep-alive") is keep
    assert client.open is keep
    if keep:
        client.send(b"GET /f.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        pump(client)
        assert split(client.take())[2] == b"0123456789"


def test_http10_keep_alive_without_length_closes() -> None:
    """
    An HTTP/1.0 response without a length can only end with the connection:
    it does not say keep-alive, and the connection closes after it.
    """
    box: list[object] = []

    class Unsized(Resource):
        isLeaf = True  # noqa: N815

        def render_GET(self, request: object) -> object:  # noqa: N802
            box.append(request)
            request.write(b"part")  # type: ignore[attr-defined]
            return NOT_DONE_YET

    client = serve(Unsized())
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    box[0].finish()  # type: ignore[attr-defined]
    _, headers, body = split(client.take())
    assert b"connection" not in headers and body == b"part"
    assert not client.open


@pytest.mark.parametrize(
    ("request_bytes", "status", "allow"),
    [
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"405", b"GET, HEAD"),
        (b"OPTIONS /f.txt HTTP/1.1\r\nHost: x\r\n\r\n", b"405", b"GET, HEAD"),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", b"400", None),
    ],
)
def test_options_is_405_everywhere(
    tmp_path: Path, request_bytes: bytes, status: bytes, allow: bytes | None
) -> None:
    """
    C{OPTIONS *} gets the same answer as C{OPTIONS} on a file: 405 with
    C{Allow: GET, HEAD} (it was 200); other methods cannot name C{*}: 400.
    """
    (tmp_path / "f.txt").write_bytes(b"0123456789")
    client = serve_files(tmp_path)
    client.send(request_bytes)
    line, headers, _ = split(client.take())
    assert line.split()[1] == status
    assert headers.get(b"allow") == allow
    assert client.open


def test_log_level_of_stall_is_not_critical(log_events: EventLoggingObserver) -> None:
    """
    A stalled response is an ordinary event (info), not a failure with a
    traceback.
    """
    client = serve(StuckResource())
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client.clock.advance(SEND_TIMEOUT * 2)
    client.clock.advance(SEND_TIMEOUT * 2)
    stalls = [e for e in log_events if "made no progress" in e.get("log_format", "")]
    assert [e["log_level"] for e in stalls] == [LogLevel.info]
