"""
C{/metrics} beyond the status document's counters: histograms (buckets,
and their merge from worker processes), bytes, state and health check
failures per backend, the configured limits, build information, the start
time and the process collector; and the Grafana dashboard in C{contrib/},
whose every query must name a metric that C{/metrics} exposes.  Parsed with
C{prometheus_client}'s own parser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.histogram import SESSION_DURATION_BOUNDS, Histogram, merge_state
from gateway.ops.metrics import metrics_text, render_metrics
from gateway.ops.registry import Counters, SessionRegistry
from gateway.ops.status import AdminState, gather_status, status
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.pools import Pools
from gateway.pool.room import RoomSettings
from gateway.process.wire import BackendCounts, StatusReply
from tests.clusterview import ClusterView, three_nodes

DASHBOARD = Path(__file__).parent.parent / "contrib" / "grafana" / "gateway-dashboard.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class FakeSession:
    """
    A live session as the registry sees it.
    """

    kind: str
    peer: str
    started: float
    backend_name: str | None
    bytes_in: int
    bytes_out: int


def samples_of(text: bytes) -> Samples:
    """
    Every sample of an exposition, by name and sorted labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def at(samples: Samples, name: str, **labels: str) -> float:
    """
    The value of the sample C{name} with C{labels}.
    """
    return samples[(name, tuple(sorted(labels.items())))]


def make_state(
    clock: MemoryReactorClock, config: GatewayConfig | None = None, **kwargs: Any
) -> AdminState:
    """
    Backends C{a} (up) and C{b} (taken down at clock time 50), a game
    session on C{a} that ended after 3 s with 10/20 bytes, a live one on
    C{a} with 1/2 bytes, and a connection to C{a} that took 2 ms.
    """
    clock.advance(50)
    pool = Pool(
        [
            Backend(name="a", description="tcp:10.0.0.1:7000", endpoint=None),  # type: ignore[arg-type]
            Backend(name="b", description="tcp:10.0.0.2:7000", endpoint=None),  # type: ignore[arg-type]
        ],
        clock=clock,
    )
    a, b = pool.backends
    pool.set_state(b, BackendState.DOWN, "health check failed 3 times: refused")
    b.check_failures = 3
    a.connect_time.observe(0.002)
    registry = SessionRegistry(clock)
    ended = registry.add(FakeSession("game", "192.0.2.1:5000", 50.0, "a", 10, 20))
    clock.advance(3)
    registry.remove(ended)
    registry.add(FakeSession("game", "192.0.2.2:5000", 52.0, "a", 1, 2))
    return AdminState(Pools(pool), registry, Counters(), clock=clock, config=config, **kwargs)


