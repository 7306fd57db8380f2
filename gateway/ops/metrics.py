"""
C{GET /metrics}: the counters of the status document (L{gateway.ops.status})
in Prometheus's text format, names prefixed C{gateway_}, rendered by
C{prometheus_client} from a collector that reads the document at scrape
time (nothing is counted twice, and nothing costs anything between
scrapes).  Labels are bounded: backend names, refusal reasons and session
kinds, never client addresses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from typing_extensions import override

from gateway.ops.status import SESSION_KINDS, AdminState, status
from gateway.pool.backends import BackendState

__all__ = ["metrics_text", "render_metrics"]


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    """
    A counter without labels.
    """
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _admission(counters: dict[str, Any]) -> Iterator[Metric]:
    """
    The front's families: connections accepted, refused (by reason), queued.
    """
    yield _counter(
        "gateway_connections_accepted",
        "Front connections admitted past the limits.",
        counters["accepted"],
    )
    refused = CounterMetricFamily(
        "gateway_connections_refused", "Refused connections, by reason.", labels=["reason"]
    )
    for reason, count in counters["refused"].items():
        refused.add_metric([reason], count)
    yield refused
    yield _counter(
        "gateway_connections_queued",
        "Connections that waited for a slot (queue mode).",
        counters["queued"],
    )


def _sessions(counters: dict[str, Any]) -> Iterator[Metric]:
    """
    The sessions' families: started and live (by kind), bytes (by
    direction), sessions unserved, backend state changes.
    """
    started = CounterMetricFamily(
        "gateway_sessions", "Sessions started, by kind.", labels=["kind"]
    )
    live = GaugeMetricFamily("gateway_sessions_active", "Live sessions, by kind.", labels=["kind"])
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
    yield _counter(
        "gateway_sessions_unserved",
        "Game sessions and proxied HTTP requests no backend could take.",
        counters["unserved"],
    )
    yield _counter(
        "gateway_backend_transitions",
        "Backend state changes (health, passive, operator).",
        counters["health_transitions"],
    )


def _backends(backends: list[dict[str, Any]]) -> Iterator[Metric]:
    """
    The per-backend families, labelled by backend name and pool (a worker's
    status merged by the acceptor may lack the pool: the game pool's then).
    """
    up = GaugeMetricFamily(
        "gateway_backend_up", "1 if the backend takes new sessions.", labels=["backend", "pool"]
    )
    active = GaugeMetricFamily(
        "gateway_backend_active_sessions",
        "Sessions on the backend now.",
        labels=["backend", "pool"],
    )
    total = CounterMetricFamily(
        "gateway_backend_sessions", "Sessions the backend took.", labels=["backend", "pool"]
    )
    failures = CounterMetricFamily(
        "gateway_backend_connect_failures",
        "Failed connection attempts to the backend.",
        labels=["backend", "pool"],
    )
    for backend in backends:
        name = [backend["name"], backend.get("pool", "game")]
        up.add_metric(name, 1 if backend["state"] == BackendState.UP.value else 0)
        active.add_metric(name, backend["active"])
        total.add_metric(name, backend["total"])
        failures.add_metric(name, backend["failures"])
    yield up
    yield active
    yield total
    yield failures


def _workers(workers: list[dict[str, Any]], counters: dict[str, Any]) -> Iterator[Metric]:
    """
    With C{--workers}: the worker processes' families.
    """
    running = GaugeMetricFamily("gateway_workers_running", "Worker processes running now.")
    running.add_metric([], sum(1 for w in workers if w["state"] == "running"))
    yield running
    yield _counter(
        "gateway_worker_restarts",
        "Worker processes started again after dying.",
        sum(w["restarts"] for w in workers),
    )
    yield _counter(
        "gateway_sessions_lost",
        "Connections lost with a worker process that died.",
        counters["lost"],
    )


class _GatewayCollector(Collector):
    """
    Turns a status document into Prometheus metric families at scrape time.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document

    @override
    def collect(self) -> Iterator[Metric]:
        document = self._document
        counters = document["counters"]
        yield from _admission(counters)
        yield from _sessions(counters)
        yield from _backends(document["backends"])
        if "workers" in document:
            yield from _workers(document["workers"], counters)


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
