"""
A cluster member without Redis, for the tests of what the admin endpoint
shows of a cluster (C{status.json}, C{/metrics}, the dashboard):
L{ClusterView} implements L{gateway.ops.status.ClusterMember} with the
nodes, Redis' state and the failure count the test gives it, as a
L{gateway.cluster.node.ClusterNode} would report them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClusterView", "three_nodes"]


class ClusterView:
    """
    A node's view of its cluster, set by the test.

    @ivar redis_up: whether Redis answers (what C{summary} reports).
    @ivar failures: Redis commands failed so far.
    @ivar local_admissions: admissions decided without Redis so far.
    @ivar limits_alone: whether admissions are decided without Redis now.
    @ivar nodes: the live nodes as C{document} lists them.
    @ivar documents: how many times the nodes were asked for.
    @ivar actions: the operators' actions passed on, as (backend, action, peer).
    """

    def __init__(
        self,
        nodes: list[dict[str, Any]],
        *,
        node: str = "n1",
        redis_up: bool = True,
        failures: int = 0,
        ttl: float = 15.0,
        affinity: dict[str, Any] | None = None,
        local_admissions: int = 0,
        limits_alone: bool = False,
    ) -> None:
        self.node = node
        self.local_admissions = local_admissions
        self.limits_alone = limits_alone
        self.affinity = affinity
        self.nodes = nodes
        self.redis_up = redis_up
        self.failures = failures
        self.ttl = ttl
        self.documents = 0
        self.actions: list[tuple[str, str, str]] = []

    def summary(self) -> dict[str, Any]:
        """
        The cluster as L{gateway.cluster.node.ClusterNode.summary} gives it.
        """
        return {
            "name": "eu",
            "node": self.node,
            "redis": "redis://:***@127.0.0.1:6379/0",
            "redis_up": self.redis_up,
            "ttl": self.ttl,
            "failures": self.failures,
            "local_admissions": self.local_admissions,
            "limits_alone": self.limits_alone,
            "max_sessions": 0,
            "sessions": 0,
            "local_seats": 0,
            "seats_alone": False,
            "affinity": self.affinity,
        }

    def sessions(self) -> list[dict[str, Any]]:
        """
        No sessions: the dashboard's view does not list them.
        """
        return []

    def document(self) -> list[dict[str, Any]]:
        """
        The live nodes, as set.
        """
        self.documents += 1
        return self.nodes

    def operator_action(self, backend: str, action: str, peer: str) -> None:
        """
        Kept for the test to read.
        """
        self.actions.append((backend, action, peer))


def three_nodes(now: float) -> list[dict[str, Any]]:
    """
    Three live nodes at time C{now}, this one (C{n1}) first; C{n3} missed
    its last two heartbeats (age 12 s of a 15 s TTL).
    """

    def entry(name: str, sessions: int, started: float, age: float) -> dict[str, Any]:
        return {
            "name": name,
            "address": f"tcp:{name}.example:7000",
            "started": started,
            "sessions": sessions,
            "heartbeat": now - age,
            "age": age,
            "self": name == "n1",
        }

    return [
        entry("n1", 3, now - 90.0, 1.0),
        entry("n2", 5, now - 4000.0, 2.5),
        entry("n3", 0, now - 30.0, 12.0),
    ]