def test_histogram_buckets_hold_values_up_to_their_bound() -> None:
    """
    A value equal to a bound is in that bound's bucket (Prometheus's C{le}),
    one above the last bound in the C{+Inf} bucket; the sum adds them.
    """
    histogram = Histogram((1.0, 5.0))
    for value in (0.5, 1.0, 1.5, 5.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.sum == 15.0
    into = histogram.state()
    merge_state(into, Histogram((1.0, 5.0)).state())
    assert into == {"counts": [2, 2, 1], "sum": 15.0}
    with pytest.raises(ValueError):
        merge_state(into, Histogram((1.0,)).state())


def test_session_duration_histogram_in_metrics() -> None:
    """
    A session that ended after 3 s is in the cumulative buckets from
    C{le="5.0"} up, with its count and sum; the live one is not counted yet.
    """
    samples = samples_of(render_metrics(make_state(MemoryReactorClock())))
    name = "gateway_session_duration_seconds"
    assert at(samples, f"{name}_bucket", kind="game", le="1.0") == 0
    assert at(samples, f"{name}_bucket", kind="game", le="5.0") == 1
    assert at(samples, f"{name}_bucket", kind="game", le="+Inf") == 1
    assert at(samples, f"{name}_count", kind="game") == 1
    assert at(samples, f"{name}_sum", kind="game") == 3.0
    assert (
        len([key for key in samples if key[0] == f"{name}_bucket"])
        == len(SESSION_DURATION_BOUNDS) + 1
    )


def test_backend_families_in_metrics() -> None:
    """
    Per backend: the connect time histogram, bytes (ended and live sessions),
    a state gauge with one series per state, its last change (the start
    time for one that never changed) and failed health checks.
    """
    samples = samples_of(render_metrics(make_state(MemoryReactorClock())))
    a = {"backend": "a", "pool": "game"}
    b = {"backend": "b", "pool": "game"}
    connect = "gateway_backend_connect_seconds"
    assert at(samples, f"{connect}_bucket", **a, le="0.001") == 0
    assert at(samples, f"{connect}_bucket", **a, le="0.0025") == 1
    assert at(samples, f"{connect}_count", **b) == 0
    assert at(samples, "gateway_backend_bytes_total", **a, direction="in") == 11
    assert at(samples, "gateway_backend_bytes_total", **a, direction="out") == 22
    states = {
        state: at(samples, "gateway_backend_state", **b, state=state)
        for state in ("up", "down", "draining")
    }
    assert states == {"up": 0, "down": 1, "draining": 0}
    assert at(samples, "gateway_backend_state", **a, state="up") == 1
    assert at(samples, "gateway_backend_state_changed_seconds", **b) == 50.0
    # Never changed: the start time.
    assert at(samples, "gateway_backend_state_changed_seconds", **a) == 53.0
    assert at(samples, "gateway_backend_check_failures_total", **b) == 3


def test_limits_build_start_and_process() -> None:
    """
    The configured limits are gauges (the effective rate burst included),
    gateway_build_info names the versions, the start time is the clock's at
    start, and the process collector reports this process's memory.
    """
    config = GatewayConfig(max_connections=1000, max_per_ip=20, rate_per_ip=4.0)
    clock = MemoryReactorClock()
    clock.advance(1_700_000_000)
    samples = samples_of(render_metrics(make_state(clock, config)))
    assert samples[("gateway_limit_max_connections", ())] == 1000
    assert samples[("gateway_limit_max_per_ip", ())] == 20
    assert samples[("gateway_limit_rate_per_ip", ())] == 4.0
    assert samples[("gateway_limit_rate_burst", ())] == 10.0
    [info] = [key for key in samples if key[0] == "gateway_build_info"]
    assert dict(info[1])["version"] == __version__
    assert set(dict(info[1])) == {"version", "python", "twisted"}
    assert samples[("gateway_start_time_seconds", ())] == 1_700_000_053.0
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0


class FakeWorkers:
    """
    Two worker processes that answer with fixed replies.
    """

    lost = 1

    def __init__(self, replies: list[StatusReply | None]) -> None:
        self._replies = replies

    def status(self, limit: int | None) -> Deferred[list[StatusReply | None]]:
        return succeed(self._replies)

    def describe(self) -> list[dict[str, Any]]:
        return [{"index": i, "state": "running", "restarts": 0} for i in range(len(self._replies))]


def worker_reply(number: int) -> StatusReply:
    """
    A worker's reply as a worker builds it: its own status document's
    counters (one ended game session of 3 s on C{a}, connect time 2 ms).
    """
    state = make_state(MemoryReactorClock())
    return StatusReply(
        number=number,
        live=1,
        counters=status(state, limit=0)["counters"],
        backends={
            b.name: BackendCounts(b.active, b.total, b.failures, b.description)
            for b in state.pool.backends
        },
        sessions=(),
    )


def merged_metrics() -> bytes:
    """
    The acceptor's /metrics with two workers, rendered as the admin
    endpoint does.
    """
    backends = [
        Backend(name=name, description=f"tcp:10.0.0.{i}:7000", endpoint=None)  # type: ignore[arg-type]
        for i, name in enumerate("ab", 1)
    ]
    acceptor = AdminState(
        Pools(Pool(backends)),
        SessionRegistry(),
        Counters(),
        workers=FakeWorkers([worker_reply(1), worker_reply(2)]),
    )
    found: list[bytes] = []
    gather_status(acceptor, 0).addCallback(
        lambda result: found.append(metrics_text(result[0], acceptor))
    )
    [text] = found
    return text


def test_workers_histograms_and_bytes_merged() -> None:
    """
    With worker processes the acceptor adds up their histograms and
    per-backend bytes (two workers' identical counts: twice each).
    """
    samples = samples_of(merged_metrics())
    a = {"backend": "a", "pool": "game"}
    duration = "gateway_session_duration_seconds"
    assert at(samples, f"{duration}_count", kind="game") == 2
    assert at(samples, f"{duration}_sum", kind="game") == 6.0
    assert at(samples, f"{duration}_bucket", kind="game", le="5.0") == 2
    assert at(samples, f"{duration}_bucket", kind="game", le="1.0") == 0
    assert at(samples, "gateway_backend_connect_seconds_count", **a) == 2
    assert at(samples, "gateway_backend_bytes_total", **a, direction="in") == 22
    assert at(samples, "gateway_workers_running") == 2


def dashboard_metrics() -> set[str]:
    """
    The metric names the Grafana dashboard's queries use.
    """
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query") and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert exprs, "the dashboard has no queries"
    return {
        name for expr in exprs for name in re.findall(r"\b(?:gateway|process)_[a-z_]+\b", expr)
    }


def test_grafana_dashboard_queries_existing_metrics() -> None:
    """
    contrib/grafana/gateway-dashboard.json is valid JSON and every metric its
    queries name is a sample name /metrics exposes (with workers, limits
    and every histogram present).
    """
    exposed = {name for name, _ in samples_of(merged_metrics())}
    config_state = make_state(MemoryReactorClock(), GatewayConfig(max_connections=10))
    exposed |= {name for name, _ in samples_of(render_metrics(config_state))}
    # The waiting room's families are there when a room is open.
    clock = MemoryReactorClock()
    waiting = Pool([])
    waiting.room.configure(RoomSettings(size=1), clock)
    queued = AdminState(Pools(waiting), SessionRegistry(), Counters(), clock=clock)
    exposed |= {name for name, _ in samples_of(render_metrics(queued))}
    # The cluster's families are there with --cluster.
    clustered = make_state(MemoryReactorClock(), cluster=ClusterView(three_nodes(0.0)))
    exposed |= {name for name, _ in samples_of(render_metrics(clustered))}
    used = dashboard_metrics()
    assert {"gateway_backend_state", "gateway_session_duration_seconds_bucket"} <= used
    assert {"gateway_queue_length", "gateway_queue_wait_seconds_bucket"} <= used
    assert {"gateway_cluster_up", "gateway_cluster_nodes"} <= used
    assert used - exposed == set()


def test_cluster_families() -> None:
    """
    With a cluster, /metrics has gateway_cluster_up (1 while Redis answers,
    0 once it does not), the live nodes as last read, the count of failed
    Redis commands and of admissions decided alone (and whether they are
    now); without one, no gateway_cluster_ family at all.
    """
    clock = MemoryReactorClock()
    view = ClusterView(three_nodes(1_700_000_000.0), failures=7)
    state = make_state(clock, cluster=view)
    samples = samples_of(render_metrics(state))
    assert samples[("gateway_cluster_up", ())] == 1
    assert samples[("gateway_cluster_nodes", ())] == 3
    assert samples[("gateway_cluster_failures_total", ())] == 7
    assert samples[("gateway_cluster_local_admissions_total", ())] == 0
    assert samples[("gateway_cluster_limits_alone", ())] == 0

    view.redis_up = False
    view.nodes = view.nodes[:1]
    view.failures = 9
    view.local_admissions, view.limits_alone = 12, True
    samples = samples_of(render_metrics(state))
    assert samples[("gateway_cluster_up", ())] == 0
    assert samples[("gateway_cluster_nodes", ())] == 1
    assert samples[("gateway_cluster_failures_total", ())] == 9
    assert samples[("gateway_cluster_local_admissions_total", ())] == 12
    assert samples[("gateway_cluster_limits_alone", ())] == 1

    assert not [name for name, _ in samples if name == "gateway_cluster_affinity_total"]
    view.affinity = {"ttl": 3600.0, "used": 4, "overridden": 3, "none": 2, "failed": 1}
    samples = samples_of(render_metrics(state))
    assert {
        result: samples[("gateway_cluster_affinity_total", (("result", result),))]
        for result in ("used", "overridden", "none", "failed")
    } == {"used": 4, "overridden": 3, "none": 2, "failed": 1}

    alone = samples_of(render_metrics(make_state(MemoryReactorClock())))
    assert not [name for name, _ in alone if name.startswith("gateway_cluster_")]


def test_cluster_families_with_workers() -> None:
    """
    With worker processes too, the acceptor's /metrics has the cluster's
    families (its own membership: one set, not one per worker).
    """
    backends = [Backend(name="a", description="tcp:10.0.0.1:7000", endpoint=None)]  # type: ignore[arg-type]
    acceptor = AdminState(
        Pools(Pool(backends)),
        SessionRegistry(),
        Counters(),
        workers=FakeWorkers([worker_reply(1), worker_reply(2)]),
        cluster=ClusterView(three_nodes(0.0), redis_up=False, failures=2),
    )
    found: list[bytes] = []
    gather_status(acceptor, 0).addCallback(
        lambda result: found.append(metrics_text(result[0], acceptor))
    )
    [text] = found
    samples = samples_of(text)
    assert samples[("gateway_cluster_up", ())] == 0
    assert samples[("gateway_cluster_nodes", ())] == 3
    assert samples[("gateway_cluster_failures_total", ())] == 2
