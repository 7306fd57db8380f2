"""
The admin endpoint (C{--admin}): what the gateway is doing, for operators and
their tools.  Never served on the public front.

  - C{GET /status.json}: the status document of L{gateway.ops.status} (the
    backends, the live sessions and the counters).  C{?limit=N} lists at
    most the N oldest sessions (the counters still count them all), for a
    page that polls it.  A long session list is written in steps by a
    cooperator, so that the sessions keep flowing meanwhile.
  - C{GET /metrics}: the same counters in Prometheus's text format (see
    L{gateway.ops.metrics}).
  - C{GET /}: a dashboard (static HTML, CSS and JavaScript shipped in
    C{gateway/ops/dashboard}) that renders C{status.json} every 2 seconds.
  - C{POST /backends/NAME/drain} and C{POST /backends/NAME/enable}: an
    operator's actions on a backend.  With an admin token, each needs
    C{Authorization: Bearer TOKEN} (compared in constant time); a missing or
    wrong one is a 401 and a log event.  A request from a browser page of
    another origin (its C{Origin} header names another host) is a 403, so a
    web page cannot drain backends through an operator's browser.

Only requests that name an allowed host (an IP address, C{localhost} or a
name given to C{--admin-host}) are answered (DNS rebinding); every response
says not to be framed.  L{make_admin_site} builds the site, an L{HTTPSite}
with the front's request limits.

Everything is read when asked; the data path only adds to plain integers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator, TaskDone, TaskFailed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.error import UnsupportedMethod
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import Data
from typing_extensions import override

from gateway.connection import describe_peer
from gateway.http.channel import HEADER_TIMEOUT
from gateway.http.site import HTTPSite
from gateway.ops.metrics import metrics_text, render_metrics
from gateway.ops.registry import LiveSession, RefusalLog
from gateway.ops.sampling import Sampler
from gateway.ops.status import (
    AdminState,
    WaitingPlaces,
    backend_status,
    gather_status,
    session_json,
    status,
)
from gateway.pool.backends import BackendState

__all__ = [
    "ACTIONS",
    "host_allowed",
    "make_admin_site",
    "same_origin",
]

ACTIONS = ("drain", "enable")
"""What an operator can do to a backend: C{POST /backends/NAME/ACTION}."""

DASHBOARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
"""The dashboard's files (shipped as package data)."""

_DASHBOARD_FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


def host_allowed(header: bytes | None, names: tuple[str, ...]) -> bool:
    """
    Whether a request's C{Host} header may reach the admin endpoint: an IP
    address, C{localhost}, or one of C{names} (any port).  A browser page
    whose name was re-pointed at the admin address (DNS rebinding) names
    its own host, so it is refused; a client that sends no Host is not a
    browser.
    """
    if header is None:
        return True
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        host = text[1 : text.find("]")] if "]" in text else text
    else:
        host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or host in names
    return True


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc: str, default: int | None) -> tuple[str, int | None] | None:
    """
    A C{host[:port]} split, the host lower-cased (C{[v6]} kept whole), or
    L{None} if the port is not a number.
    """
    host, port = netloc, ""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            return None
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif ":" in netloc:
        host, port = netloc.rsplit(":", 1)
    if port and not port.isdigit():
        return None
    return host.lower(), int(port) if port else default


