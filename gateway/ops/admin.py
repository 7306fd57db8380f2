"""
The admin endpoint (C{--admin}): what the gateway is doing, for operators and
their tools.  Never served on the public front.

  - C{GET /status.json}: the backends (name, endpoint, state, active, total,
    failures), the live sessions (the "children list": id, kind, peer,
    backend, started, bytes_in, bytes_out) and the counters.
    C{?limit=N} lists at most the N oldest sessions (the counters still
    count them all), for a page that polls it.
  - C{GET /metrics}: the same counters in Prometheus's text format, names
    prefixed C{gateway_}, rendered by C{prometheus_client} from a collector
    that reads the gateway's own integers at scrape time (nothing is counted
    twice, and nothing costs anything between scrapes).  Labels are bounded:
    backend names, refusal reasons and session kinds, never client addresses.
  - C{GET /}: a dashboard (static HTML, CSS and JavaScript shipped in
    C{gateway/ops/dashboard}) that renders C{status.json} every 2 seconds.
  - C{POST /backends/NAME/drain} and C{POST /backends/NAME/enable}: an
    operator's actions on a backend.  With an admin token, each needs
    C{Authorization: Bearer TOKEN} (compared in constant time); a missing or
    wrong one is a 401 and a log event.  A request from a browser page of
    another origin (its C{Origin} header names another host) is a 403, so a
    web page cannot drain backends through an operator's browser.

Everything is read when asked; the data path only adds to plain integers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
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
from gateway.front.limits import Refusal
from gateway.http.site import HEADER_TIMEOUT, HTTPSite
from gateway.ops.registry import Counters, LiveSession, RefusalLog, SessionRegistry
from gateway.ops.sampling import Sampler
from gateway.pool.backends import Backend, BackendState, Pool

if TYPE_CHECKING:
    from gateway.process.wire import StatusReply
    from gateway.process.workerpool import WorkerPool

__all__ = [
    "ACTIONS",
    "AdminState",
    "backend_status",
    "make_admin_site",
    "render_metrics",
    "status",
]

SESSION_KINDS = ("game", "http")
"""The kinds of live sessions (a closed vocabulary)."""

ACTIONS = ("drain", "enable")
"""What an operator can do to a backend: C{POST /backends/NAME/ACTION}."""

DASHBOARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
"""The dashboard's files (shipped as package data)."""

_DASHBOARD_FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


class AdminState:
    """
    Everything the admin endpoint reads, and the token its actions need.

    @ivar clock: for the C{now} of the status document.
    @ivar token: the admin token, or L{None} when actions need none.
    @ivar hosts: host names (besides IP addresses and C{localhost}) that
        requests may name in their C{Host} header.
    @ivar started: when the gateway started, in the clock's seconds.
    """

    def __init__(
        self,
        pool: Pool,
        registry: SessionRegistry,
        counters: Counters,
        *,
        clock: IReactorTime | None = None,
        token: str | None = None,
        hosts: tuple[str, ...] = (),
        workers: WorkerPool | None = None,
    ) -> None:
        """
        @param workers: with C{--workers}, the worker processes, whose
            sessions and counters the documents gather.
        @raise ValueError: the token is empty (it would let anyone in).
        """
        if token is not None and not token.strip():
            raise ValueError("the admin token must not be empty")
        self.pool = pool
        self.registry = registry
        self.counters = counters
        self.clock = clock
        self.token = token
        self.hosts = tuple(name.lower() for name in hosts)
        self.workers = workers
        self.started = clock.seconds() if clock is not None else 0.0


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


def backend_status(backend: Backend) -> dict[str, Any]:
    """
    One backend as C{/status.json} shows it.
    """
    return {
        "name": backend.name,
        "endpoint": backend.description,
        "state": backend.state.value,
        "active": backend.active,
        "total": backend.total,
        "failures": backend.failures,
        "weight": backend.weight,
        "reason": backend.reason,
    }


def session_entry(number: int, session: LiveSession) -> dict[str, Any]:
    """
    One live session as C{/status.json} lists it (byte counts read now).
    """
    return {
        "id": number,
        "kind": session.kind,
        "peer": session.peer,
        "backend": session.backend_name,
        "started": session.started,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
    }


def status(state: AdminState, limit: int | None = None) -> dict[str, Any]:
    """
    The gateway's status as the JSON document of C{/status.json}.

    @param limit: list at most this many sessions (the oldest); L{None}: all.
    """
    pool, registry, counters = state.pool, state.registry, state.counters
    sessions: list[dict[str, Any]] = []
    live_in = live_out = 0
    ids, live = registry.snapshot()
    for number, session in zip(ids, live, strict=True):
        bytes_in, bytes_out = session.bytes_in, session.bytes_out
        live_in += bytes_in
        live_out += bytes_out
        if limit is not None and len(sessions) >= limit:
            continue  # still summed into the byte totals
        sessions.append(session_entry(number, session))
    active = registry.active()
    return {
        "started": state.started,
        "now": state.clock.seconds() if state.clock is not None else 0.0,
        "backends": [backend_status(backend) for backend in pool.backends],
        "sessions": sessions,
        "counters": {
            "accepted": counters.accepted,
            "queued": counters.queued,
            "refused": {reason.value: counters.refused[reason] for reason in Refusal},
            "sessions": {kind: registry.started[kind] for kind in SESSION_KINDS},
            "active_sessions": {kind: active[kind] for kind in SESSION_KINDS},
            "bytes_in": registry.ended_bytes_in + live_in,
            "bytes_out": registry.ended_bytes_out + live_out,
            "backend_failures": sum(backend.failures for backend in pool.backends),
            "unserved": pool.unserved,
            "key_fallbacks": counters.key_fallbacks,
            "health_transitions": pool.transitions,
        },
    }


