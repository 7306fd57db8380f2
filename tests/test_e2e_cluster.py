"""
The cluster end to end: a real C{redis-server} (L{tests.redisserver}) and
gateway nodes started the way users start them (C{twistd -n gateway
--cluster URL}), fronts on 127.0.0.1, 127.0.0.2 and 127.0.0.3 and each
admin endpoint on 127.0.1.N, read and driven as an operator does.

Times are printed, never asserted: waits are bounded by L{wait_for}.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.redisserver import RedisServer, require_redis
from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    banner_then_echo,
    closed_port,
    connect,
    start_gateway,
)
from tests.support import wait_for as wait_until

TTL = 3.0
"""--cluster-ttl of these nodes: a beat every second."""


def node(
    redis: RedisServer,
    number: int,
    tmp_path: Path,
    *backends: Backend,
    extra: tuple[str, ...] = (),
    reactor: str | None = None,
) -> GatewayProcess:
    """
    Node C{number}: its front on 127.0.0.N, its admin endpoint on 127.0.1.N.
    """
    folder = tmp_path / f"n{number}"
    folder.mkdir(exist_ok=True)
    args = [
        "--cluster",
        redis.url,
        "--node-name",
        f"n{number}",
        "--cluster-ttl",
        str(TTL),
        "--health-interval",
        "0",
        "--admin",
        f"tcp:0:interface=127.0.1.{number}",
        *extra,
    ]
    for backend in backends:
        args += ["--backend", backend.endpoint]
    return GatewayProcess(args, folder, host=f"127.0.0.{number}", reactor=reactor)


def status(gateway: GatewayProcess, number: int, scope: str = "cluster") -> dict[str, Any]:
    """
    Node C{number}'s C{/status.json?scope=...}.
    """
    url = f"{admin_url(gateway, f'127.0.1.{number}')}/status.json?scope={scope}"
    with urllib.request.urlopen(url, timeout=DEADLINE) as reply:
        document: dict[str, Any] = json.load(reply)
    return document


def metrics(gateway: GatewayProcess, number: int) -> dict[str, float]:
    """
    Node C{number}'s C{/metrics}: the cluster's samples, by name.
    """
    url = f"{admin_url(gateway, f'127.0.1.{number}')}/metrics"
    with urllib.request.urlopen(url, timeout=DEADLINE) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("gateway_cluster_")
    }


def post(gateway: GatewayProcess, number: int, path: str) -> int:
    """
    POST to node C{number}'s admin endpoint; the status code.
    """
    url = f"{admin_url(gateway, f'127.0.1.{number}')}{path}"
    request = urllib.request.Request(url, method="POST")
    with urllib.request.urlopen(request, timeout=DEADLINE) as reply:
        code: int = reply.status
    return code


def state_of(gateway: GatewayProcess, number: int, backend: str) -> str:
    """
    The state of C{backend} as node C{number} sees it.
    """
    for entry in status(gateway, number, "node")["backends"]:
        if entry["name"] == backend:
            state: str = entry["state"]
            return state
    raise AssertionError(f"no backend {backend} on node {number}")


def names(gateway: GatewayProcess, number: int) -> list[str]:
    """
    The live nodes node C{number} lists.
    """
    return [entry["name"] for entry in status(gateway, number)["nodes"]]


def wait_for(predicate: Any, what: str) -> float:
    """
    Wait (bounded) and say how long it took.
    """
    start = time.monotonic()
    wait_until(predicate, what)
    took = time.monotonic() - start
    print(f"{what}: {took:.2f} s")
    return took


def test_nodes_share_membership_and_operators_actions(tmp_path: Path) -> None:
    """
    Three nodes on one Redis: each lists all three (scope=cluster); a drain
    on node 1 reaches nodes 2 and 3, whose new sessions then go to the
    other backend; a node started after the drain applies it; an enable on
    node 2 reaches the others; a node killed with SIGKILL leaves the list
    once its entry is older than the TTL.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        a = stack.enter_context(Backend(banner_then_echo))
        b = stack.enter_context(Backend(banner_then_echo))
        n1 = stack.enter_context(node(redis, 1, tmp_path, a, b))
        n2 = stack.enter_context(node(redis, 2, tmp_path, a, b))
        wait_for(lambda: names(n1, 1) == ["n1", "n2"], "two nodes listed")
        summary = status(n1, 1)["cluster"]
        assert summary["name"] == "gateway" and summary["node"] == "n1"
        assert summary["redis_up"] is True
        # The node's own status.json says it is in a cluster (the dashboard
        # then asks for scope=cluster); /metrics counts the nodes it sees.
        assert status(n1, 1, "node")["cluster"]["node"] == "n1"
        assert "nodes" not in status(n1, 1, "node")
        assert metrics(n1, 1)["gateway_cluster_nodes"] == 2

        assert post(n1, 1, f"/backends/{a.endpoint}/drain") == 200
        wait_for(lambda: state_of(n2, 2, a.endpoint) == "draining", "the drain on node 2")
        for _ in range(4):
            with connect(n2.port, "127.0.0.2") as sock:
                assert sock.recv(64).startswith(b"HELLO")
        assert a.connections == 0 and b.connections == 4

        n3 = stack.enter_context(node(redis, 3, tmp_path, a, b))
        wait_for(lambda: state_of(n3, 3, a.endpoint) == "draining", "a later node's drain")
        wait_for(lambda: names(n3, 3) == ["n1", "n2", "n3"], "three nodes listed")
        assert [e["self"] for e in status(n3, 3)["nodes"]] == [False, False, True]

        assert post(n2, 2, f"/backends/{a.endpoint}/enable") == 200
        wait_for(lambda: state_of(n1, 1, a.endpoint) == "up", "the enable on node 1")
        wait_for(lambda: state_of(n3, 3, a.endpoint) == "up", "the enable on node 3")

        os.kill(n2.pid, signal.SIGKILL)
        took = wait_for(lambda: names(n1, 1) == ["n1", "n3"], "the killed node gone")
        print(f"(TTL {TTL} s)")
        assert took > 0


