"""
Tests for HTTP health checks: L{gateway.pool.httpcheck} (the request, the
status-line reader, by example and with hypothesis), the probe that sends it
on a L{MemoryReactorClock} (the rig of tests/test_health.py), and a checker
probing a real twisted.web app on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.health import HealthCheck, HealthChecker
from gateway.pool.httpcheck import (
    MAX_READ,
    GarbledStatusLineError,
    StatusLineError,
    StatusLineReader,
    StatusTooLateError,
    host_header,
    http_request,
    passes,
)
from tests.test_health import TIMEOUT, Rig, TLSWire, expect_rig, probe_of

UP, DOWN = BackendState.UP, BackendState.DOWN

REQUEST = (
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:7000\r\n"
    b"User-Agent: gateway-health\r\nConnection: close\r\n\r\n"
)
"""What a probe of the rig's backend C{b0} (tcp:127.0.0.1:7000) sends."""


# The reader


def verdict(chunks: list[bytes]) -> int | str | None:
    """
    Feed C{chunks} to a new reader until it decides.

    @return: the status, the error's class name and text, or L{None} for no
        verdict yet.
    """
    reader = StatusLineReader()
    for chunk in chunks:
        try:
            status = reader.feed(chunk)
        except StatusLineError as error:
            return f"{type(error).__name__}: {error}"
        if status is not None:
            return status
    return None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 204 \n", 204),
        (b"HTTP/1.1 302 Found\n", 302),
        (b"HTTP/1.1 200 OK", None),
        (b"HTT", None),
        (b"", None),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\n\nHTTP/1.1 404 NF\r\n", 404),
        (b"HTTP/1.1 100 Continue\r\n\r\n", None),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n", None),
        (b"HTTP/1.1 101 Switching Protocols\r\n", 101),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"S", "GarbledStatusLineError: no HTTP status line"),
        (b"http/1.1 200 OK\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"HTTP/1.1 20 OK\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"HTTP/1.1 2000 OK\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"HTTP/1.1  200 OK\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"HTTP/11 200 OK\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"HTTP/1.1 200 OK\r\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"\r\nHTTP/1.1 200 OK\r\n", "GarbledStatusLineError: no HTTP status line"),
        (b"HTTP/1.1 100 Continue\r\n\r\nnope\r\n", "GarbledStatusLineError: no HTTP status line"),
        (
            b"HTTP/1.1 200 " + b"x" * MAX_READ + b"\r\n",
            f"StatusTooLateError: no HTTP status line in the first {MAX_READ} bytes",
        ),
        (
            b"HTTP/1.1 103 Hints\r\n" + b"Link: </a>\r\n" * 400 + b"\r\nHTTP/1.1 200 OK\r\n",
            f"StatusTooLateError: no HTTP status line in the first {MAX_READ} bytes",
        ),
    ],
)
def test_reader_examples(answer: bytes, expected: int | str | None) -> None:
    """
    The reader finds the final status of well-formed answers (CRLF or LF line
    ends, with or without a reason phrase, after interim 1xx answers), waits
    for an incomplete line, and refuses a garbled one or one not within the
    first L{MAX_READ} bytes.
    """
    assert verdict([answer]) == expected


def test_reader_decides_garbage_at_once() -> None:
    """
    An answer that cannot begin a status line fails at its first byte, with
    no line end needed, and the reader never holds more than L{MAX_READ}
    bytes.
    """
    reader = StatusLineReader()
    with pytest.raises(GarbledStatusLineError):
        reader.feed(b"\x16\x03\x01")
    reader = StatusLineReader()
    assert reader.feed(b"HTTP/1.1 200 " + b"x" * (MAX_READ - 14)) is None
    with pytest.raises(StatusTooLateError):
        reader.feed(b"x" * 100_000)
    assert reader.consumed == MAX_READ


_STATUS_LINE = st.builds(
    lambda version, status, phrase, end: b"HTTP/" + version + b" " + status + phrase + end,
    st.sampled_from([b"1.1", b"1.0", b"2.0", b"11", b"1.x"]),
    st.one_of(
        st.sampled_from([b"100", b"101", b"103", b"200", b"204", b"302", b"503"]),
        st.from_regex(rb"\A[0-9]{2,4}\Z"),
    ),
    st.sampled_from([b"", b" ", b" OK", b" Service Unavailable", b"  x"]),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n"]),
)
"""Status lines, well-formed or nearly."""