class _GatewayCollector(Collector):
    """
    Turns the status into Prometheus metric families at scrape time.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document

    def collect(self) -> Iterator[Metric]:
        document = self._document
        counters = document["counters"]
        accepted = CounterMetricFamily(
            "gateway_connections_accepted", "Front connections admitted past the limits."
        )
        accepted.add_metric([], counters["accepted"])
        yield accepted
        refused = CounterMetricFamily(
            "gateway_connections_refused", "Refused connections, by reason.", labels=["reason"]
        )
        for reason, count in counters["refused"].items():
            refused.add_metric([reason], count)
        yield refused
        queued = CounterMetricFamily(
            "gateway_connections_queued", "Connections that waited for a slot (queue mode)."
        )
        queued.add_metric([], counters["queued"])
        yield queued
        started = CounterMetricFamily(
            "gateway_sessions", "Sessions started, by kind.", labels=["kind"]
        )
        live = GaugeMetricFamily(
            "gateway_sessions_active", "Live sessions, by kind.", labels=["kind"]
        )
        for kind in SESSION_KINDS:
            started.add_metric([kind], counters["sessions"][kind])
            live.add_metric([kind], counters["active_sessions"][kind])
        yield started
        yield live
        moved = CounterMetricFamily(
            "gateway_bytes", "Bytes relayed or served, by direction.", labels=["direction"]
        )
        moved.add_metric(["in"], counters["bytes_in"])
        moved.add_metric(["out"], counters["bytes_out"])
        yield moved
        unserved = CounterMetricFamily(
            "gateway_sessions_unserved", "Game sessions closed for want of a backend."
        )
        unserved.add_metric([], counters["unserved"])
        yield unserved
        transitions = CounterMetricFamily(
            "gateway_backend_transitions", "Backend state changes (health, passive, operator)."
        )
        transitions.add_metric([], counters["health_transitions"])
        yield transitions
        up = GaugeMetricFamily(
            "gateway_backend_up", "1 if the backend takes new sessions.", labels=["backend"]
        )
        active = GaugeMetricFamily(
            "gateway_backend_active_sessions", "Sessions on the backend now.", labels=["backend"]
        )
        total = CounterMetricFamily(
            "gateway_backend_sessions", "Sessions the backend took.", labels=["backend"]
        )
        failures = CounterMetricFamily(
            "gateway_backend_connect_failures",
            "Failed connection attempts to the backend.",
            labels=["backend"],
        )
        for backend in document["backends"]:
            name = [backend["name"]]
            up.add_metric(name, 1 if backend["state"] == BackendState.UP.value else 0)
            active.add_metric(name, backend["active"])
            total.add_metric(name, backend["total"])
            failures.add_metric(name, backend["failures"])
        yield up
        yield active
        yield total
        yield failures
        if "workers" in document:
            running = GaugeMetricFamily("gateway_workers_running", "Worker processes running now.")
            running.add_metric([], sum(1 for w in document["workers"] if w["state"] == "running"))
            yield running
            restarts = CounterMetricFamily(
                "gateway_worker_restarts", "Worker processes started again after dying."
            )
            restarts.add_metric([], sum(w["restarts"] for w in document["workers"]))
            yield restarts
            lost = CounterMetricFamily(
                "gateway_sessions_lost", "Connections lost with a worker process that died."
            )
            lost.add_metric([], counters["lost"])
            yield lost


def metrics_text(document: dict[str, Any]) -> bytes:
    """
    The Prometheus text exposition of a status document's counters.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(document))
    return generate_latest(registry)


def render_metrics(state: AdminState) -> bytes:
    """
    The Prometheus text exposition of the gateway's counters (one process).
    """
    # The counters only: listing the sessions would cost for nothing.
    return metrics_text(status(state, limit=0))


