"""
Unit tests of L{gateway.http.channel.GatewayHTTPChannel}: the request header timeout
(slowloris), the answers to oversized request lines and headers, and the
refusals they count.

Each channel comes from L{make_site} and C{site.buildProtocol}, on a
L{StringTransport}, with a L{MemoryReactorClock} as the site's reactor, so the
header timer and Twisted's own idle timer run only when a test advances the
clock.  A plain L{StringTransport} behaves like a real one here: closing only
marks it C{disconnecting} (the reactor stops reading and reports the end
later), so Twisted's line parser stops at a refusal.  (With
L{StringTransportWithDisconnection}, C{connectionLost} would run in the middle
of C{dataReceived} and the parser would go on with the next line of a closed
connection, which no real transport does.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.front.limits import Refusal
from gateway.http.channel import GatewayHTTPChannel
from gateway.http.site import HTTPSite, make_site
from gateway.ops.registry import Counters, RefusalLog

PEER = IPv4Address("TCP", "198.51.100.7", 52000)
HEADER_TIMEOUT = 5.0
LINE_LIMIT = HTTPChannel.MAX_LENGTH
"""The longest request or header line Twisted takes (16 KiB)."""

REQUEST = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


@dataclass
class Client:
    """
    One HTTP connection to a fresh site, and what it shares with the site.
    """

    channel: GatewayHTTPChannel
    transport: StringTransport
    clock: MemoryReactorClock
    counters: Counters

    def send(self, data: bytes) -> None:
        """
        Deliver C{data} as one read.
        """
        self.channel.dataReceived(data)

    @property
    def open(self) -> bool:
        """
        Whether the channel has not closed the connection.
        """
        return not self.transport.disconnecting

    def lose(self) -> None:
        """
        Report the connection's end to the channel, as the reactor does.
        """
        self.channel.connectionLost(Failure(ConnectionDone()))

    def take(self) -> bytes:
        """
        Everything written to the client since the last call.
        """
        value: bytes = self.transport.value()
        self.transport.clear()
        return value

    @property
    def refused(self) -> dict[Refusal, int]:
        """
        The refusals counted so far, by reason (only those counted).
        """
        return {reason: n for reason, n in self.counters.refused.items() if n}


def connect(http_root: str | None = None) -> Client:
    """
    A channel of a site built as the gateway builds it, with a header
    timeout of L{HEADER_TIMEOUT}, connected from L{PEER}.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    site = make_site(
        http_root,
        listing=False,
        reactor=clock,
        header_timeout=HEADER_TIMEOUT,
        refusals=RefusalLog(clock, counters),
    )
    channel = site.buildProtocol(PEER)
    assert isinstance(channel, GatewayHTTPChannel)
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    return Client(channel, transport, clock, counters)


def status_line(response: bytes) -> bytes:
    """
    The first line of a response.
    """
    return response.split(b"\r\n", 1)[0]


