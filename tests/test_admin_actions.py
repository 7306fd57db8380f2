"""
Unit tests of the admin site as HTTP: the backend actions and their token,
C{status.json?limit=}, and the dashboard's files.

Each request goes through the real admin C{Site} on an in-memory connection
(C{site.buildProtocol} on a L{StringTransport}, the reactor a
L{MemoryReactorClock}), so what is checked is the bytes an HTTP client gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure

from gateway.http.channel import HTTP_IDLE_TIMEOUT, GatewayHTTPChannel
from gateway.ops.admin import make_admin_site
from gateway.ops.registry import Counters, SessionRegistry
from gateway.ops.status import AdminState, status
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.pools import Pools
from gateway.process.wire import StatusReply
from tests.test_admin import FakeSession

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
TOKEN = "s3cret-admin-token-0123"


@dataclass
class Response:
    """
    What a client got: the status code, the headers (lower-case names) and the body.
    """

    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        """
        The body as JSON.
        """
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


def make_state(token: str | None = None) -> AdminState:
    """
    Two backends named like endpoint strings (one with a slash), three live
    sessions.
    """
    pool = Pool(
        [
            Backend(name="a", description="tcp:10.0.0.1:7000", endpoint=None),  # type: ignore[arg-type]
            Backend(name="unix:/run/game.sock", description="unix:/run/game.sock", endpoint=None),  # type: ignore[arg-type]
        ]
    )
    registry = SessionRegistry()
    for number in range(3):
        registry.add(FakeSession("game", f"192.0.2.{number}:5000", 100.0, "a", 10, 20))
    clock = MemoryReactorClock()
    clock.advance(1000.0)
    return AdminState(Pools(pool), registry, Counters(), clock=clock, token=token)


def state_of(state: AdminState, name: str) -> BackendState:
    """
    The state of backend C{name} now.
    """
    backend = state.pool.get(name)
    assert backend is not None
    return backend.state


def request(
    state: AdminState, method: str, path: str, headers: dict[str, str] | None = None
) -> Response:
    """
    Send one HTTP/1.1 request to the admin site and parse the response.
    """
    reactor = MemoryReactorClock()
    site = make_admin_site(state, reactor)
    channel = site.buildProtocol(PEER)
    assert channel is not None
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:9090", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
    # Run what was scheduled (a streamed status.json), bounded.
    for _ in range(1000):
        if not transport.disconnecting:
            reactor.advance(0)
    assert transport.disconnecting, "the response did not finish"
    raw: bytes = transport.value()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return Response(int(status.split()[1]), parsed, body)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2 :]
    return out


def test_drain_and_enable_without_token() -> None:
    """
    Without an admin token, POST /backends/NAME/drain puts the backend in
    draining (so it gets no new sessions) and /enable brings it back up;
    each answer is the backend's status entry, and the reason names the
    operator's address.
    """
    state = make_state()
    backend = state.pool.get("a")
    assert backend is not None
    drained = request(state, "POST", "/backends/a/drain")
    assert drained.code == 200
    assert drained.headers["content-type"] == "application/json"
    entry = drained.json()["backend"]
    assert isinstance(entry, dict)
    assert entry["state"] == "draining"
    assert entry["reason"] == "drained by an operator from 127.0.0.1"
    assert backend.state is BackendState.DRAINING
    assert state.pool.game.choose() is state.pool.get("unix:/run/game.sock")
    enabled = request(state, "POST", "/backends/a/enable")
    assert enabled.code == 200
    assert state_of(state, "a") is BackendState.UP
    assert state.pool.transitions == 2


def test_backend_name_with_a_slash_is_percent_encoded() -> None:
    """
    A backend named by a UNIX endpoint string is reached with its slashes
    percent-encoded in the path.
    """
    state = make_state()
    response = request(state, "POST", "/backends/unix%3A%2Frun%2Fgame.sock/drain")
    assert response.code == 200
    backend = state.pool.get("unix:/run/game.sock")
    assert backend is not None and backend.state is BackendState.DRAINING


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no admin token given"),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, "wrong admin token"),
        ({"Authorization": "Bearer " + TOKEN[:-1] + "X"}, "wrong admin token"),
        ({"Authorization": "Basic " + TOKEN}, "wrong admin token"),
        ({"Authorization": "Bearer"}, "wrong admin token"),
    ],
)
def test_action_needs_the_token(
    headers: dict[str, str], reason: str, log_events: EventLoggingObserver
) -> None:
    """
    With an admin token, an action without it or with another one (even of
    the same length, or under another scheme) is a 401 with a Bearer
    challenge, changes nothing, and is logged with the reason and address.
    """
    state = make_state(TOKEN)
    response = request(state, "POST", "/backends/a/drain", headers)
    assert response.code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="gateway admin"'
    assert response.json() == {"error": reason}
    backend = state.pool.get("a")
    assert backend is not None and backend.state is BackendState.UP
    assert [formatEvent(e) for e in log_events] == [
        f"admin action drain on a refused for 127.0.0.1: {reason}"
    ]


def test_action_with_the_token() -> None:
    """
    The right token (the scheme in any case) lets the action through.
    """
    state = make_state(TOKEN)
    response = request(state, "POST", "/backends/a/drain", {"Authorization": "bearer " + TOKEN})
    assert response.code == 200
    backend = state.pool.get("a")
    assert backend is not None and backend.state is BackendState.DRAINING


def test_cross_origin_action_is_refused() -> None:
    """
    A request that a page of another origin made through a browser (its
    Origin names another host) is a 403, even with no token configured;
    the dashboard's own requests (same origin) pass.
    """
    state = make_state()
    response = request(state, "POST", "/backends/a/drain", {"Origin": "http://evil.example"})
    assert response.code == 403
    backend = state.pool.get("a")
    assert backend is not None and backend.state is BackendState.UP
    same = request(state, "POST", "/backends/a/drain", {"Origin": "http://127.0.0.1:9090"})
    assert same.code == 200


def test_enable_a_down_backend_is_a_conflict() -> None:
    """
    Health checks own the down state: enabling a down backend is a 409 that
    says so, and the backend stays down.
    """
    state = make_state()
    backend = state.pool.get("a")
    assert backend is not None
    state.pool.set_state(backend, BackendState.DOWN, "health check failed 3 times")
    response = request(state, "POST", "/backends/a/enable")
    assert response.code == 409
    assert "health checks" in str(response.json()["error"])
    assert backend.state is BackendState.DOWN
    # Draining it is allowed (keep it out even once its checks pass).
    assert request(state, "POST", "/backends/a/drain").code == 200
    assert state_of(state, "a") is BackendState.DRAINING


def test_enable_an_up_backend_changes_nothing() -> None:
    """
    Enabling a backend that is up answers its state and counts no transition.
    """
    state = make_state()
    response = request(state, "POST", "/backends/a/enable")
    assert response.code == 200
    assert state.pool.transitions == 0


@pytest.mark.parametrize(
    "path",
    ["/backends/nobody/drain", "/backends/a/explode", "/backends/a", "/backends/a/drain/more"],
)
def test_unknown_backend_or_action_is_404(path: str) -> None:
    """
    An unknown backend, an unknown action or a malformed path is a 404 with
    a JSON reason, and nothing changes.
    """
    state = make_state()
    response = request(state, "POST", path)
    assert response.code == 404
    assert "error" in response.json()
    assert all(b.state is BackendState.UP for b in state.pool.backends)


@pytest.mark.parametrize(("method", "code"), [("GET", 405), ("HEAD", 405), ("PUT", 501)])
def test_actions_only_take_post(method: str, code: int) -> None:
    """
    GET or HEAD on an action is a 405 that allows POST only, a method the
    admin site does not know at all is Twisted's 501, and nothing changes.
    """
    state = make_state()
    response = request(state, method, "/backends/a/drain")
    assert response.code == code
    if code == 405:
        assert response.headers["allow"] == "POST"
    backend = state.pool.get("a")
    assert backend is not None and backend.state is BackendState.UP


def test_status_limit_lists_the_oldest_sessions() -> None:
    """
    status.json?limit=N lists the N oldest sessions while the counters and
    byte totals still count all of them; the document says when it was made.
    """
    state = make_state()
    document = request(state, "GET", "/status.json?limit=2").json()
    sessions = document["sessions"]
    assert isinstance(sessions, list)
    assert [s["id"] for s in sessions] == [1, 2]
    counters = document["counters"]
    assert isinstance(counters, dict)
    assert counters["active_sessions"] == {"game": 3, "websocket": 0, "http": 0}
    assert counters["bytes_in"] == 30
    assert document["now"] == 1000.0
    assert len(request(state, "GET", "/status.json").json()["sessions"]) == 3  # type: ignore[arg-type]
    assert request(state, "GET", "/status.json?limit=0").json()["sessions"] == []


@pytest.mark.parametrize("limit", ["-1", "abc", "1.5", ""])
def test_status_bad_limit_is_400(limit: str) -> None:
    """
    A limit that is not a whole number >= 0 is a 400 that says so.
    """
    response = request(make_state(), "GET", f"/status.json?limit={limit}")
    assert response.code == 400
    assert "limit" in str(response.json()["error"])


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html; charset=utf-8", b'id="backends"'),
        ("/dashboard.js", "text/javascript; charset=utf-8", b"status.json"),
        ("/dashboard.css", "text/css; charset=utf-8", b"state-draining"),
    ],
)
def test_dashboard_files(path: str, content_type: str, marker: bytes) -> None:
    """
    The dashboard's page, script and style sheet are served with their
    types, and every admin response forbids framing and loading anything
    from elsewhere (the page works on an isolated network and cannot be
    used for clickjacking).
    """
    response = request(make_state(), "GET", path)
    assert response.code == 200
    assert response.headers["content-type"] == content_type
    assert marker in response.body
    assert response.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_dashboard_loads_nothing_from_elsewhere() -> None:
    """
    No file of the dashboard names another host (no CDN, no fonts).
    """
    for path in ("/", "/dashboard.js", "/dashboard.css"):
        body = request(make_state(), "GET", path).body
        assert b"http://" not in body and b"https://" not in body and b"//cdn" not in body


def _many(count: int) -> AdminState:
    state = make_state()
    for number in range(count - 3):
        state.registry.add(FakeSession("http", f"198.51.100.{number % 250}:80", 5.0, None, 1, 1))
    return state


@pytest.mark.parametrize(("count", "limit"), [(1001, None), (1001, 600), (600, 251)])
def test_long_status_is_streamed_whole(count: int, limit: int | None) -> None:
    """
    A session list longer than one step is written in steps (the reactor
    runs between them), and the result is the same document as at once:
    every session, in order, with the same counters.
    """
    state = _many(count)
    query = "" if limit is None else f"?limit={limit}"
    streamed = request(state, "GET", "/status.json" + query)
    assert streamed.code == 200
    assert streamed.headers["content-type"] == "application/json"
    expected = status(state, limit)
    assert streamed.json() == expected
    sessions = streamed.json()["sessions"]
    assert isinstance(sessions, list)
    assert len(sessions) == (count if limit is None else limit)


def test_streaming_runs_in_steps_and_stops_when_the_client_leaves() -> None:
    """
    Listing 2,000 sessions takes several reactor turns, not one; a client
    that leaves in the middle stops the work (nothing more is written).
    """
    state = _many(2000)
    reactor = MemoryReactorClock()
    channel = make_admin_site(state, reactor).buildProtocol(PEER)
    assert channel is not None
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    written = len(transport.value())
    assert b'"sessions":[' in transport.value()
    assert not transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))
    for _ in range(20):
        reactor.advance(0)
    assert len(transport.value()) == written


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:9090", True),
        ("127.0.0.1", True),
        ("[::1]:9090", True),
        ("LOCALHOST:9090", True),
        ("10.1.2.3:9090", True),
        ("gw1.internal:9090", True),
        ("evil.example:9090", False),
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
    ],
)
def test_only_allowed_hosts_are_answered(host: str, allowed: bool) -> None:
    """
    A request naming a host that is not an IP address, localhost or an
    --admin-host name is answered 421 and reaches nothing: a page whose name
    an attacker re-pointed at the admin address (DNS rebinding) can neither
    read the status nor drain a backend, even with Origin and Host agreeing.
    """
    state = make_state()
    state.hosts = ("gw1.internal",)
    headers = {"Host": host, "Origin": f"http://{host}"}
    read = request(state, "GET", "/status.json", {"Host": host})
    drain = request(state, "POST", "/backends/a/drain", headers)
    if allowed:
        assert (read.code, drain.code) == (200, 200)
    else:
        assert (read.code, drain.code) == (421, 421)
        assert "--admin-host" in str(read.json()["error"])
        assert state_of(state, "a") is BackendState.UP


@pytest.mark.parametrize(
    ("origin", "code"),
    [("null", 403), ("http://127.0.0.1:8080", 403), ("https://127.0.0.1:9090", 200)],
)
def test_origins_are_compared_by_host_and_port(origin: str, code: int) -> None:
    """
    An Origin of "null" (a sandboxed page, a file) or the same host on
    another port is another origin: 403, nothing changes.  The scheme is not
    compared: a page at the admin endpoint's own host and port can only be
    the endpoint's own (it serves one scheme on its port).
    """
    state = make_state()
    response = request(state, "POST", "/backends/a/drain", {"Origin": origin})
    assert response.code == code
    expected = BackendState.DRAINING if code == 200 else BackendState.UP
    assert state_of(state, "a") is expected


def test_refused_actions_are_logged_with_sampling(log_events: EventLoggingObserver) -> None:
    """
    A burst of refused actions (a token being guessed: 46 wrong tokens) is
    logged 5 at a time, and the rest of the 10 s window is one summary line
    at the window's end, with no further request (the summary used to wait
    for the next refusal); a few refusals schedule no timer at all.
    """
    state = make_state(TOKEN)
    clock = state.clock
    assert isinstance(clock, MemoryReactorClock)
    site = make_admin_site(state, MemoryReactorClock())

    def guess() -> None:
        channel = site.buildProtocol(PEER)
        assert channel is not None
        channel.makeConnection(StringTransport(peerAddress=PEER))
        channel.dataReceived(
            b"POST /backends/a/drain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer wrong-token-wrong-token\r\n\r\n"
        )

    def texts() -> list[str]:
        return [formatEvent(e) for e in log_events]

    for _ in range(5):
        guess()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    for _ in range(46):
        guess()
    assert len([t for t in texts() if "refused for 127.0.0.1: wrong admin token" in t]) == 10
    clock.advance(9.9)
    assert not [t for t in texts() if "more admin actions refused" in t]
    clock.advance(0.1)
    assert "41 more admin actions refused in the last 10 s without logging each" in texts()
    assert clock.getDelayedCalls() == []
    clock.advance(25)
    assert len([t for t in texts() if "more admin actions refused" in t]) == 1


def test_empty_token_is_refused() -> None:
    """
    An empty admin token (possible from Python, not from the options) is an
    error, not a token that an empty Authorization header would match.
    """
    with pytest.raises(ValueError, match="must not be empty"):
        AdminState(make_state().pool, SessionRegistry(), Counters(), token="")


class _TickingClock(MemoryReactorClock):
    """
    A clock whose time moves by 1 ms each time it is read, like a real one
    during work, and that counts the calls scheduled on it.
    """

    scheduled = 0

    def seconds(self) -> float:
        self.rightNow += 0.001
        return self.rightNow

    def callLater(  # noqa: N802 - Twisted's name
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> IDelayedCall:
        self.scheduled += 1
        return super().callLater(delay, callable, *args, **kw)


def test_streaming_gives_the_reactor_back_between_steps() -> None:
    """
    With time passing as the sessions are serialized, 2,000 sessions are
    written in many slices (each ends after about 2 ms and schedules the
    next through the reactor), not all in one.
    """
    state = _many(2000)
    reactor = _TickingClock()
    channel = make_admin_site(state, reactor).buildProtocol(PEER)
    assert channel is not None
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    before = reactor.scheduled
    channel.dataReceived(
        b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    for _ in range(100):
        if transport.disconnecting:
            break
        reactor.advance(0)
    assert transport.disconnecting
    slices = reactor.scheduled - before
    assert slices >= 5, f"written in {slices} slices"


@pytest.mark.parametrize(
    ("host", "origin", "code"),
    [
        ("localhost:9090", "http://LOCALHOST:9090", 200),
        ("127.0.0.1:9090", "HTTP://127.0.0.1:9090", 200),
        ("LocalHost:9090", "http://localhost:9090", 200),
        ("localhost", "http://localhost:80", 200),
        ("[::1]:9090", "http://[::1]:9090", 200),
        ("localhost:9090", "http://localhost:09091", 403),
        ("localhost:9090", "http://localhost", 403),
        ("localhost:9090", "http://user@localhost:9090", 403),
        ("localhost:9090", "ftp://localhost:9090", 403),
    ],
)
def test_origin_compared_case_insensitively(host: str, origin: str, code: int) -> None:
    """
    The Origin check compares scheme and host without regard to case (RFC
    6454 serialises them lower-case: C{http://LOCALHOST:9090} is the
    endpoint's own origin, it was refused) and the port exactly, a missing
    port being the scheme's default.
    """
    state = make_state()
    response = request(state, "POST", "/backends/a/drain", {"Host": host, "Origin": origin})
    assert response.code == code
    expected = BackendState.DRAINING if code == 200 else BackendState.UP
    assert state_of(state, "a") is expected


def test_admin_connections_have_the_request_timeout() -> None:
    """
    The admin endpoint's connections are the front's hardened channels: a
    request whose headers are not complete within the request timeout gets
    C{408} and is closed, and idle keep-alive connections time out after
    60 s (it was 12 hours).
    """
    reactor = MemoryReactorClock()
    site = make_admin_site(make_state(), reactor, header_timeout=2.0)
    channel = site.buildProtocol(PEER)
    assert isinstance(channel, GatewayHTTPChannel)
    assert channel.timeOut == HTTP_IDLE_TIMEOUT
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    reactor.advance(2.0)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.disconnecting


def test_admin_options_star_names_its_methods() -> None:
    """
    C{OPTIONS *} on the admin endpoint is a 405 naming the methods it serves.
    """
    response = request(make_state(), "OPTIONS", "*")
    assert response.code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"


class _SilentWorkers:
    """
    A stand-in for the worker processes whose status replies come when the
    test says (no worker at all: an empty list).
    """

    lost = 0

    def __init__(self) -> None:
        self.asked: list[Deferred[list[StatusReply | None]]] = []

    def status(self, limit: int | None) -> Deferred[list[StatusReply | None]]:
        """
        A reply the test fires.
        """
        self.asked.append(Deferred())
        return self.asked[-1]

    def describe(self) -> list[dict[str, Any]]:
        """
        No worker processes.
        """
        return []


@pytest.mark.parametrize("path", ["/status.json", "/metrics"])
def test_gathered_status_not_written_for_a_client_that_left(
    path: str, log_events: EventLoggingObserver
) -> None:
    """
    With worker processes, a C{status.json} or C{metrics} whose client left
    before the workers answered is not written (and nothing fails); one
    whose client stayed gets its answer.
    """
    state = make_state()
    workers = _SilentWorkers()
    state.workers = workers
    site = make_admin_site(state, MemoryReactorClock())
    transports = []
    for _ in range(2):
        channel = site.buildProtocol(PEER)
        assert channel is not None
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        channel.dataReceived(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        transports.append((channel, transport))
    gone, gone_transport = transports[0]
    gone.connectionLost(Failure(ConnectionDone()))
    for reply in workers.asked:
        reply.callback([])
    assert gone_transport.value() == b""
    assert transports[1][1].value().startswith(b"HTTP/1.1 200 ")
    assert [event for event in log_events if event.get("log_failure")] == []
