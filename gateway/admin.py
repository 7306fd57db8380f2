"""
The admin endpoint (C{--admin}): what the gateway is doing, for operators and
their tools.  Never served on the public front.

  - C{GET /status.json}: the backends (name, endpoint, state, active, total,
    failures), the live sessions (the "children list": id, kind, peer,
    backend, started, bytes_in, bytes_out) and the counters.
  - C{GET /metrics}: the same counters in Prometheus's text format, names
    prefixed C{gateway_}, rendered by C{prometheus_client} from a collector
    that reads the gateway's own integers at scrape time (nothing is counted
    twice, and nothing costs anything between scrapes).  Labels are bounded:
    backend names, refusal reasons and session kinds, never client addresses.

Everything is read when asked; the data path only adds to plain integers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.limits import Refusal
from gateway.pool import BackendState, Pool
from gateway.registry import Counters, SessionRegistry

__all__ = ["AdminState", "make_admin_site", "render_metrics", "status"]

SESSION_KINDS = ("game", "http")
"""The kinds of live sessions (a closed vocabulary)."""


class AdminState:
    """
    Everything the admin endpoint reads.
    """

    def __init__(self, pool: Pool, registry: SessionRegistry, counters: Counters) -> None:
        self.pool = pool
        self.registry = registry
        self.counters = counters


def status(state: AdminState) -> dict[str, Any]:
    """
    The gateway's status as the JSON document of C{/status.json}.
    """
    pool, registry, counters = state.pool, state.registry, state.counters
    sessions = []
    live_in = live_out = 0
    for number, session in registry.items():
        bytes_in, bytes_out = session.bytes_in, session.bytes_out
        live_in += bytes_in
        live_out += bytes_out
        sessions.append(
            {
                "id": number,
                "kind": session.kind,
                "peer": session.peer,
                "backend": session.backend_name,
                "started": session.started,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
            }
        )
    active = registry.active()
    return {
        "backends": [
            {
                "name": backend.name,
                "endpoint": backend.description,
                "state": backend.state.value,
                "active": backend.active,
                "total": backend.total,
                "failures": backend.failures,
                "weight": backend.weight,
                "reason": backend.reason,
            }
            for backend in pool.backends
        ],
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

    def __init__(self, state: AdminState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        document = status(self._state)
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


def render_metrics(state: AdminState) -> bytes:
    """
    The Prometheus text exposition of the gateway's counters.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(state))
    return generate_latest(registry)


class _Status(Resource):
    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, state: AdminState) -> None:
        super().__init__()
        self._state = state

    def render_GET(self, request: IRequest) -> bytes:  # noqa: N802 - twisted.web's name
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status(self._state), separators=(",", ":")).encode() + b"\n"


class _Metrics(Resource):
    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, state: AdminState) -> None:
        super().__init__()
        self._state = state

    def render_GET(self, request: IRequest) -> bytes:  # noqa: N802 - twisted.web's name
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return render_metrics(self._state)


def make_admin_site(state: AdminState, reactor: IReactorTime) -> Site:
    """
    The admin endpoint's site.
    """
    root = Resource()
    root.putChild(b"status.json", _Status(state))
    root.putChild(b"metrics", _Metrics(state))
    site = Site(root, reactor=reactor)
    site.displayTracebacks = False
    return site
