"""
This gateway as a node of a cluster (C{--cluster}): L{ClusterNode}.

Every node with the same Redis and the same C{--cluster-name} is one
cluster.  A node:

  - B{heartbeats} every third of C{--cluster-ttl}: its entry in the
    cluster's hash of nodes (C{NAME:nodes}, field: the node's name, value:
    a JSON object with its address, start time, live sessions and the time
    of the beat), then reads the hash back; entries whose beat is older than
    the TTL are of dead nodes, dropped from the list and from the hash.  A
    node that stops cleanly removes its own entry.
  - B{shares the per-address limits}: C{--max-per-ip} and C{--rate-per-ip}
    count a client's connections through every node together
    (L{gateway.cluster.admission.SharedLimits}, used by the fronts' address
    gates); its counts are kept alive, or written again, with each beat.
  - B{shares the backends' seats}: a backend's C{max-sessions} counts its
    sessions through every node, and C{--cluster-max-sessions} caps them
    all (L{gateway.cluster.seats.SharedSeats}, the pools' seat store).
  - B{shares operators' actions}: a drain or an enable on its admin
    endpoint is published on the cluster's channel (C{NAME:ops}) and kept in
    the hash of drained backends (C{NAME:drained}), so every node applies it
    within a round trip and a node that starts later (or reconnects after
    Redis was away) applies the drains in force.  Health checks stay per
    node: each node checks the backends it uses.

Redis away changes nothing on the data path: beats are skipped (and the
nodes list kept as last read), an action stays local, and the link logs when
Redis goes and comes back (L{gateway.cluster.link.RedisLink}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.cluster.admission import SharedLimits
from gateway.cluster.affinity import SharedAffinity
from gateway.cluster.link import RedisDownError, RedisLink
from gateway.cluster.probe import check_redis
from gateway.cluster.seats import SharedSeats
from gateway.config import ClusterSpec
from gateway.ops.registry import SessionRegistry
from gateway.ops.status import session_entry
from gateway.pool.backend import BackendState
from gateway.pool.pools import Pools
from gateway.process.errors import StartupError

__all__ = ["ClusterNode"]

START_CHECK_TIMEOUT = 2.0
"""Seconds each step of the start-up check of Redis may take."""

SESSIONS_SHARED = 1000
"""The most sessions a node shares in the cluster's children list each beat."""

OPERATIONS_TIMEOUT = 2.0
"""Seconds a heartbeat or an operator's action may wait for Redis (they are
off the data path; --cluster-timeout is for admissions)."""


