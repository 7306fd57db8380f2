"""
C{GET /metrics}: the counters of the status document (L{gateway.ops.status})
in Prometheus's text format, names prefixed C{gateway_}, rendered by
C{prometheus_client} from a collector that reads the document at scrape
time (nothing is counted twice, and nothing costs anything between
scrapes).  Labels are bounded: backend names, refusal reasons and session
kinds, never client addresses.

Besides the document's counters: the waiting rooms by pool (length, size,
oldest wait, admissions, waits; their refusals, C{queue-full} and
C{queue-timeout}, are C{gateway_connections_refused} reasons like the
others, not counted twice), the histograms the data path keeps as
plain lists (L{gateway.histogram}), the configured limits (so that "how
close to full" is one division), C{gateway_build_info}, the start time,
and C{prometheus_client}'s process collector (C{process_*}: RSS, CPU time,
open descriptors) for the process that serves the endpoint (with
C{--workers}, the acceptor's: the workers' are not included).  With
C{--cluster}: whether Redis answers, the live nodes as last read and the
Redis commands that failed, and how the shared affinity's lookups ended
(L{gateway.ops.status.ClusterMember}); the cluster's other figures stay per
node, for Prometheus to add up.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from typing_extensions import override

import twisted
from gateway.cli import package_version
from gateway.config import GatewayConfig
from gateway.front.limits import default_burst
from gateway.histogram import CONNECT_TIME_BOUNDS, SESSION_DURATION_BOUNDS
from gateway.ops.status import SESSION_KINDS, AdminState, ClusterMember, status
from gateway.pool.backends import BackendState
from gateway.pool.room import QUEUE_WAIT_BOUNDS

__all__ = ["limits_of", "metrics_text", "render_metrics"]


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
    yield _counter(
        "gateway_sessions_fast_path",
        "Game sessions whose backend was connected on the TCP fast path.",
        counters["fast_path"],
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


def _backends(backends: list[dict[str, Any]], started: float) -> Iterator[Metric]:
    """
    The per-backend families, labelled by backend name and pool (a worker's
    status merged by the acceptor may lack the pool: the game pool's then).

    @param started: when the gateway started (the last change of a backend
        that has not changed since).
    """
    labels = ["backend", "pool"]
    up = GaugeMetricFamily(
        "gateway_backend_up", "1 if the backend takes new sessions.", labels=labels
    )
    state = GaugeMetricFamily(
        "gateway_backend_state",
        "1 for the backend's state (up, down, draining), 0 for the others.",
        labels=[*labels, "state"],
    )
    changed = GaugeMetricFamily(
        "gateway_backend_state_changed_seconds",
        "When the backend's state last changed (the start time if it has not), since the epoch.",
        labels=labels,
    )
    active = GaugeMetricFamily(
        "gateway_backend_active_sessions",
        "Sessions on the backend now (game sessions from the choice of the backend).",
        labels=labels,
    )
    total = CounterMetricFamily(
        "gateway_backend_sessions", "Sessions the backend took.", labels=labels
    )
    failures = CounterMetricFamily(
        "gateway_backend_connect_failures",
        "Failed connection attempts to the backend.",
        labels=labels,
    )
    checks = CounterMetricFamily(
        "gateway_backend_check_failures", "Failed health checks of the backend.", labels=labels
    )
    limit = GaugeMetricFamily(
        "gateway_backend_max_sessions",
        "The backend's session limit (max-sessions; 0: none).",
        labels=labels,
    )
    elsewhere = GaugeMetricFamily(
        "gateway_backend_sessions_elsewhere",
        "In a cluster: the backend's sessions through the other nodes, as this node last "
        "learned them (counted against max-sessions with this node's).",
        labels=labels,
    )
    for backend in backends:
        name = [backend["name"], backend.get("pool", "game")]
        up.add_metric(name, 1 if backend["state"] == BackendState.UP.value else 0)
        for value in BackendState:
            state.add_metric([*name, value.value], 1 if backend["state"] == value.value else 0)
        changed.add_metric(name, backend.get("changed") or started)
        active.add_metric(name, backend["active"])
        total.add_metric(name, backend["total"])
        failures.add_metric(name, backend["failures"])
        checks.add_metric(name, backend.get("check_failures", 0))
        limit.add_metric(name, backend.get("max_sessions", 0))
        elsewhere.add_metric(name, backend.get("elsewhere", 0))
    yield from (up, state, changed, active, total, failures, checks, limit, elsewhere)


def _histogram_buckets(
    bounds: tuple[float, ...], state: dict[str, Any]
) -> list[tuple[str, float]]:
    """
    A histogram state's counts as Prometheus's cumulative C{le} buckets.
    """
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), state["counts"], strict=True):
        running += count
        buckets.append((floatToGoString(bound), running))
    return buckets


def _histograms(document: dict[str, Any]) -> Iterator[Metric]:
    """
    The histograms: session durations by kind, connect times and bytes by
    backend.
    """
    counters = document["counters"]
    durations = HistogramMetricFamily(
        "gateway_session_duration_seconds",
        "How long sessions lasted (counted when they end), by kind.",
        labels=["kind"],
    )
    for kind, state in sorted(counters.get("durations", {}).items()):
        durations.add_metric(
            [kind], _histogram_buckets(SESSION_DURATION_BOUNDS, state), state["sum"]
        )
    yield durations
    pools = {backend["name"]: backend.get("pool", "game") for backend in document["backends"]}
    connect = HistogramMetricFamily(
        "gateway_backend_connect_seconds",
        "Time for a game or WebSocket session's backend connection to become usable.",
        labels=["backend", "pool"],
    )
    for name, state in counters.get("connect_time", {}).items():
        connect.add_metric(
            [name, pools.get(name, "game")],
            _histogram_buckets(CONNECT_TIME_BOUNDS, state),
            state["sum"],
        )
    yield connect
    moved = CounterMetricFamily(
        "gateway_backend_bytes",
        "Bytes of game and WebSocket sessions, by backend and direction (in: from clients).",
        labels=["backend", "pool", "direction"],
    )
    for name, (bytes_in, bytes_out) in counters.get("backend_bytes", {}).items():
        pool = pools.get(name, "game")
        moved.add_metric([name, pool, "in"], bytes_in)
        moved.add_metric([name, pool, "out"], bytes_out)
    yield moved


def _queues(queues: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """
    The waiting rooms' families, labelled by pool (rooms that are open, or
    counted something: L{gateway.ops.status.queue_status}).
    """
    labels = ["pool"]
    length = GaugeMetricFamily(
        "gateway_queue_length", "Sessions waiting in the pool's waiting room now.", labels=labels
    )
    size = GaugeMetricFamily(
        "gateway_queue_size",
        "The waiting room's size (--queue-size: players who may wait at once).",
        labels=labels,
    )
    oldest = GaugeMetricFamily(
        "gateway_queue_oldest_wait_seconds",
        "How long the longest waiter has waited (0: nobody waits).",
        labels=labels,
    )
    admitted = CounterMetricFamily(
        "gateway_queue_admitted", "Waiters admitted to a backend.", labels=labels
    )
    left = CounterMetricFamily(
        "gateway_queue_left", "Waiters whose client left while waiting.", labels=labels
    )
    waits = HistogramMetricFamily(
        "gateway_queue_wait_seconds",
        "How long waiters waited (counted when admitted or timed out).",
        labels=labels,
    )
    for pool, room in sorted(queues.items()):
        length.add_metric([pool], room["length"])
        size.add_metric([pool], room["size"])
        oldest.add_metric([pool], room["oldest_wait"])
        admitted.add_metric([pool], room["admitted"])
        left.add_metric([pool], room["left"])
        state = room["waits"]
        waits.add_metric([pool], _histogram_buckets(QUEUE_WAIT_BOUNDS, state), state["sum"])
    yield from (length, size, oldest, admitted, left, waits)


def limits_of(config: GatewayConfig) -> dict[str, tuple[str, float]]:
    """
    The configured limits as C{/metrics} shows them: metric name ->
    (documentation, value).  0 means no limit, as on the command line.
    """
    return {
        "gateway_limit_max_connections": (
            "--max-connections: concurrent front connections (0: no cap).",
            config.max_connections,
        ),
        "gateway_limit_max_per_ip": (
            "--max-per-ip: concurrent connections from one address (0: no cap).",
            config.max_per_ip,
        ),
        "gateway_limit_rate_per_ip": (
            "--rate-per-ip: new connections per second from one address (0: no limit).",
            config.rate_per_ip,
        ),
        "gateway_limit_rate_burst": (
            "--rate-burst: the per-address rate limit's bucket (0: no rate limit).",
            0.0
            if not config.rate_per_ip
            else config.rate_burst or default_burst(config.rate_per_ip),
        ),
        "gateway_limit_websocket_max_message_bytes": (
            "--websocket-max-message: the largest WebSocket message.",
            config.websocket_max_message,
        ),
    }


def _process(state: AdminState) -> Iterator[Metric]:
    """
    The gateway's build, start time and configured limits.
    """
    info = GaugeMetricFamily(
        "gateway_build_info",
        "Always 1; the gateway's version and those of Python and Twisted.",
        labels=["version", "python", "twisted"],
    )
    info.add_metric([package_version(), platform.python_version(), twisted.__version__], 1)
    yield info
    start = GaugeMetricFamily(
        "gateway_start_time_seconds", "When the gateway started, since the epoch."
    )
    start.add_metric([], state.started)
    yield start
    if state.config is not None:
        for name, (documentation, value) in limits_of(state.config).items():
            limit = GaugeMetricFamily(name, documentation)
            limit.add_metric([], value)
            yield limit


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


def _cluster(cluster: ClusterMember) -> Iterator[Metric]:
    """
    With C{--cluster}: this node's view of the cluster.
    """
    summary = cluster.summary()
    up = GaugeMetricFamily(
        "gateway_cluster_up", "1 if the cluster's Redis answered this node's last command."
    )
    up.add_metric([], 1 if summary["redis_up"] else 0)
    yield up
    nodes = GaugeMetricFamily(
        "gateway_cluster_nodes", "Live nodes of the cluster as this node last read them."
    )
    nodes.add_metric([], len(cluster.document()))
    yield nodes
    yield _counter(
        "gateway_cluster_failures",
        "Redis commands of this node that failed or timed out.",
        summary["failures"],
    )
    yield _counter(
        "gateway_cluster_local_admissions",
        "Admissions this node decided alone (Redis did not answer within --cluster-timeout), "
        "with each per-address limit divided by the live nodes.",
        summary["local_admissions"],
    )
    alone = GaugeMetricFamily(
        "gateway_cluster_limits_alone",
        "1 while this node decides admissions alone (Redis away).",
    )
    alone.add_metric([], 1 if summary["limits_alone"] else 0)
    yield alone
    yield _counter(
        "gateway_cluster_local_seats",
        "Seats this node took or refused alone (Redis did not answer within "
        "--cluster-timeout), with each backend's max-sessions and the cluster's cap divided "
        "by the live nodes.",
        summary["local_seats"],
    )
    sessions = GaugeMetricFamily(
        "gateway_cluster_sessions",
        "Game sessions holding a shared seat across the cluster, as this node last learned "
        "them (this node's now, the others' as of the last heartbeat).",
    )
    sessions.add_metric([], summary["sessions"])
    yield sessions
    affinity = summary.get("affinity")
    if affinity is not None:
        looked = CounterMetricFamily(
            "gateway_cluster_affinity",
            "Lookups of a session key's shared backend, by result (used, overridden: "
            "not usable on this node, none: nothing remembered, failed: Redis did not answer).",
            labels=["result"],
        )
        for result in ("used", "overridden", "none", "failed"):
            looked.add_metric([result], affinity[result])
        yield looked


class _GatewayCollector(Collector):
    """
    Turns a status document into Prometheus metric families at scrape time.
    """

    def __init__(self, document: dict[str, Any], state: AdminState) -> None:
        self._document = document
        self._state = state

    @override
    def collect(self) -> Iterator[Metric]:
        document = self._document
        counters = document["counters"]
        yield from _admission(counters)
        yield from _sessions(counters)
        yield from _backends(document["backends"], document["started"])
        yield from _histograms(document)
        yield from _queues(counters.get("queues", {}))
        yield from _process(self._state)
        if "workers" in document:
            yield from _workers(document["workers"], counters)
        if self._state.cluster is not None:
            yield from _cluster(self._state.cluster)


def metrics_text(document: dict[str, Any], state: AdminState) -> bytes:
    """
    The Prometheus text exposition of a status document's counters, with
    the configuration, build and process families of C{state}'s process.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(document, state))
    # Reads /proc/self at scrape time (nothing on other systems).
    ProcessCollector(registry=registry)
    return generate_latest(registry)


def render_metrics(state: AdminState) -> bytes:
    """
    The Prometheus text exposition of the gateway's counters (one process).
    """
    # The counters only: listing the sessions would cost for nothing.
    return metrics_text(status(state, limit=0), state)