def test_scope_cluster_needs_a_cluster(tmp_path: Path) -> None:
    """
    Without --cluster, scope=cluster is a clear 400; a bad scope too.
    """
    with Backend(banner_then_echo) as a:
        args = ["--backend", a.endpoint, "--admin", "tcp:0:interface=127.0.1.1"]
        with GatewayProcess(args, tmp_path) as gateway:
            base = admin_url(gateway, "127.0.1.1")
            for query, message in (
                ("scope=cluster", "scope=cluster needs --cluster"),
                ("scope=everything", "scope must be node or cluster"),
            ):
                with pytest.raises(urllib.error.HTTPError) as raised:
                    urllib.request.urlopen(f"{base}/status.json?{query}", timeout=DEADLINE)
                assert raised.value.code == 400
                assert json.load(raised.value) == {"error": message}


def test_redis_away_at_start_and_back(tmp_path: Path) -> None:
    """
    A node whose Redis is not there at start still starts and serves (one
    log line says Redis does not answer); once Redis is up it joins, and an
    operator's drain made while Redis was away stays local to that node.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        redis.stop()
        a = stack.enter_context(Backend(banner_then_echo))
        n1 = stack.enter_context(node(redis, 1, tmp_path, a))
        with connect(n1.port, "127.0.0.1") as sock:
            assert sock.recv(64).startswith(b"HELLO")
        wait_for(lambda: "cannot reach Redis at" in n1.log(), "the log line about Redis")
        assert status(n1, 1)["cluster"]["redis_up"] is False
        away = metrics(n1, 1)
        assert away["gateway_cluster_up"] == 0
        assert away["gateway_cluster_failures_total"] >= 1
        redis.start()
        wait_for(lambda: status(n1, 1)["cluster"]["redis_up"] is True, "Redis back")
        wait_for(lambda: names(n1, 1) == ["n1"], "the node listed")
        back = metrics(n1, 1)
        assert back["gateway_cluster_up"] == 1
        assert back["gateway_cluster_nodes"] == 1
        assert back["gateway_cluster_failures_total"] >= away["gateway_cluster_failures_total"]
        assert "is back" in n1.log() or "reached" in n1.log()


def start_with(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """
    A gateway started with C{args} that is expected to stop at start-up.
    """
    return start_gateway(tmp_path, *args, logfile=tmp_path / "refused.log")


def test_a_refused_password_at_start(tmp_path: Path) -> None:
    """
    A wrong password is one clear line at start, never showing a password:
    with --cluster-required the gateway does not start (exit status 2);
    without, it starts with its own state and says why in its log.
    """
    require_redis()
    with (
        RedisServer(tmp_path, password="right") as redis,
        Backend(banner_then_echo) as a,
    ):
        url = redis.url.replace("redis://", "redis://:wrong-secret@")
        refused = start_with(
            tmp_path, "--backend", a.endpoint, "--cluster", url, "--node-name", "n1",
            "--cluster-required",
        )  # fmt: skip
        assert refused.returncode == 2
        log = (tmp_path / "refused.log").read_text()
        assert "listening on" not in log  # refused before anything listens
        assert (
            f"gateway: error: --cluster-required: Redis at redis://:***@127.0.0.1:{redis.port}/0 "
            "refuses the password: WRONGPASS invalid username-password pair or user is disabled\n"
        ) in log
        assert "Traceback" not in log and "wrong-secret" not in log
        args = ["--cluster", url, "--node-name", "n1", "--backend", a.endpoint]
        with GatewayProcess(args, tmp_path) as gateway:
            with connect(gateway.port, "127.0.0.1") as sock:
                assert sock.recv(64).startswith(b"HELLO")
            assert "refuses the password: WRONGPASS" in gateway.log()
            assert "wrong-secret" not in gateway.log()


def test_an_unreachable_redis_with_cluster_required(tmp_path: Path) -> None:
    """
    --cluster-required and nothing listening at the URL: one line, exit 2.
    """
    with Backend(banner_then_echo) as a:
        port = closed_port()
        url = f"redis://127.0.0.1:{port}/0"
        refused = start_with(
            tmp_path, "--backend", a.endpoint, "--cluster", url, "--node-name", "n1",
            "--cluster-required",
        )  # fmt: skip
        assert refused.returncode == 2
        log = (tmp_path / "refused.log").read_text()
        assert (
            f"gateway: error: --cluster-required: cannot reach Redis at {url}: "
            "Connection refused\n"
        ) in log
        assert "Traceback" not in log


def test_importing_the_assembly_installs_no_reactor() -> None:
    """
    txredisapi imports the reactor when it is loaded: the gateway loads it
    only once it assembles a cluster node, after twistd's -r chose one.
    """
    code = (
        "import sys, gateway.process.assemble, gateway.cluster.probe; "
        "print('twisted.internet.reactor' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


def test_a_node_on_the_uvloop_reactor(tmp_path: Path) -> None:
    """
    Under `twistd -r uvloop` a node joins its cluster as under the default
    reactor.
    """
    require_redis()
    with (
        RedisServer(tmp_path) as redis,
        Backend(banner_then_echo) as a,
        node(redis, 1, tmp_path, a, reactor="uvloop") as n1,
    ):
        wait_for(lambda: names(n1, 1) == ["n1"], "the node listed")
        assert status(n1, 1)["cluster"]["redis_up"] is True


def test_redis_going_away_and_coming_back(tmp_path: Path) -> None:
    """
    Redis stopped under two running nodes: both say so once, keep serving,
    and a drain made meanwhile stays on its node; once Redis is back they
    say so, list each other again, and a drain reaches the other node.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        a = stack.enter_context(Backend(banner_then_echo))
        b = stack.enter_context(Backend(banner_then_echo))
        n1 = stack.enter_context(node(redis, 1, tmp_path, a, b))
        n2 = stack.enter_context(node(redis, 2, tmp_path, a, b))
        wait_for(lambda: names(n1, 1) == ["n1", "n2"], "two nodes listed")
        redis.stop()
        wait_for(lambda: "does not answer" in n1.log(), "node 1 saying Redis is away")
        wait_for(lambda: status(n2, 2)["cluster"]["redis_up"] is False, "node 2 seeing it")
        with connect(n2.port, "127.0.0.2") as sock:
            assert sock.recv(64).startswith(b"HELLO")
        assert post(n1, 1, f"/backends/{a.endpoint}/drain") == 200
        assert state_of(n1, 1, a.endpoint) == "draining"
        redis.start()
        wait_for(lambda: f"{redis.port}/0 is back" in n1.log(), "node 1 saying Redis is back")
        wait_for(lambda: status(n2, 2)["cluster"]["redis_up"] is True, "node 2 seeing it")
        assert state_of(n2, 2, a.endpoint) == "up"  # made while Redis was away
        assert post(n1, 1, f"/backends/{b.endpoint}/drain") == 200
        wait_for(lambda: state_of(n2, 2, b.endpoint) == "draining", "the later drain on node 2")
        assert n1.log().count("does not answer") == 1