_MESSAGE = st.builds(
    lambda line, fields, blank: line + b"".join(fields) + blank,
    _STATUS_LINE,
    st.lists(st.sampled_from([b"Link: </a>\r\n", b"X: y\n", b"Z: \r\r\n"]), max_size=2),
    st.sampled_from([b"\r\n", b"\n", b"", b"\n\r\n"]),
)
"""The head of an answer, interim or final."""

_ANSWERS = st.one_of(_MESSAGE, st.binary(max_size=16), st.sampled_from([b"\r", b"\n", b"HTTP/"]))
"""Pieces of an answer: heads, and bytes that may garble them."""


@given(
    parts=st.lists(_ANSWERS, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_reader_verdict_does_not_depend_on_the_reads(parts: list[bytes], cuts: list[int]) -> None:
    """
    However an answer is split between reads, the reader comes to the same
    verdict (a status, an error, or none yet) as when it arrives in one read.
    """
    answer = b"".join(parts)
    points = sorted({min(cut, len(answer)) for cut in cuts})
    chunks = [answer[a:b] for a, b in zip([0, *points], [*points, len(answer)], strict=True)]
    assert verdict(chunks) == verdict([answer])
    assert verdict([answer[i : i + 1] for i in range(len(answer))]) == verdict([answer])


@pytest.mark.parametrize(
    ("status", "expected", "result"),
    [
        (200, None, True),
        (204, None, True),
        (399, None, True),
        (199, None, False),
        (400, None, False),
        (503, None, False),
        (200, 200, True),
        (204, 200, False),
        (503, 503, True),
    ],
)
def test_passes(status: int, expected: int | None, result: bool) -> None:
    """
    Without an expected status any 2xx or 3xx passes; with one, only it.
    """
    assert passes(status, expected) is result


# The request


@pytest.mark.parametrize(
    ("description", "host"),
    [
        ("tcp:127.0.0.1:8001", b"127.0.0.1:8001"),
        ("tcp:host=api.example.com:port=80", b"api.example.com"),
        ("tcp:api.example.com:80:timeout=3", b"api.example.com"),
        ("tls:api.example.com:443", b"api.example.com"),
        ("tls:host=api.example.com:port=8443", b"api.example.com:8443"),
        ("ssl:10.0.0.1:443", b"10.0.0.1"),
        (r"tcp:\:\:1:8080", b"[::1]:8080"),
        ("unix:/run/api.sock", b"api-1"),
        ("tcp:", b"api-1"),
        ("no\\", b"api-1"),
    ],
)
def test_host_header(description: str, host: bytes) -> None:
    """
    The probe's C{Host} is the host (and a port that is not the scheme's
    default) of the backend's endpoint string, else the backend's name.
    """
    assert host_header(description, "api-1") == host


def test_host_header_falls_back_to_localhost() -> None:
    """
    A backend without a host in its endpoint and a name that cannot be a
    field value is probed with C{Host: localhost}.
    """
    assert host_header("unix:/run/api.sock", "api 1") == b"localhost"


def test_http_request() -> None:
    """
    The request is a GET of the path, with Host, User-Agent and a close.
    """
    assert http_request(b"/healthz?full=1", b"api:8001") == (
        b"GET /healthz?full=1 HTTP/1.1\r\nHost: api:8001\r\n"
        b"User-Agent: gateway-health\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"http_path": b"healthz"}, "not a path"),
        ({"http_path": b"/health z"}, "not a path"),
        ({"http_path": b"/h\r\nX: y"}, "not a path"),
        ({"http_path": "/é".encode()}, "not a path"),
        ({"http_path": b""}, "not a path"),
        ({"http_path": b"/", "http_status": 99}, "not an HTTP status"),
        ({"http_path": b"/", "http_status": 600}, "not an HTTP status"),
        ({"http_path": b"/", "http_host": b"a b"}, "not a Host"),
        ({"http_path": b"/", "http_host": b""}, "not a Host"),
        ({"http_path": b"/", "send": b"PING"}, "not both"),
        ({"http_path": b"/", "expect": b"PONG"}, "not both"),
        ({"http_status": 200}, "needs its path"),
        ({"http_host": b"api"}, "needs its path"),
    ],
)
def test_check_rejects_bad_http_settings(settings: dict[str, object], match: str) -> None:
    """
    An HTTP check needs a path that can be a request target, a status from
    100 to 599, a host that can be a field value, and no send/expect bytes.
    """
    with pytest.raises(ValueError, match=match):
        HealthCheck(**settings)  # type: ignore[arg-type]


# The probe, in memory


def test_http_probe_sends_request_and_passes_on_2xx() -> None:
    """
    An HTTP probe sends its request once connected and passes on a 2xx
    status line, even split across reads; it then closes cleanly without
    waiting for the rest of the answer.
    """
    rig, wire, probe = expect_rig(HealthCheck(http_path=b"/healthz"))
    assert wire.value() == REQUEST
    probe.dataReceived(b"HTTP/1.1 2")
    assert probe.passed is None
    probe.dataReceived(b"04 No Content\r")
    assert rig.state() is DOWN
    probe.dataReceived(b"\nContent-Length: 0\r\n\r\n")
    assert rig.state() is UP
    assert wire.closed_cleanly


@pytest.mark.parametrize(
    ("check", "answer", "reason"),
    [
        (
            HealthCheck(http_path=b"/healthz"),
            b"HTTP/1.1 503 Busy\r\n",
            "HTTP 503 (expected 2xx or 3xx)",
        ),
        (
            HealthCheck(http_path=b"/healthz", http_status=200),
            b"HTTP/1.1 204 \r\n",
            "HTTP 204 (expected 200)",
        ),
        (
            HealthCheck(http_path=b"/healthz"),
            b"SSH-2.0-OpenSSH\r\n",
            'no HTTP status line (received 17 bytes: "SSH-2.0-OpenSSH\\r\\n")',
        ),
    ],
)
def test_http_probe_fails_on_other_answers(check: HealthCheck, answer: bytes, reason: str) -> None:
    """
    Another status than the expected one, or an answer that is not HTTP,
    fails the probe with a reason the log shows; the probe closes cleanly.
    """
    rig, wire, probe = expect_rig(check)
    rig.pool.set_state(rig.backends[0], UP, "test")
    probe.dataReceived(answer)
    assert rig.state() is DOWN
    assert rig.backends[0].reason == f"health check failed 1 time: {reason}"
    assert wire.closed_cleanly


def test_http_probe_expected_status_passes() -> None:
    """
    With an expected status, that status passes even outside 2xx and 3xx.
    """
    rig, _, probe = expect_rig(HealthCheck(http_path=b"/", http_status=418))
    probe.dataReceived(b"HTTP/1.1 418 I'm a teapot\r\n")
    assert rig.state() is UP


def test_http_probe_close_before_status_fails() -> None:
    """
    A backend that closes before its status line is complete fails the probe.
    """
    rig, wire, probe = expect_rig(HealthCheck(http_path=b"/healthz"))
    rig.pool.set_state(rig.backends[0], UP, "test")
    probe.dataReceived(b"HTTP/1.1 200")
    wire.lost()
    assert rig.state() is DOWN
    assert rig.backends[0].reason == (
        "health check failed 1 time: connection closed before an HTTP status line arrived"
        ' (received 12 bytes: "HTTP/1.1 200")'
    )


def test_http_probe_silence_fails_at_timeout() -> None:
    """
    A backend that does not answer fails the probe at its deadline, which
    aborts the connection.
    """
    rig, wire, _ = expect_rig(HealthCheck(http_path=b"/healthz"))
    rig.pool.set_state(rig.backends[0], UP, "test")
    rig.reactor.advance(TIMEOUT)
    assert wire.aborted
    assert rig.backends[0].reason == (
        f"health check failed 1 time: an HTTP status line not received within {TIMEOUT:g} s"
        " (nothing received)"
    )


def test_http_probe_endless_answer_fails() -> None:
    """
    A backend that sends and sends without a status line fails the probe
    after L{MAX_READ} bytes, not at the deadline.
    """
    rig, _, probe = expect_rig(HealthCheck(http_path=b"/healthz"))
    rig.pool.set_state(rig.backends[0], UP, "test")
    for _ in range(MAX_READ // 100):
        probe.dataReceived(b"HTTP/1.1 " + b"9" * 91)
    assert rig.state() is UP
    probe.dataReceived(b"9" * 100)
    assert rig.state() is DOWN
    assert "no HTTP status line in the first 4096 bytes" in rig.backends[0].reason


def test_http_probe_preamble_and_host() -> None:
    """
    The request follows the PROXY preamble, with the check's own C{Host} when
    it names one.
    """
    check = HealthCheck(http_path=b"/up", http_host=b"api.example.com", preamble=b"PROXY x\r\n")
    _, wire, _ = expect_rig(check)
    assert wire.value() == b"PROXY x\r\n" + http_request(b"/up", b"api.example.com")


def test_http_probe_over_tls_waits_for_handshake() -> None:
    """
    Over TLS the request goes once the handshake is done.
    """
    rig = Rig(backends=1, checks={"b0": HealthCheck(http_path=b"/healthz")})
    rig.checker.startService()
    wire, protocol = rig.accept(wire=TLSWire())
    assert wire.value() == b""
    probe = probe_of(protocol)
    probe.handshakeCompleted()
    assert wire.value() == REQUEST
    probe.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert probe.passed is True


# A real app on loopback

reactor: IReactorTCP = _reactor


class Health(Resource):
    """
    A C{/healthz} that answers 200, or 503 once told to, and keeps what each
    request looked like.

    @ivar status: the status it answers.
    @ivar seen: (method, path, Host, User-Agent) of each request.
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.seen: list[tuple[bytes, bytes, bytes | None, bytes | None]] = []

    def render(self, request: Request) -> bytes:
        """
        Answer with the current status.
        """
        headers = request.requestHeaders
        self.seen.append(
            (
                request.method,
                request.uri,
                headers.getRawHeaders(b"host", [None])[0],
                headers.getRawHeaders(b"user-agent", [None])[0],
            )
        )
        request.setResponseCode(self.status)
        return b"ok\n" if self.status == 200 else b"busy\n"


@pytest_twisted.async_yield_fixture
async def app() -> AsyncIterator[tuple[Health, int]]:
    """
    The health resource served by twisted.web on an ephemeral loopback port.
    """
    health = Health()
    port: IListeningPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(health)
    )
    try:
        yield health, port.getHost().port  # type: ignore[attr-defined]
    finally:
        stopping = port.stopListening()
        if stopping is not None:
            await stopping


def state_change(pool: Pool, state: BackendState) -> Deferred[str]:
    """
    Fire with the reason once a backend of C{pool} changes to C{state}.
    """
    changed: Deferred[str] = Deferred()

    def observe(backend: Backend) -> None:
        if backend.state is state and not changed.called:
            changed.callback(backend.reason)

    pool.observers.append(observe)
    clock: IReactorTime = reactor  # type: ignore[assignment]
    return changed.addTimeout(30, clock)


@pytest_twisted.ensureDeferred
async def test_http_check_of_a_real_app(app: tuple[Health, int]) -> None:
    """
    A checker probing a twisted.web app brings its backend up while it
    answers 200 and takes it down once it answers 503, with the status in
    the reason; the app sees the probe's GET, Host and User-Agent.
    """
    health, port = app
    backend = Backend(
        name="api-1",
        description=f"tcp:127.0.0.1:{port}",
        endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    pool = Pool([backend])
    pool.set_state(backend, DOWN, "test")
    clock: IReactorTime = reactor  # type: ignore[assignment]
    checker = HealthChecker(
        pool,
        clock,
        interval=0.1,
        rise=1,
        fall=1,
        timeout=5,
        default_check=HealthCheck(http_path=b"/healthz", http_status=200),
    )
    up = state_change(pool, UP)
    checker.startService()
    try:
        assert await up == "health check passed 1 time"
        health.status = 503
        down = state_change(pool, DOWN)
        assert await down == "health check failed 1 time: HTTP 503 (expected 200)"
    finally:
        checker.stopService()
    assert health.seen[0] == (
        b"GET",
        b"/healthz",
        f"127.0.0.1:{port}".encode(),
        b"gateway-health",
    )