def gather_status(
    state: AdminState, limit: int | None
) -> Deferred[tuple[dict[str, Any], list[str]]]:
    """
    With worker processes: the status document of the whole gateway (without
    its C{sessions}) and the sessions' JSON texts, oldest first.

    The acceptor's own counters (admission) are added to each worker's
    (sessions, bytes, backends' counts); the backends' states are the
    acceptor's (it runs the health checks).  A worker that does not answer
    in time is listed with C{"responding": false} and its sessions are left out.
    """
    workers = state.workers
    assert workers is not None

    def merge(replies: list[StatusReply | None]) -> tuple[dict[str, Any], list[str]]:
        document = status(state, limit=0)
        del document["sessions"]
        counters = document["counters"]
        counts: dict[str, list[int]] = {}
        endpoints: dict[str, str] = {}
        found: list[tuple[int, str]] = []
        described = workers.describe()
        for entry, reply in zip(described, replies, strict=True):
            entry["responding"] = reply is not None
            if reply is None:
                entry["sessions"] = None
                continue
            entry["sessions"] = reply.live
            theirs = reply.counters
            for reason, count in theirs["refused"].items():
                counters["refused"][reason] += count
            for name in ("sessions", "active_sessions"):
                for kind, count in theirs[name].items():
                    counters[name][kind] += count
            for name in ("bytes_in", "bytes_out", "backend_failures", "unserved", "key_fallbacks"):
                counters[name] += theirs[name]
            for name, (active, total, failures, endpoint) in reply.backends.items():
                sums = counts.setdefault(name, [0, 0, 0])
                sums[0] += active
                sums[1] += total
                sums[2] += failures
                endpoints[name] = endpoint
            found.extend(reply.sessions)
        counters["lost"] = workers.lost
        listed = set()
        for backend in document["backends"]:
            listed.add(backend["name"])
            sums = counts.get(backend["name"], [0, 0, 0])
            backend["active"], backend["total"], backend["failures"] = sums
        for name, sums in counts.items():
            if name not in listed and sums[0]:
                # Removed here, still draining in a worker.
                document["backends"].append(
                    {
                        "name": name,
                        "endpoint": endpoints[name],
                        "state": BackendState.DRAINING.value,
                        "active": sums[0],
                        "total": sums[1],
                        "failures": sums[2],
                        "weight": 0,
                        "reason": "removed from the configuration",
                    }
                )
        document["workers"] = described
        found.sort()
        if limit is not None:
            found = found[:limit]
        return document, [text for _, text in found]

    return workers.status(limit).addCallback(merge)


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
        if self._state.workers is not None:
            gathered = gather_status(self._state, limit)

            def write(result: tuple[dict[str, Any], list[str]]) -> None:
                if getattr(request, "_disconnected", False):
                    return
                document, sessions = result
                head = json.dumps(document, separators=(",", ":"))[:-1]
                request.setHeader(b"content-type", b"application/json")
                request.setHeader(b"cache-control", b"no-store")
                request.write(f'{head},"sessions":[{",".join(sessions)}]}}\n'.encode())
                request.finish()

            gathered.addCallback(write)
            gathered.addErrback(_failed, request)
            return NOT_DONE_YET
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
        work = self._cooperator.cooperate(self._steps(request, ids, sessions))
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
        self, request: IRequest, ids: list[int], sessions: list[LiveSession]
    ) -> Iterator[None]:
        for start in range(0, len(ids), STREAM_CHUNK):
            end = start + STREAM_CHUNK
            text = ",".join(map(session_json, ids[start:end], sessions[start:end]))
            request.write((("," if start else "") + text).encode())
            yield None
        request.write(b"]}\n")
        request.finish()


def session_json(number: int, session: LiveSession, worker: int | None = None) -> str:
    """
    L{session_entry} as JSON text, built from strings only: strings are not
    tracked by the garbage collector, dictionaries are, and allocating 10,000
    of them would trigger collections that pause the reactor.

    @param worker: the worker process serving it, with C{--workers}.
    """
    backend = session.backend_name
    return (
        f'{{"id":{number},"kind":{_quote(session.kind)},"peer":{_quote(session.peer)},'
        f'"backend":{"null" if backend is None else _quote(backend)},'
        f'"started":{float(session.started)!r},'
        f'"bytes_in":{int(session.bytes_in)},"bytes_out":{int(session.bytes_out)}'
        + ("}" if worker is None else f',"worker":{worker}}}')
    )


class _Metrics(Resource):
    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, state: AdminState) -> None:
        super().__init__()
        self._state = state

    def render_GET(self, request: IRequest) -> bytes | int:  # noqa: N802 - twisted.web's name
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        if self._state.workers is None:
            return render_metrics(self._state)
        gathered = gather_status(self._state, 0)

        def write(result: tuple[dict[str, Any], list[str]]) -> None:
            if getattr(request, "_disconnected", False):
                return
            request.write(metrics_text(result[0]))
            request.finish()

        gathered.addCallback(write)
        gathered.addErrback(_failed, request)
        return NOT_DONE_YET


def _failed(failure: Failure, request: IRequest) -> None:
    """
    Gathering the workers' status failed (a bug): answer 500, log it.
    """
    _admin_log.failure("gathering the workers' status failed", failure)
    if getattr(request, "_disconnected", False):
        return
    request.setResponseCode(500)
    request.write(b'{"error":"internal error"}\n')
    request.finish()


_admin_log = Logger()


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