def test_the_clusters_children_list(tmp_path: Path) -> None:
    """
    scope=cluster on any node lists every node's sessions, each with its
    node: a session through node 2 shows on node 1 (as of node 2's last
    beat), and is gone from it once it ended and node 2 beat again.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        a = stack.enter_context(Backend(banner_then_echo))
        n1 = stack.enter_context(node(redis, 1, tmp_path, a))
        n2 = stack.enter_context(node(redis, 2, tmp_path, a))
        wait_for(lambda: names(n1, 1) == ["n1", "n2"], "two nodes listed")

        def listed(number: int, gateway: GatewayProcess) -> list[tuple[str, str]]:
            return [
                (entry["node"], entry["kind"])
                for entry in status(gateway, number)["cluster_sessions"]
                if entry["kind"] == "game"
            ]

        with connect(n2.port, "127.0.0.2") as sock:
            assert sock.recv(64).startswith(b"HELLO")
            wait_for(lambda: listed(1, n1) == [("n2", "game")], "node 2's session on node 1")
            assert listed(2, n2) == [("n2", "game")]
            entry = status(n1, 1)["cluster_sessions"][0]
            assert entry["backend"] == a.endpoint and entry["state"] in ("relaying", "splicing")
        wait_for(lambda: listed(1, n1) == [], "the ended session gone from node 1")