def test_request_in_time_is_served(tmp_path: Path) -> None:
    """
    Requests whose headers arrive in time get the normal response from the
    site's root, and the connection stays open for the next one.
    """
    (tmp_path / "index.html").write_bytes(b"<h1>hi</h1>")
    client = connect(str(tmp_path))
    # HEAD and a 404 are answered at once; a GET of a file would be streamed
    # by Twisted's global cooperator, which these reactor-free tests do not run.
    client.send(b"HEAD / HTTP/1.1\r\n")
    client.clock.advance(HEADER_TIMEOUT - 0.5)
    client.send(b"Host: example\r\n\r\n")
    response = client.take()
    assert status_line(response) == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 11\r\n" in response
    client.send(b"GET /missing.html HTTP/1.1\r\nHost: example\r\n\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 404 Not Found"
    assert client.open
    assert client.refused == {}


def test_slowloris_gets_408() -> None:
    """
    Headers that trickle in one line every 2 s (each read resets Twisted's
    idle timer) are cut off 5 s after the request's first byte: the client
    gets C{408 Request Timeout} and is closed, and a timeout is counted.
    """
    client = connect()
    client.clock.advance(30)  # connected long before: only the first byte counts
    client.send(b"GET / HTTP/1.1\r\n")
    client.clock.advance(2)
    client.send(b"Host: example\r\n")
    client.clock.advance(2)
    client.send(b"X-One: 1\r\n")
    client.clock.advance(HEADER_TIMEOUT - 4 - 0.001)
    assert client.take() == b""
    assert client.open
    client.clock.advance(0.001)
    response = client.take()
    assert status_line(response) == b"HTTP/1.1 408 Request Timeout"
    assert b"\r\nConnection: close\r\n" in response
    head, body = response.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head
    assert not client.open
    assert client.refused == {Refusal.TIMEOUT: 1}


def test_408_cleans_up_timers() -> None:
    """
    After a 408 and the connection's end, the channel leaves no timer behind
    (nor does the refusal log, which tallied nothing), and nothing more is
    counted.
    """
    client = connect()
    client.send(b"GET / HTTP/1.1\r\n")
    client.clock.advance(HEADER_TIMEOUT)
    assert not client.open
    client.lose()
    assert client.clock.getDelayedCalls() == []
    client.clock.advance(600)
    assert client.refused == {Refusal.TIMEOUT: 1}


def test_keep_alive_request_gets_fresh_timeout() -> None:
    """
    On a keep-alive connection, the idle time between requests does not
    count against the next request's headers: each request has its own
    header timeout from its own first byte.
    """
    client = connect()
    client.send(REQUEST)
    assert status_line(client.take()) == b"HTTP/1.1 404 Not Found"

    client.clock.advance(30)  # idle, under Twisted's 60 s idle timeout
    client.send(b"GET /second HTTP/1.1\r\n")
    client.clock.advance(HEADER_TIMEOUT - 1)
    client.send(b"Host: example\r\n\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 404 Not Found"

    client.clock.advance(10)
    client.send(b"GET /third HTTP/1.1\r\n")
    client.clock.advance(HEADER_TIMEOUT - 0.001)
    assert client.take() == b""
    client.clock.advance(0.001)
    assert status_line(client.take()) == b"HTTP/1.1 408 Request Timeout"
    assert client.refused == {Refusal.TIMEOUT: 1}


def test_complete_request_leaves_no_header_timer() -> None:
    """
    Once a request's headers are complete its header timer is gone: the only
    timer left is Twisted's idle timeout, and nothing is ever written or
    counted afterwards when the clock moves past the header timeout.
    """
    client = connect()
    assert len(client.clock.getDelayedCalls()) == 1  # the idle timeout
    client.send(b"GET / HTTP/1.1\r\n")
    assert len(client.clock.getDelayedCalls()) == 2
    client.send(b"Host: example\r\n\r\n")
    assert len(client.clock.getDelayedCalls()) == 1
    client.take()
    client.clock.advance(HEADER_TIMEOUT * 2)
    assert client.take() == b""
    assert client.open
    assert client.refused == {}


def test_slow_request_body_gets_408() -> None:
    """
    The request timeout covers the body as well as the line and headers
    (C{slowhttptest -B}): a body still incomplete C{header_timeout} seconds
    after the request's first byte gets C{408} and the connection is closed,
    a counted C{timeout} refusal whose detail names the body.
    """
    client = connect()
    client.send(b"POST / HTTP/1.1\r\nHost: example\r\nContent-Length: 4\r\n\r\nab")
    client.clock.advance(HEADER_TIMEOUT - 0.001)
    client.send(b"c")
    assert client.take() == b""
    client.clock.advance(0.001)
    assert status_line(client.take()) == b"HTTP/1.1 408 Request Timeout"
    assert not client.open
    assert client.refused == {Refusal.TIMEOUT: 1}


def test_request_with_body_in_time_is_answered() -> None:
    """
    A body that arrives within the request timeout is answered, and no
    request timer is left once it is complete.
    """
    client = connect()
    client.send(b"POST / HTTP/1.1\r\nHost: example\r\nContent-Length: 4\r\n\r\nab")
    client.clock.advance(HEADER_TIMEOUT / 2)
    client.send(b"cd")
    assert status_line(client.take()) == b"HTTP/1.1 404 Not Found"
    client.clock.advance(HEADER_TIMEOUT)
    assert client.take() == b""
    assert client.refused == {}


def test_connection_lost_cancels_header_timer() -> None:
    """
    A client that leaves in the middle of its headers leaves no header timer
    behind and is not counted.
    """
    client = connect()
    client.send(b"GET / HTTP/1.1\r\n")
    client.lose()
    assert client.clock.getDelayedCalls() == []
    assert client.refused == {}


def test_long_request_line_gets_414() -> None:
    """
    A request line over 16 KiB gets C{414 URI Too Long} and is closed, as a
    counted bad request, whether its end arrived or not.
    """
    client = connect()
    client.send(b"GET /" + b"a" * LINE_LIMIT + b" HTTP/1.1\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 414 URI Too Long"
    assert not client.open
    assert client.refused == {Refusal.BAD_REQUEST: 1}

    client = connect()
    for _ in range(5):
        client.send(b"GET /" + b"a" * (LINE_LIMIT // 4))
    assert status_line(client.take()) == b"HTTP/1.1 414 URI Too Long"
    assert not client.open
    assert client.refused == {Refusal.BAD_REQUEST: 1}


def test_request_line_at_limit_is_not_414() -> None:
    """
    A request line of exactly 16 KiB is not too long for the line limit (so
    no 414); it does use up all of Twisted's 16 KiB for the whole head, so
    the first header line makes it Twisted's 400.
    """
    client = connect()
    line = b"GET /" + b"a" * (LINE_LIMIT - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == LINE_LIMIT
    client.send(line + b"\r\n")
    assert client.take() == b""
    assert client.open
    client.send(b"Host: example\r\n\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 400 Bad Request"
    assert client.refused == {Refusal.BAD_REQUEST: 1}


def test_long_header_line_gets_431() -> None:
    """
    A header line over 16 KiB gets C{431 Request Header Fields Too Large} and
    is closed, as a counted bad request.
    """
    client = connect()
    client.send(b"GET / HTTP/1.1\r\nHost: example\r\n")
    client.send(b"X-Big: " + b"a" * LINE_LIMIT + b"\r\n\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert not client.open
    assert client.refused == {Refusal.BAD_REQUEST: 1}


def test_long_line_in_second_request() -> None:
    """
    On a keep-alive connection, the next request's over-long first line is a
    414 (not taken for a header line of the request before).
    """
    client = connect()
    client.send(REQUEST)
    client.take()
    client.send(b"GET /" + b"a" * LINE_LIMIT + b" HTTP/1.1\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 414 URI Too Long"


def test_too_many_headers_gets_400() -> None:
    """
    More headers than Twisted allows get Twisted's C{400 Bad Request} and
    the connection is closed, counted as a bad request.
    """
    client = connect()
    headers = b"".join(b"X-%d: v\r\n" % n for n in range(HTTPChannel.maxHeaders + 1))
    client.send(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 400 Bad Request"
    assert not client.open
    assert client.refused == {Refusal.BAD_REQUEST: 1}


def test_too_large_headers_get_400() -> None:
    """
    Headers larger than Twisted allows in all, each line under the line
    limit, get C{400 Bad Request}, counted as a bad request.
    """
    client = connect()
    line = b"X-Big: " + b"a" * 6000 + b"\r\n"
    client.send(b"GET / HTTP/1.1\r\n" + line * 3 + b"\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 400 Bad Request"
    assert not client.open
    assert client.refused == {Refusal.BAD_REQUEST: 1}


def test_malformed_request_line_gets_400() -> None:
    """
    A request line that does not parse gets C{400 Bad Request}, counted as a
    bad request, and its header timer is cancelled.
    """
    client = connect()
    client.send(b"GARBAGE\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 400 Bad Request"
    assert not client.open
    assert client.refused == {Refusal.BAD_REQUEST: 1}
    client.clock.advance(HEADER_TIMEOUT)
    assert client.take() == b""
    client.lose()
    assert client.clock.getDelayedCalls() == []  # the refusal log tallied nothing


def test_channel_without_refusal_log() -> None:
    """
    A site built without a refusal log still times out and answers; nothing
    is counted anywhere.
    """
    clock = MemoryReactorClock()
    site = make_site(None, listing=False, reactor=clock, header_timeout=HEADER_TIMEOUT)
    channel = site.buildProtocol(PEER)
    assert channel is not None
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    clock.advance(HEADER_TIMEOUT)
    assert status_line(transport.value()) == b"HTTP/1.1 408 Request Timeout"
    assert transport.disconnecting


@settings(max_examples=100, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(REQUEST) - 1), unique=True),
    gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=len(REQUEST)),
)
def test_header_timeout_from_first_byte_whatever_the_split(
    cuts: list[int], gaps: list[float]
) -> None:
    """
    However a request is split and however its pieces are spaced in time,
    it is served when its last piece arrives within the header timeout of
    its first byte, and answered with a 408 exactly at the timeout
    otherwise; exactly one of the two happens.
    """
    points = [0, *sorted(cuts), len(REQUEST)]
    chunks = [REQUEST[a:b] for a, b in zip(points[:-1], points[1:], strict=True)]
    client = connect()
    start = client.clock.seconds()
    timed_out = False
    for index, chunk in enumerate(chunks):
        if index:
            delay = gaps[index]
            deadline = start + HEADER_TIMEOUT
            if client.clock.seconds() + delay >= deadline:
                client.clock.advance(deadline - client.clock.seconds())
                timed_out = True
                break
            client.clock.advance(delay)
        client.send(chunk)
    response = client.take()
    if timed_out:
        assert status_line(response) == b"HTTP/1.1 408 Request Timeout"
        assert client.refused == {Refusal.TIMEOUT: 1}
        assert not client.open
    else:
        assert status_line(response) == b"HTTP/1.1 404 Not Found"
        assert client.refused == {}
        client.clock.advance(HEADER_TIMEOUT)
        assert client.take() == b""


# Found while writing these tests


def test_pipelined_request_gets_header_timeout() -> None:
    """
    A second request whose headers start in the same read as the end of the
    first request is timed from then: left incomplete, it gets a 408 once
    the header timeout has passed, long before Twisted's idle timeout.
    """
    client = connect()
    client.send(REQUEST + b"GET /second HTTP/1.1\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 404 Not Found"
    client.clock.advance(HEADER_TIMEOUT)
    assert status_line(client.take()) == b"HTTP/1.1 408 Request Timeout"
    assert client.refused == {Refusal.TIMEOUT: 1}


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 100000000000\r\n",
        b"Content-Length: 65537\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ],
    ids=["huge", "just-over", "chunked"],
)
def test_large_or_chunked_body_refused_with_413(headers: bytes) -> None:
    """
    A request announcing a body over 64 KiB, or a chunked one, gets 413 at
    once, before any body byte is read, and is closed and counted; the body
    that follows is ignored (nothing is spooled).
    """
    client = connect()
    client.channel.dataReceived(b"POST /upload HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_line(client.take()) == b"HTTP/1.1 413 Content Too Large"
    assert not client.open
    assert client.refused == {Refusal.BAD_REQUEST: 1}
    client.channel.dataReceived(b"x" * 100_000)
    assert client.take() == b""


def test_small_body_still_answered() -> None:
    """
    A small request body (up to 64 KiB) is read and the request answered
    as usual (here 404: no HTTP root).
    """
    client = connect()
    client.channel.dataReceived(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n" + b"y" * 65536
    )
    assert status_line(client.take()) == b"HTTP/1.1 404 Not Found"
    assert client.refused == {}


def _access(events: EventLoggingObserver) -> list[dict[str, object]]:
    return [e for e in events if e.get("log_namespace") == "gateway.access"]


def test_answered_requests_are_access_logged(
    tmp_path: Path, log_events: EventLoggingObserver
) -> None:
    """
    Each answered request is one access event: the client, method, path,
    status, body bytes each way, the time from its request line to its
    last byte, and the reason "complete".
    """
    (tmp_path / "index.html").write_bytes(b"<h1>hi</h1>")
    client = connect(str(tmp_path))
    client.send(b"HEAD / HTTP/1.1\r\n")
    client.clock.advance(0.25)
    client.send(b"Host: example\r\n\r\n")
    client.send(b"GET /missing.html?x=1 HTTP/1.1\r\nHost: example\r\n\r\n")
    first, second = _access(log_events)
    fields = ("kind", "peer", "backend", "method", "path", "status", "reason", "duration")
    assert {k: first[k] for k in fields} == {
        "kind": "http",
        "peer": "198.51.100.7:52000",
        "backend": None,
        "method": "HEAD",
        "path": "/",
        "status": 200,
        "reason": "complete",
        "duration": 0.25,
    }
    assert (second["method"], second["path"], second["status"]) == (
        "GET",
        "/missing.html?x=1",
        404,
    )
    # The 404 page is sent chunked: bytes_out counts the body, not the framing.
    chunked = client.take().split(b"\r\n\r\n", 2)[-1]
    body = b""
    while chunked:
        size, _, chunked = chunked.partition(b"\r\n")
        body, chunked = body + chunked[: int(size, 16)], chunked[int(size, 16) + 2 :]
    assert second["bytes_out"] == len(body) > 0
    assert formatEvent(first) == (
        'http request from 198.51.100.7:52000: "HEAD /" 200 (complete): '
        "0 bytes in, 0 bytes out, 0.250 s"
    )


def test_request_left_by_its_client_is_access_logged(log_events: EventLoggingObserver) -> None:
    """
    A request whose client leaves before the response is finished is logged
    once, with the reason "client-left" and the bytes sent so far.
    """
    clock = MemoryReactorClock()

    class Slow(Resource):
        isLeaf = True  # noqa: N815 - twisted.web's name

        def render_GET(self, request: Request) -> object:  # noqa: N802
            request.write(b"partial")
            return NOT_DONE_YET

    site = HTTPSite(Slow(), reactor=clock)
    channel = site.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(REQUEST)
    assert _access(log_events) == []
    clock.advance(2.0)
    channel.connectionLost(Failure(ConnectionDone()))
    [event] = _access(log_events)
    assert (event["reason"], event["status"], event["bytes_out"], event["duration"]) == (
        "client-left",
        200,
        len(b"partial"),
        2.0,
    )


def test_refused_requests_are_not_access_logged(log_events: EventLoggingObserver) -> None:
    """
    A request refused before it was served (413 for a body, 408 for slow
    headers) is a counted refusal, not an access event, even once its
    connection is gone.
    """
    client = connect()
    client.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n")
    client.lose()
    slow = connect()
    slow.send(b"GET / HTTP/1.1\r\n")
    slow.clock.advance(HEADER_TIMEOUT + 1)
    slow.lose()
    assert _access(log_events) == []
    assert client.refused == {Refusal.BAD_REQUEST: 1}


def test_request_body_counted_in(log_events: EventLoggingObserver) -> None:
    """
    A request with a (small) body counts its body in bytes_in, whatever the
    answer (here a 405: the site takes no POST).
    """
    client = connect()
    client.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world")
    [event] = _access(log_events)
    assert (event["method"], event["bytes_in"]) == ("POST", 11)