class ClusterNode(MultiService):
    """
    This node's membership and shared operations (see the module's
    docstring).

    @ivar nodes: the live nodes as last read, this one included: name to
        its entry (C{address}, C{started}, C{sessions}, C{heartbeat}).
    @ivar affinity: the shared affinity, unless C{--affinity-ttl} is 0.
    """

    _log = Logger()

    def __init__(
        self,
        spec: ClusterSpec,
        reactor: Any,
        pools: Pools,
        registry: SessionRegistry,
        *,
        ttl: float,
        timeout: float,
        address: str,
        started: float,
        required: bool = False,
        affinity_ttl: float = 0.0,
        max_sessions: int = 0,
    ) -> None:
        """
        @param ttl: seconds after which a node that stopped beating is gone.
        @param timeout: seconds an admission waits for Redis.
        @param address: the node's front, as operators reach it.
        @param started: when the node started (wall clock).
        @param required: refuse to start when Redis cannot be reached or
            refuses the password (C{--cluster-required}); else say so in one
            line and start with this node's own state.
        @param affinity_ttl: seconds a session key's backend is remembered
            (0: affinity is not shared).
        @param max_sessions: the cluster's cap on game sessions (0: none).
        """
        super().__init__()
        self.spec = spec
        self._reactor = reactor
        self._pools = pools
        self._registry = registry
        self.ttl = ttl
        self._address = address
        self._started = started
        self._required = required
        self._checked = False
        self._nodes_key = f"{spec.name}:nodes"
        self._drained_key = f"{spec.name}:drained"
        self._channel = f"{spec.name}:ops"
        self.link = RedisLink(
            spec,
            reactor,
            timeout=timeout,
            channel=self._channel,
            deliver=self._message,
            subscribed=self._resync,
        )
        self.link.setServiceParent(self)
        self.affinity = (
            SharedAffinity(self.link, spec.name, ttl=affinity_ttl, timeout=timeout)
            if affinity_ttl > 0
            else None
        )
        self.nodes: dict[str, dict[str, Any]] = {}
        self.limits = SharedLimits(
            self.link,
            reactor,
            cluster=spec.name,
            node=spec.node,
            ttl=ttl,
            live_nodes=lambda: len(self.nodes),
        )
        self.seats = SharedSeats(
            self.link,
            reactor,
            pools,
            cluster=spec.name,
            node=spec.node,
            ttl=ttl,
            cap=max_sessions,
            live_nodes=lambda: len(self.nodes),
        )
        # The other nodes' sessions, as they last shared them.
        self._shared: dict[str, list[dict[str, Any]]] = {}
        self._synced = False
        # Backends this node drains because another node's operator did.
        self._remote_drains: set[str] = set()
        self._beats = LoopingCall(self._beat)
        self._beats.clock = reactor

    @property
    def name(self) -> str:  # type: ignore[override]
        """
        This node's name.
        """
        return self.spec.node

    @override
    def privilegedStartService(self) -> None:
        # Before the fronts bind theirs (this service comes first): with
        # --cluster-required a Redis that cannot be used stops the start
        # before anything listens.
        self._check()
        super().privilegedStartService()

    def _check(self) -> None:
        self._checked = True
        problem = check_redis(self.spec, START_CHECK_TIMEOUT)
        if problem is not None:
            if self._required:
                raise StartupError(f"gateway: error: --cluster-required: {problem}")
            self._log.warn(
                "cluster: {problem}; starting with this node's own state, and joining the "
                "cluster once Redis answers",
                problem=problem,
            )

    @override
    def startService(self) -> None:
        if not self._checked:
            self._check()  # started without the privileged step (twist)
        super().startService()
        self._beats.start(self.ttl / 3, now=True)

    @override
    def stopService(self) -> Deferred[None] | None:
        if self._beats.running:
            self._beats.stop()
        leaving = self._call("HDEL", self._nodes_key, self.name)
        leaving.addCallback(lambda _: self.limits.forget())
        leaving.addCallback(lambda _: self.seats.forget())
        leaving.addErrback(lambda failure: None)
        stopped = Deferred[None]()

        def stop(_: object) -> None:
            result = MultiService.stopService(self)
            if isinstance(result, Deferred):
                result.chainDeferred(stopped)
            else:
                stopped.callback(None)

        leaving.addBoth(stop)
        return stopped

    # Heartbeats and the nodes list

    def _entry(self) -> str:
        return json.dumps(
            {
                "address": self._address,
                "started": self._started,
                "sessions": len(self._registry),
                "heartbeat": self._reactor.seconds(),
            }
        )

    def _call(self, *args: object) -> Deferred[Any]:
        """
        A command off the data path (a beat, an action): a longer timeout.
        """
        return self.link.call(*args, timeout=OPERATIONS_TIMEOUT)

    def _beat(self) -> Deferred[None]:
        beat = self._call("HSET", self._nodes_key, self.name, self._entry())
        beat.addCallback(lambda _: self.limits.beat())
        beat.addCallback(lambda _: self.seats.beat())
        beat.addCallback(lambda _: self._share_sessions())
        beat.addCallback(lambda _: self._call("HGETALL", self._nodes_key))
        beat.addCallback(self._read_nodes)
        beat.addCallback(lambda _: self._read_sessions())
        beat.addCallback(lambda _: self._sync_drains())
        beat.addErrback(self._beat_failed)
        return beat

    def _read_nodes(self, reply: object) -> None:
        now = self._reactor.seconds()
        entries = _pairs(reply)
        live: dict[str, dict[str, Any]] = {}
        dead: list[str] = []
        for name, value in entries.items():
            try:
                entry = json.loads(value)
                beat = float(entry["heartbeat"])
            except (ValueError, KeyError, TypeError):
                dead.append(name)
                continue
            if now - beat > self.ttl:
                dead.append(name)
            else:
                live[name] = entry
        self.nodes = live
        if dead:
            self._call("HDEL", self._nodes_key, *dead).addErrback(lambda failure: None)

    def _own_sessions(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for number, session in self._registry.items():
            if len(entries) >= SESSIONS_SHARED:
                break
            entries.append({**session_entry(number, session), "node": self.name})
        return entries

    def _share_sessions(self) -> Deferred[Any]:
        """
        This node's sessions (at most L{SESSIONS_SHARED}) for the others'
        children list, expiring with the node.
        """
        key = f"{self.spec.name}:sessions:{self.name}"
        ttl_ms = str(int(self.ttl * 1000))
        return self._call("SET", key, json.dumps(self._own_sessions()), "PX", ttl_ms)

    def _read_sessions(self) -> Deferred[Any] | None:
        others = sorted(name for name in self.nodes if name != self.name)
        if not others:
            self._shared = {}
            return None
        keys = [f"{self.spec.name}:sessions:{name}" for name in others]

        def read(reply: object) -> None:
            shared: dict[str, list[dict[str, Any]]] = {}
            values = reply if isinstance(reply, list) else []
            for name, value in zip(others, values, strict=False):
                try:
                    entries = json.loads(value) if value is not None else []
                except (TypeError, ValueError):
                    entries = []
                if isinstance(entries, list):
                    shared[name] = [e for e in entries if isinstance(e, dict)]
            self._shared = shared

        return self._call("MGET", *keys).addCallback(read)

    def sessions(self) -> list[dict[str, Any]]:
        """
        The cluster's children list: this node's sessions now, and the
        other live nodes' as of their last beat, each with its C{node}.
        """
        listed = self._own_sessions()
        for name in sorted(self._shared):
            if name in self.nodes:
                listed.extend(self._shared[name])
        return listed

    def _beat_failed(self, failure: Failure) -> None:
        if not failure.check(RedisDownError):
            self._log.failure("cluster: a heartbeat failed", failure)
        # The next beat after Redis comes back reads the drains again: some
        # may have been made or lifted meanwhile.
        self._synced = False

    # Operators' actions

    def operator_action(self, backend: str, action: str, peer: str) -> None:
        """
        An operator drained (C{action} C{drain}) or enabled (C{enable}) a
        backend on this node's admin endpoint: every node applies it.
        """
        link = self.link
        if action == "drain":
            kept = link.call(
                "HSET", self._drained_key, backend, self.name, timeout=OPERATIONS_TIMEOUT
            )
        else:
            kept = link.call("HDEL", self._drained_key, backend, timeout=OPERATIONS_TIMEOUT)
        message = json.dumps({"node": self.name, "backend": backend, "action": action, "by": peer})
        kept.addCallback(
            lambda _: link.call(
                "PUBLISH", f"{self.spec.name}:ops", message, timeout=OPERATIONS_TIMEOUT
            )
        )
        kept.addErrback(self._action_failed, backend, action)

    def _action_failed(self, failure: Failure, backend: str, action: str) -> None:
        self._log.warn(
            "cluster: the {action} of backend {backend} applies on this node only: {why}",
            action=action,
            backend=backend,
            why=failure.getErrorMessage(),
        )

    def _message(self, message: dict[str, Any]) -> None:
        node, backend, action = message.get("node"), message.get("backend"), message.get("action")
        if node == self.name or not isinstance(backend, str) or action not in ("drain", "enable"):
            return
        self._apply(backend, action, f"by an operator on node {node}")

    def _apply(self, name: str, action: str, how: str) -> None:
        backend = self._pools.get(name)
        if backend is None:
            return  # not in this node's configuration
        if action == "drain":
            self._remote_drains.add(name)
            if backend.state is not BackendState.DRAINING:
                self._pools.set_state(backend, BackendState.DRAINING, f"drained {how}")
        elif action == "enable":
            self._remote_drains.discard(name)
            if backend.state is BackendState.DRAINING:
                self._pools.set_state(backend, BackendState.UP, f"enabled {how}")

    def _resync(self) -> None:
        """
        The subscriber (re)subscribed: read the drains in force now.
        """
        self._synced = False
        self._sync_drains()

    def _sync_drains(self) -> Deferred[None] | None:
        """
        Once per connection to Redis: apply the drains in force (made before
        this node started, or while it could not hear them).
        """
        if self._synced:
            return None
        reading = self._call("HGETALL", self._drained_key)

        def apply(reply: object) -> None:
            self._synced = True
            drained = _pairs(reply)
            for backend, node in drained.items():
                if node != self.name:
                    self._apply(backend, "drain", f"by an operator on node {node}")
            for backend in self._remote_drains - drained.keys():
                # Enabled elsewhere while this node could not hear it.
                self._apply(backend, "enable", "by an operator on another node")

        reading.addCallback(apply)
        reading.addErrback(lambda failure: None)  # the next beat tries again
        return reading

    def summary(self) -> dict[str, Any]:
        """
        The cluster as this node sees it (for C{status.json} and
        C{/metrics}).
        """
        return {
            "name": self.spec.name,
            "node": self.name,
            "redis": self.spec.shown(),
            "redis_up": self.link.up,
            "ttl": self.ttl,
            "failures": self.link.failures,
            **self.limits.summary(),
            **self.seats.summary(),
            "affinity": self.affinity.summary() if self.affinity is not None else None,
        }

    def document(self) -> list[dict[str, Any]]:
        """
        The live nodes for C{status.json?scope=cluster}, by name.
        """
        now = self._reactor.seconds()
        return [
            {
                "name": name,
                "address": entry.get("address"),
                "started": entry.get("started"),
                "sessions": entry.get("sessions"),
                "heartbeat": entry.get("heartbeat"),
                "age": round(max(0.0, now - float(entry.get("heartbeat", now))), 3),
                "self": name == self.name,
            }
            for name, entry in sorted(self.nodes.items())
        ]


def _pairs(reply: object) -> dict[str, str]:
    """
    A hash's fields and values from C{HGETALL}'s reply (txredisapi gives a
    dict, raw RESP a flat list), as text.
    """

    def text(value: object) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    if isinstance(reply, dict):
        return {text(k): text(v) for k, v in reply.items()}
    if isinstance(reply, list):
        return {text(reply[i]): text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
    return {}
