"""
The admin endpoint: the registry of live sessions, /status.json and /metrics
(unit tests), and the endpoint on a real gateway (end to end).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import gateway
from gateway.front.limits import Refusal
from gateway.ops.metrics import render_metrics
from gateway.ops.registry import Counters, SessionRegistry
from gateway.ops.status import AdminState, status
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.pools import Pools
from tests.clusterview import ClusterView, three_nodes
from tests.support import Backend as ServerBackend
from tests.support import (
    GatewayProcess,
    admin_url,
    connect,
    echo,
    recv_exactly,
    wait_for,
)


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


def make_state() -> AdminState:
    """
    Two backends (one down), two live sessions, some counters.
    """
    pool = Pool(
        [
            Backend(name="a", description="tcp:10.0.0.1:7000", endpoint=None),  # type: ignore[arg-type]
            Backend(name="b", description="tcp:10.0.0.2:7000", endpoint=None),  # type: ignore[arg-type]
        ]
    )
    a, b = pool.backends
    a.active, a.total, a.failures = 1, 5, 2
    pool.set_state(b, BackendState.DOWN, "health check failed 3 times: refused")
    registry = SessionRegistry()
    registry.add(FakeSession("game", "192.0.2.1:5000", 100.0, "a", 10, 20))
    gone = registry.add(FakeSession("http", "192.0.2.2:6000", 101.0, None, 30, 40))
    registry.remove(gone)
    registry.add(FakeSession("http", "192.0.2.3:6001", 102.0, None, 1, 2))
    counters = Counters()
    counters.accepted = 7
    counters.refused[Refusal.RATE] = 3
    return AdminState(Pools(pool), registry, counters)


def test_status_document() -> None:
    """
    /status.json has the contract's backends, sessions and counters, with
    the live sessions' byte counts read now and ended sessions in the totals.
    """
    document = status(make_state())
    assert document["backends"] == [
        {
            "name": "a",
            "pool": "game",
            "endpoint": "tcp:10.0.0.1:7000",
            "state": "up",
            "active": 1,
            "total": 5,
            "failures": 2,
            "weight": 1,
            "max_sessions": 0,
            "elsewhere": 0,
            "reason": "",
            "check_failures": 0,
            "changed": 0.0,
        },
        {
            "name": "b",
            "pool": "game",
            "endpoint": "tcp:10.0.0.2:7000",
            "state": "down",
            "active": 0,
            "total": 0,
            "failures": 0,
            "weight": 1,
            "max_sessions": 0,
            "elsewhere": 0,
            "reason": "health check failed 3 times: refused",
            "check_failures": 0,
            "changed": 0.0,
        },
    ]
    assert document["sessions"] == [
        {
            "id": 1,
            "kind": "game",
            "peer": "192.0.2.1:5000",
            "backend": "a",
            "started": 100.0,
            "bytes_in": 10,
            "bytes_out": 20,
        },
        {
            "id": 3,
            "kind": "http",
            "peer": "192.0.2.3:6001",
            "backend": None,
            "started": 102.0,
            "bytes_in": 1,
            "bytes_out": 2,
        },
    ]
    counters = document["counters"]
    assert counters["accepted"] == 7
    assert counters["refused"]["rate"] == 3 and counters["refused"]["total-cap"] == 0
    assert counters["sessions"] == {"game": 1, "websocket": 0, "http": 2}
    assert counters["active_sessions"] == {"game": 1, "websocket": 0, "http": 1}
    assert (counters["bytes_in"], counters["bytes_out"]) == (41, 62)
    assert counters["backend_failures"] == 2
    assert counters["health_transitions"] == 1
    json.dumps(document)


def test_status_names_the_gateway() -> None:
    """
    /status.json says which gateway answers: its version (the package's,
    which C{gateway_build_info} shows too) and the machine's host name.
    """
    document = status(make_state())
    assert document["version"] == gateway.__version__
    assert document["host"] == socket.gethostname()


def test_status_carries_the_cluster_summary() -> None:
    """
    With a cluster, the node's own status.json carries the cluster as this
    node sees it (name, node, Redis' masked URL and state, TTL, failures,
    the shared affinity: None when off), small: the nodes are only listed
    with scope=cluster.  Without a cluster there is no C{cluster} key.
    """
    plain = make_state()
    assert "cluster" not in status(plain)
    view = ClusterView(three_nodes(0.0), failures=4)
    state = AdminState(plain.pool, plain.registry, plain.counters, cluster=view)
    document = status(state)
    assert document["cluster"] == {
        "name": "eu",
        "node": "n1",
        "redis": "redis://:***@127.0.0.1:6379/0",
        "redis_up": True,
        "ttl": 15.0,
        "failures": 4,
        "local_admissions": 0,
        "limits_alone": False,
        "max_sessions": 0,
        "sessions": 0,
        "local_seats": 0,
        "seats_alone": False,
        "affinity": None,
    }
    assert "nodes" not in document
    assert view.documents == 0


def test_metrics_parse_with_prometheus_client() -> None:
    """
    /metrics is valid Prometheus text (parsed by prometheus_client's own
    parser), every name starts with gateway_ (or process_, prometheus_client's
    process collector), and labels are bounded (no client address appears).
    """
    text = render_metrics(make_state()).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert all(name.startswith(("gateway_", "process_")) for name in families)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    assert samples[("gateway_connections_accepted_total", ())] == 7
    assert samples[("gateway_connections_refused_total", (("reason", "rate"),))] == 3
    assert samples[("gateway_backend_up", (("backend", "a"), ("pool", "game")))] == 1
    assert samples[("gateway_backend_up", (("backend", "b"), ("pool", "game")))] == 0
    assert samples[("gateway_sessions_active", (("kind", "game"),))] == 1
    assert samples[("gateway_bytes_total", (("direction", "in"),))] == 41
    assert "192.0.2" not in text


@given(st.lists(st.sampled_from(["add", "remove", "remove-again"]), max_size=60))
def test_registry_adds_and_removes_exactly_once(steps: list[str]) -> None:
    """
    Whatever the order of adds and (repeated) removals, the registry holds
    exactly the sessions added and not yet removed, ids are never reused,
    and an ended session's bytes count once in the totals.
    """
    registry = SessionRegistry()
    live: list[int] = []
    removed: list[int] = []
    seen: set[int] = set()
    for step in steps:
        if step == "add":
            number = registry.add(FakeSession("game", "p", 0.0, None, 1, 2))
            assert number not in seen
            seen.add(number)
            live.append(number)
        elif step == "remove" and live:
            number = live.pop(0)
            registry.remove(number)
            removed.append(number)
        elif step == "remove-again" and removed:
            registry.remove(removed[-1])
    assert [number for number, _ in registry.items()] == live
    assert len(registry) == len(live)
    assert registry.ended_bytes_in == len(removed)
    assert registry.ended_bytes_out == 2 * len(removed)


def test_admin_endpoint_end_to_end(tmp_path: Path) -> None:
    """
    A real gateway with --admin on another address: /status.json lists the
    live game session (with its backend and byte counts) and the backends,
    /metrics parses, and the public front does not serve either.
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(
            [
                "--backend",
                backend.endpoint,
                "--admin",
                "tcp:0:interface=127.0.0.3",
                "--sniff-timeout",
                "0.2",
            ],
            tmp_path,
        ) as gateway,
    ):
        admin = admin_url(gateway)
        game = connect(gateway.port)
        game.sendall(b"hello\n")
        assert recv_exactly(game, 6) == b"hello\n"
        document = json.loads(urllib.request.urlopen(admin + "/status.json", timeout=10).read())
        [session] = [s for s in document["sessions"] if s["kind"] == "game"]
        assert session["backend"] == backend.endpoint
        assert (session["bytes_in"], session["bytes_out"]) == (6, 6)
        assert session["peer"] == f"127.0.0.1:{game.getsockname()[1]}"
        assert [b["state"] for b in document["backends"]] == ["up"]
        metrics = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
        names = {family.name for family in text_string_to_metric_families(metrics)}
        assert "gateway_sessions_active" in names
        front = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
        front.sendall(b"GET /status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert front.recv(100).startswith(b"HTTP/1.1 404")
        front.close()
        game.close()
        try:
            urllib.request.urlopen(admin + "/nothing", timeout=10)
            raise AssertionError("expected a 404")
        except urllib.error.HTTPError as error:
            assert error.code == 404


def _post(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, method="POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_drain_with_token_and_access_log_end_to_end(tmp_path: Path) -> None:
    """
    On a real gateway with an admin token and --access-log: a drain without
    the token is a 401 (logged) and changes nothing; with it, the backend is
    draining, its live session goes on, and new sessions go to the other
    backend; enable brings it back.  Every finished session and HTTP request
    is one JSON line in the access log file and one event in twistd's log.
    """
    token = "e2e-admin-token-0123456789"
    access = tmp_path / "access.jsonl"
    site = tmp_path / "www"
    site.mkdir()
    (site / "index.html").write_text("<p>hello</p>")
    with (
        ServerBackend(echo) as first,
        ServerBackend(echo) as second,
        GatewayProcess(
            [
                "--backend",
                first.endpoint,
                "--backend",
                second.endpoint,
                "--admin",
                "tcp:0:interface=127.0.0.3",
                "--admin-token",
                token,
                "--access-log",
                str(access),
                "--http-root",
                str(site),
                "--sniff-timeout",
                "0.2",
                # No probes: they would count as backend connections.
                "--health-interval",
                "0",
            ],
            tmp_path,
        ) as gateway,
    ):
        admin = admin_url(gateway)
        name = urllib.parse.quote(first.endpoint, safe="")
        kept = connect(gateway.port)
        kept.sendall(b"one\n")
        assert recv_exactly(kept, 4) == b"one\n"
        assert first.connections == 1
        code, body = _post(f"{admin}/backends/{name}/drain")
        assert (code, body) == (401, {"error": "no admin token given"})
        code, body = _post(f"{admin}/backends/{name}/drain", "wrong-token-wrong-token")
        assert code == 401
        wait_for(lambda: "refused for 127.0.0.1: wrong admin token" in gateway.log(), "401 log")
        code, body = _post(f"{admin}/backends/{name}/drain", token)
        assert code == 200 and body["backend"]["state"] == "draining"  # type: ignore[index]
        for _ in range(3):
            game = connect(gateway.port)
            game.sendall(b"x\n")
            assert recv_exactly(game, 2) == b"x\n"
            game.close()
        assert (first.connections, second.connections) == (1, 3)
        kept.sendall(b"still\n")
        assert recv_exactly(kept, 6) == b"still\n"
        kept.close()
        code, body = _post(f"{admin}/backends/{name}/enable", token)
        assert code == 200 and body["backend"]["state"] == "up"  # type: ignore[index]
        page = urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/", timeout=10).read()
        assert page == b"<p>hello</p>"

        def lines() -> list[dict[str, object]]:
            return [json.loads(line) for line in access.read_text().splitlines()]

        wait_for(lambda: len(lines()) == 5, "five access lines")
        events = lines()
        games = [e for e in events if e["kind"] == "game"]
        assert sorted((str(e["backend"]), e["bytes_in"], e["bytes_out"]) for e in games) == sorted(
            [(first.endpoint, 10, 10)] + [(second.endpoint, 2, 2)] * 3
        )
        assert all(e["reason"] == "client-closed" for e in games)
        [http] = [e for e in events if e["kind"] == "http"]
        assert (http["method"], http["path"], http["status"], http["bytes_out"]) == (
            "GET",
            "/",
            200,
            len(b"<p>hello</p>"),
        )
        assert gateway.log().count("gateway.access") == 5