def same_origin(origin: bytes, host: bytes | None) -> bool:
    """
    Whether a request's C{Origin} names the host it was sent to (its C{Host}
    header): scheme and host compared without regard to case, as RFC 6454
    serialises origins (C{http://LOCALHOST:9090} is C{http://localhost:9090}),
    the port exactly (a missing one is the scheme's default).
    """
    if host is None:
        return False
    parts = urlsplit(origin.decode("latin-1").strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path or parts.query or parts.fragment:
        return False
    if "@" in parts.netloc:
        return False
    default = _DEFAULT_PORTS[scheme]
    theirs = _host_port(parts.netloc, default)
    ours = _host_port(host.decode("latin-1").strip(), default)
    return theirs is not None and theirs == ours


def _json(request: IRequest, code: int, document: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


STREAM_CHUNK = 100
"""Sessions serialized per step when C{/status.json} lists many."""

STREAM_SLICE = 0.002
"""Seconds of serializing steps per reactor turn (the cooperator's time slice)."""


class _Status(Resource):
    """
    C{GET /status.json}.  A long session list is written in steps of
    L{STREAM_CHUNK} sessions by a cooperator, which gives the reactor back
    after L{STREAM_SLICE} seconds of work, so that listing 10,000 sessions does not
    stall the sessions themselves (measured with 10,000 live sessions: see
    the README).  The list is the sessions live when the
    request arrived; each one's byte counts are read when its step runs.
    The steps stop when the client leaves.

    With worker processes, the document is gathered from them first
    (L{gather_status}) and written in one piece, unless the client left
    meanwhile (L{_WorkersReply}).
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, state: AdminState, cooperator: Cooperator) -> None:
        super().__init__()
        self._state = state
        self._cooperator = cooperator

    def render_GET(self, request: IRequest) -> bytes | int:  # noqa: N802 - twisted.web's name
        limit: int | None = None
        values = request.args.get(b"limit") if request.args else None
        if values:
            try:
                limit = int(values[0])
                if limit < 0:
                    raise ValueError
            except ValueError:
                return _json(request, 400, {"error": "limit must be a whole number >= 0"})
        scopes = request.args.get(b"scope") if request.args else None
        scope = scopes[0] if scopes else b"node"
        cluster = self._state.cluster
        if scope not in (b"node", b"cluster"):
            return _json(request, 400, {"error": "scope must be node or cluster"})
        if scope == b"cluster" and cluster is None:
            return _json(request, 400, {"error": "scope=cluster needs --cluster"})
        extra = (
            {
                "cluster": cluster.summary(),
                "nodes": cluster.document(),
                "cluster_sessions": cluster.sessions(),
            }
            if scope == b"cluster" and cluster is not None
            else None
        )
        if self._state.workers is not None:
            gathered = gather_status(self._state, limit)
            if extra is not None:
                gathered.addCallback(lambda found: ({**found[0], **extra}, *found[1:]))
            _WorkersReply(request).answer(gathered, _gathered_json)
            return NOT_DONE_YET
        if extra is not None:
            return _json(request, 200, {**status(self._state, limit), **extra})
        if (
            limit is not None
            and limit <= STREAM_CHUNK
            or len(self._state.registry) <= STREAM_CHUNK
        ):
            return _json(request, 200, status(self._state, limit))
        ids, sessions = self._state.registry.snapshot()
        if limit is not None:
            ids, sessions = ids[:limit], sessions[:limit]
        document = status(self._state, limit=0)
        del document["sessions"]
        head = json.dumps(document, separators=(",", ":"))[:-1] + ',"sessions":['
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(head.encode())
        # The waiters' positions as they were when the request arrived.
        places = WaitingPlaces(self._state.pool, document["now"])
        work = self._cooperator.cooperate(self._steps(request, ids, sessions, places))
        finished = request.notifyFinish()  # type: ignore[attr-defined]

        def _gone(reason: object) -> None:
            # The client left: stop serializing for nobody.
            try:
                work.stop()
            except (TaskDone, TaskFailed):
                pass

        finished.addErrback(_gone)
        return NOT_DONE_YET

    def _steps(
        self,
        request: IRequest,
        ids: list[int],
        sessions: list[LiveSession],
        places: WaitingPlaces,
    ) -> Iterator[None]:
        for start in range(0, len(ids), STREAM_CHUNK):
            end = start + STREAM_CHUNK
            text = ",".join(
                session_json(number, session, places=places)
                for number, session in zip(ids[start:end], sessions[start:end], strict=True)
            )
            request.write((("," if start else "") + text).encode())
            yield None
        request.write(b"]}\n")
        request.finish()


def _gathered_json(result: tuple[dict[str, Any], list[str]], request: IRequest) -> bytes:
    """
    The body of C{/status.json} from the workers' gathered status: the
    document with the sessions' JSON texts as its C{sessions}.
    """
    document, sessions = result
    head = json.dumps(document, separators=(",", ":"))[:-1]
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return f'{head},"sessions":[{",".join(sessions)}]}}\n'.encode()


class _Metrics(Resource):
    """
    C{GET /metrics}: the counters for Prometheus (L{gateway.ops.metrics}).
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, state: AdminState) -> None:
        super().__init__()
        self._state = state

    def render_GET(self, request: IRequest) -> bytes | int:  # noqa: N802 - twisted.web's name
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        if self._state.workers is None:
            return render_metrics(self._state)
        _WorkersReply(request).answer(
            gather_status(self._state, 0), lambda result, _: metrics_text(result[0], self._state)
        )
        return NOT_DONE_YET


class _WorkersReply:
    """
    A response that waits for the worker processes' status (C{--workers}).

    It is written when the status comes, unless the client left meanwhile:
    C{notifyFinish}'s Deferred fails when the connection is lost before the
    response is finished, and that sets L{left}.  Gathering that fails (a
    bug) is logged and answered 500.

    @ivar left: whether the client went away before the response was written.
    """

    _log = Logger()

    def __init__(self, request: IRequest) -> None:
        """
        @param request: the request to answer; its connection is watched
            from now on.
        """
        self._request = request
        self.left = False
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        finished.addErrback(self._client_left)

    def _client_left(self, reason: Failure) -> None:
        self.left = True

    def answer(
        self,
        gathered: Deferred[tuple[dict[str, Any], list[str]]],
        body: Callable[[tuple[dict[str, Any], list[str]], IRequest], bytes],
    ) -> None:
        """
        Write and finish the response once C{gathered} fires.

        @param gathered: the status of the whole gateway (L{gather_status}).
        @param body: makes the response's body (and sets its headers) from
            the gathered status and the request.
        """

        def write(result: tuple[dict[str, Any], list[str]]) -> None:
            if self.left:
                return
            self._request.write(body(result, self._request))
            self._request.finish()

        gathered.addCallback(write)
        gathered.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        """
        Gathering the workers' status failed (a bug): answer 500, log it.
        """
        self._log.failure("gathering the workers' status failed", failure)
        if self.left:
            return
        self._request.setResponseCode(500)
        self._request.write(b'{"error":"internal error"}\n')
        self._request.finish()


class _BackendActions(Resource):
    """
    C{POST /backends/NAME/drain} and C{POST /backends/NAME/enable}.

    NAME is percent-encoded when it has a C{/} (C{unix:%2Frun%2Fgame.sock}).
    """

    isLeaf = True  # noqa: N815 - twisted.web's name
    _log = Logger()

    def __init__(self, state: AdminState) -> None:
        super().__init__()
        self._state = state
        # Without a clock (a worker's state, which serves no actions) every
        # refusal is logged: there is no timer to end a window with.
        self._sampler: Sampler[str] | None = None
        if state.clock is not None:
            self._sampler = Sampler(
                state.clock, self._summarise, window=REFUSAL_WINDOW, burst=REFUSALS_LOGGED
            )

    @override
    def render(self, request: IRequest) -> bytes:
        if request.method != b"POST":
            # Not Resource's default, which would offer HEAD as well.
            raise UnsupportedMethod((b"POST",))
        return self.render_POST(request)

    def render_POST(self, request: IRequest) -> bytes:  # noqa: N802 - twisted.web's name
        address = request.getClientAddress()
        peer = getattr(address, "host", None) or describe_peer(address)
        segments = [segment for segment in request.postpath if segment]
        if len(segments) != 2 or segments[1].decode("ascii", "replace") not in ACTIONS:
            return _json(
                request, 404, {"error": "use POST /backends/NAME/drain or /backends/NAME/enable"}
            )
        name = segments[0].decode("utf-8", "replace")
        action = segments[1].decode("ascii")
        refusal = self._refusal(request)
        if refusal is not None:
            code, reason = refusal
            self._log_refusal(action, name, peer, reason)
            if code == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="gateway admin"')
            return _json(request, code, {"error": reason})
        backend = self._state.pool.get(name)
        if backend is None:
            return _json(request, 404, {"error": f"no backend named {name!r}"})
        enabling_down = action == "enable" and backend.state is BackendState.DOWN
        if self._state.cluster is not None and not enabling_down:
            # Every node applies it (this one now, the others from Redis).
            self._state.cluster.operator_action(name, action, peer)
        if action == "drain":
            self._state.pool.set_state(
                backend, BackendState.DRAINING, f"drained by an operator from {peer}"
            )
        elif backend.state is BackendState.DRAINING:
            # Back in rotation; a backend that is really down is marked down
            # again by its next failed health check.
            self._state.pool.set_state(
                backend, BackendState.UP, f"enabled by an operator from {peer}"
            )
        elif backend.state is BackendState.DOWN:
            return _json(
                request,
                409,
                {
                    "error": f"backend {name!r} is down ({backend.reason}); "
                    "it comes back when its health checks pass",
                    "backend": backend_status(backend),
                },
            )
        return _json(request, 200, {"backend": backend_status(backend)})

    def _log_refusal(self, action: str, name: str, peer: str, reason: str) -> None:
        """
        Log a refused action: the first L{REFUSALS_LOGGED} in a window of
        L{REFUSAL_WINDOW} seconds one by one, then, when the window ends,
        one line for the rest (a token being guessed must not flood the log).
        """
        if self._sampler is not None and not self._sampler.admit("refused"):
            return
        self._log.warn(
            "admin action {action} on {backend} refused for {peer}: {reason}",
            action=action,
            backend=name,
            peer=peer,
            reason=reason,
        )

    def _summarise(self, suppressed: Counter[str]) -> None:
        self._log.warn(
            "{count} more admin actions refused in the last {window:g} s without logging each",
            count=suppressed.total(),
            window=REFUSAL_WINDOW,
        )

    def _refusal(self, request: IRequest) -> tuple[int, str] | None:
        """
        Why this request may not act, as (HTTP status, reason), or L{None}.
        """
        origin = request.getHeader(b"origin")
        if origin is not None and not same_origin(origin, request.getHeader(b"host")):
            return 403, "cross-origin request"
        token = self._state.token
        if token is None:
            return None
        header = request.getHeader(b"authorization")
        if header is None:
            return 401, "no admin token given"
        scheme, _, given = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(
            given.strip(), token.encode("utf-8")
        ):
            return 401, "wrong admin token"
        return None


REFUSALS_LOGGED = 5
"""Refused admin actions logged one by one per window."""

REFUSAL_WINDOW = 10.0
"""Seconds of a window of refused admin actions."""


class _MisdirectedHost(Resource):
    """
    The answer to a request whose Host header the admin endpoint does not serve.
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    @override
    def render(self, request: IRequest) -> bytes:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        body = _json(
            request,
            421,
            {
                "error": f"the admin endpoint does not answer for the host {host!r}; "
                "use its IP address, localhost, or a name given to --admin-host"
            },
        )
        request.setResponseCode(421, b"Misdirected Request")
        return body


def _dashboard(root: Resource) -> None:
    for path, (filename, content_type) in _DASHBOARD_FILES.items():
        with open(os.path.join(DASHBOARD_DIR, filename), "rb") as file:
            page = Data(file.read(), content_type.decode())
        root.putChild(path, page)


class _AdminSite(HTTPSite):
    """
    The admin site: it answers only requests that name an allowed host (see
    L{host_allowed}); every response says not to be framed, and the
    dashboard may load nothing but this endpoint's own files.  Requests are
    not logged (a dashboard polls every 2 seconds).

    Its connections are the front's hardened channels (L{HTTPSite}): the
    same request timeout (line, headers and body), size limits, idle
    keep-alive timeout and response timeouts.
    """

    methods = (b"GET", b"HEAD", b"POST")

    def __init__(
        self,
        root: Resource,
        state: AdminState,
        reactor: IReactorTime,
        *,
        header_timeout: float,
        refusals: RefusalLog | None,
    ) -> None:
        super().__init__(root, reactor=reactor, header_timeout=header_timeout, refusals=refusals)
        self._state = state

    @override
    def log(self, request: Any) -> None:
        pass

    @override
    def log_request(self, request: Any, reason: str, channel: Any) -> None:
        pass

    @override
    def getResourceFor(self, request: IRequest) -> Any:
        if not host_allowed(request.getHeader(b"host"), self._state.hosts):
            return _MisdirectedHost()
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; frame-ancestors 'none'; form-action 'none'",
        )
        return super().getResourceFor(request)


def _time_slice(clock: IReactorTime, seconds: float) -> Callable[[], bool]:
    """
    A cooperator's termination predicate: true once C{seconds} have passed.
    """
    deadline = clock.seconds() + seconds
    return lambda: clock.seconds() >= deadline


def make_admin_site(
    state: AdminState,
    reactor: IReactorTime,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    refusals: RefusalLog | None = None,
) -> HTTPSite:
    """
    The admin endpoint's site.

    @param header_timeout: seconds a request (line, headers, body) may take.
    @param refusals: where its timeouts and bad requests are counted.
    """
    root = Resource()
    cooperator = Cooperator(
        terminationPredicateFactory=lambda: _time_slice(reactor, STREAM_SLICE),
        scheduler=lambda work: reactor.callLater(0, work),
    )
    root.putChild(b"status.json", _Status(state, cooperator))
    root.putChild(b"metrics", _Metrics(state))
    root.putChild(b"backends", _BackendActions(state))
    _dashboard(root)
    return _AdminSite(root, state, reactor, header_timeout=header_timeout, refusals=refusals)
