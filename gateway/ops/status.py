"""
The status document of C{/status.json}: the gateway's version, host name and
start time, the backends (name, endpoint, state, active, total, failures,
weight, reason), the live sessions (the "children list": id, kind, peer,
backend, started, bytes_in, bytes_out; a game or WebSocket session's state,
and while it waits its position, wait and class), the counters and the
waiting rooms (C{counters.queues}), all read when asked (the data path only
adds to plain integers); with C{--cluster}, the cluster as this node sees it
(C{cluster}: L{ClusterMember.summary}, small, so that the dashboard knows to
ask for C{scope=cluster}).

L{status} builds it for one process; L{session_json} writes one session as
JSON text without building a dictionary (for long lists); with C{--workers},
L{gather_status} asks every worker process for its part and merges the
replies into the acceptor's document.  A worker process answers its
acceptor with L{status} too, so both sides count the same way.
L{gateway.ops.metrics} renders the same document's counters for Prometheus.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from contextlib import suppress
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gateway import __version__
from gateway.front.limits import Refusal
from gateway.histogram import (
    CONNECT_TIME_BOUNDS,
    SESSION_DURATION_BOUNDS,
    empty_state,
    merge_state,
)
from gateway.ops.registry import Counters, LiveSession, SessionRegistry
from gateway.pool.backends import Backend, BackendState
from gateway.pool.pools import Pools
from gateway.pool.room import Ticket, WaitingRoom
from gateway.process.wire import StatusReply

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

__all__ = [
    "SESSION_KINDS",
    "AdminState",
    "WaitingPlaces",
    "WorkerProcesses",
    "backend_status",
    "gather_status",
    "queue_status",
    "session_entry",
    "session_json",
    "status",
]

SESSION_KINDS = ("game", "websocket", "http")
"""The kinds of live sessions (a closed vocabulary)."""


class WorkerProcesses(Protocol):
    """
    What the status document needs from the worker processes
    (L{gateway.process.workerpool.WorkerPool}).  A structural type, so that
    this module imports only the wire format of the process side
    (L{gateway.process.wire}), not the worker pool, which the service
    assembling the admin endpoint imports.
    """

    @property
    def lost(self) -> int:
        """
        Connections lost with worker processes that died.
        """

    def status(self, limit: int | None) -> Deferred[list[StatusReply | None]]:
        """
        Every running worker's status reply (L{None} for one that did not answer).
        """

    def describe(self) -> list[dict[str, Any]]:
        """
        The workers as C{/status.json} lists them.
        """


class ClusterMember(Protocol):
    """
    What the admin endpoint uses of this node's cluster membership
    (L{gateway.cluster.node.ClusterNode}), with C{--cluster}.
    """

    def document(self) -> list[dict[str, Any]]:
        """
        The live nodes, for C{status.json?scope=cluster}.
        """
        ...

    def summary(self) -> dict[str, Any]:
        """
        The cluster as this node sees it: its name (C{name}), this node's
        name (C{node}), Redis' URL with the password masked (C{redis}),
        whether Redis answers (C{redis_up}), the TTL (C{ttl}), how many
        Redis commands failed or timed out (C{failures}) and the shared
        affinity (C{affinity}: its C{ttl}, its lookups by result C{used},
        C{overridden}, C{none}, C{failed}, and C{remember_failures}; L{None}
        when it is off).
        """
        ...

    def operator_action(self, backend: str, action: str, peer: str) -> None:
        """
        An operator's drain or enable here: every node applies it.
        """

    def sessions(self) -> list[dict[str, Any]]:
        """
        The cluster's children list: this node's live sessions and the other
        nodes' as they last shared them, each with its C{node}.
        """
        ...


class AdminState:
    """
    Everything the admin endpoint reads, and the token its actions need.

    It lives here, beside the document it feeds, because a worker process,
    which serves no admin endpoint, builds one to answer its acceptor's
    status requests; C{token} and C{hosts} are read by
    L{gateway.ops.admin} only.

    @ivar clock: for the C{now} of the status document.
    @ivar token: the admin token, or L{None} when actions need none.
    @ivar hosts: host names (besides IP addresses and C{localhost}) that
        requests may name in their C{Host} header.
    @ivar started: when the gateway started, in the clock's seconds.
    @ivar config: the configuration in force, for the limits C{/metrics}
        shows (L{None}: none shown).
    """

    def __init__(
        self,
        pool: Pools,
        registry: SessionRegistry,
        counters: Counters,
        *,
        clock: IReactorTime | None = None,
        token: str | None = None,
        hosts: tuple[str, ...] = (),
        workers: WorkerProcesses | None = None,
        config: GatewayConfig | None = None,
        cluster: ClusterMember | None = None,
    ) -> None:
        """
        @param workers: with C{--workers}, the worker processes, whose
            sessions and counters the documents gather.
        @param cluster: with C{--cluster}, this node's membership (nodes for
            C{scope=cluster}; operators' actions shared with every node).
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
        self.config = config
        self.cluster = cluster
        self.started = clock.seconds() if clock is not None else 0.0

    def reconfigure(
        self, token: str | None, hosts: Sequence[str], config: GatewayConfig | None = None
    ) -> None:
        """
        A new admin token and host names for the requests that come next (a
        reload), checked and normalised as at start, and the new
        configuration (L{None}: keep the one in force).

        @raise ValueError: the token is empty.
        """
        if token is not None and not token.strip():
            raise ValueError("the admin token must not be empty")
        self.token = token
        self.hosts = tuple(name.lower() for name in hosts)
        if config is not None:
            self.config = config


def backend_status(backend: Backend) -> dict[str, Any]:
    """
    One backend as C{/status.json} shows it.
    """
    return {
        "name": backend.name,
        "pool": backend.pool,
        "endpoint": backend.description,
        "state": backend.state.value,
        "active": backend.active,
        "total": backend.total,
        "failures": backend.failures,
        "weight": backend.weight,
        "max_sessions": backend.max_sessions,
        "elsewhere": backend.elsewhere,
        "reason": backend.reason,
        "check_failures": backend.check_failures,
        "changed": backend.changed,
    }


class WaitingPlaces:
    """
    The places of the sessions waiting in the pools' waiting rooms, read
    once for one document: a room's positions cost a pass over its waiters,
    so they are computed once, not once per session listed.

    @ivar now: the document's time, for how long each has waited.
    """

    __slots__ = ("_places", "now")

    def __init__(self, pools: Pools, now: float) -> None:
        self.now = now
        # By the ticket's id, with the ticket itself: an id alone could be
        # reused by a new ticket while a long list is written in steps.
        self._places: dict[int, tuple[Ticket, int]] = {}
        for pool in pools.pools:
            room = pool.room
            if not len(room):
                continue
            positions = room.positions()
            for ticket in room.tickets():
                self._places[id(ticket)] = (ticket, positions[ticket.seq])

    def position(self, ticket: Ticket) -> int | None:
        """
        The waiter's position in its room (L{None}: it entered after the
        positions were read).
        """
        place = self._places.get(id(ticket))
        return place[1] if place is not None and place[0] is ticket else None


def _session_state(session: LiveSession) -> tuple[str | None, Ticket | None]:
    """
    A session's state (its phase's name: game and WebSocket sessions have
    one, HTTP connections none) and its waiting room ticket while it waits.
    """
    state = getattr(getattr(session, "phase", None), "value", None)
    ticket = getattr(session, "ticket", None)
    return (
        state if isinstance(state, str) else None,
        ticket if isinstance(ticket, Ticket) else None,
    )


def session_entry(
    number: int, session: LiveSession, places: WaitingPlaces | None = None
) -> dict[str, Any]:
    """
    One live session as C{/status.json} lists it (byte counts read now).

    @param places: the waiters' places; with them, a waiting session shows
        its C{position}, C{waited} (seconds) and C{class}.
    """
    entry = {
        "id": number,
        "kind": session.kind,
        "peer": session.peer,
        "backend": session.backend_name,
        "started": session.started,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
    }
    state, ticket = _session_state(session)
    if state is not None:
        entry["state"] = state
    if ticket is not None and places is not None:
        entry["position"] = places.position(ticket)
        entry["waited"] = max(0.0, places.now - ticket.entered)
        entry["class"] = ticket.standing.name
    return entry


def _room_status(room: WaitingRoom) -> dict[str, Any]:
    """
    One pool's waiting room as C{counters.queues} shows it.
    """
    return {
        "length": len(room),
        "size": room.settings.size,
        "timeout": room.settings.timeout,
        "oldest_wait": room.oldest_wait(),
        "admitted": room.admitted,
        "timed_out": room.timed_out,
        "full": room.full,
        "left": room.left,
        "waits": room.waits.state(),
    }


def _counts(room: WaitingRoom) -> bool:
    """
    Whether a room is open, or closed but counted something (closed by a
    reload): the rooms C{counters.queues} lists.
    """
    return room.open or any((len(room), room.admitted, room.timed_out, room.full, room.left))


def queue_status(pools: Pools) -> dict[str, dict[str, Any]]:
    """
    The waiting rooms by pool name (those L{_counts} keeps).
    """
    return {pool.name: _room_status(pool.room) for pool in pools.pools if _counts(pool.room)}


def status(state: AdminState, limit: int | None = None) -> dict[str, Any]:
    """
    The gateway's status as the JSON document of C{/status.json}.

    @param limit: list at most this many sessions (the oldest); L{None}: all.
    """
    pool, registry, counters = state.pool, state.registry, state.counters
    now = state.clock.seconds() if state.clock is not None else 0.0
    places = WaitingPlaces(pool, now) if limit != 0 else None
    sessions: list[dict[str, Any]] = []
    live_in = live_out = 0
    by_backend = {name: list(moved) for name, moved in registry.ended_by_backend.items()}
    ids, live = registry.snapshot()
    for number, session in zip(ids, live, strict=True):
        bytes_in, bytes_out = session.bytes_in, session.bytes_out
        live_in += bytes_in
        live_out += bytes_out
        name = session.backend_name
        if name is not None:
            moved = by_backend.setdefault(name, [0, 0])
            moved[0] += bytes_in
            moved[1] += bytes_out
        if limit is not None and len(sessions) >= limit:
            continue  # still summed into the byte totals
        sessions.append(session_entry(number, session, places))
    active = registry.active()
    document: dict[str, Any] = {
        "version": __version__,
        "host": socket.gethostname(),
        "started": state.started,
        "now": now,
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
            "fast_path": counters.fast_path,
            "health_transitions": pool.transitions,
            "backend_bytes": by_backend,
            "connect_time": {b.name: b.connect_time.state() for b in pool.backends},
            "durations": {kind: h.state() for kind, h in registry.durations.items()},
            "queues": queue_status(pool),
        },
    }
    if state.cluster is not None:
        document["cluster"] = state.cluster.summary()
    return document


def session_json(
    number: int,
    session: LiveSession,
    worker: int | None = None,
    places: WaitingPlaces | None = None,
) -> str:
    """
    L{session_entry} as JSON text, built from strings only: strings are not
    tracked by the garbage collector, dictionaries are, and allocating 10,000
    of them would trigger collections that pause the reactor.

    @param worker: the worker process serving it, with C{--workers}.
    @param places: the waiters' places (see L{session_entry}).
    """
    backend = session.backend_name
    state, ticket = _session_state(session)
    more = "" if state is None else f',"state":{_quote(state)}'
    if ticket is not None and places is not None:
        position = places.position(ticket)
        more += (
            f',"position":{"null" if position is None else int(position)}'
            f',"waited":{max(0.0, places.now - ticket.entered)!r}'
            f',"class":{_quote(ticket.standing.name)}'
        )
    return (
        f'{{"id":{number},"kind":{_quote(session.kind)},"peer":{_quote(session.peer)},'
        f'"backend":{"null" if backend is None else _quote(backend)},'
        f'"started":{float(session.started)!r},'
        f'"bytes_in":{int(session.bytes_in)},"bytes_out":{int(session.bytes_out)}'
        + more
        + ("}" if worker is None else f',"worker":{worker}}}')
    )


def _merge_histograms(counters: dict[str, Any], theirs: dict[str, Any]) -> None:
    """
    Add a worker's per-backend bytes, connect times and session durations
    to the acceptor's C{counters} (a worker of another version, which has
    none or other buckets, adds nothing to the histograms).
    """
    for name, (bytes_in, bytes_out) in theirs.get("backend_bytes", {}).items():
        moved = counters["backend_bytes"].setdefault(name, [0, 0])
        moved[0] += bytes_in
        moved[1] += bytes_out
    for family, bounds in (
        ("connect_time", CONNECT_TIME_BOUNDS),
        ("durations", SESSION_DURATION_BOUNDS),
    ):
        ours = counters[family]
        for label, state in theirs.get(family, {}).items():
            with suppress(ValueError):
                merge_state(ours.setdefault(label, empty_state(bounds)), state)
    _merge_queues(counters["queues"], theirs.get("queues", {}))


def _merge_queues(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """
    Add a worker's waiting rooms to the acceptor's, pool by pool: each
    process has its own room, so lengths, sizes and counts add up and the
    oldest wait is the longest.  (The waiting room is refused with
    C{--workers} above 1 for now; this keeps the document right if that
    changes.)
    """
    for name, room in theirs.items():
        into = ours.get(name)
        if into is None:
            ours[name] = room
            continue
        for field in ("length", "size", "admitted", "timed_out", "full", "left"):
            into[field] += room.get(field, 0)
        into["oldest_wait"] = max(into["oldest_wait"], room.get("oldest_wait", 0.0))
        with suppress(ValueError, KeyError):
            merge_state(into["waits"], room["waits"])


_SUMMED = ("bytes_in", "bytes_out", "backend_failures", "unserved", "key_fallbacks", "fast_path")
"""The plain counters of the workers' documents that the acceptor adds up."""


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
            for name in _SUMMED:
                counters[name] += theirs[name]
            _merge_histograms(counters, theirs)
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
                        "check_failures": 0,
                        "changed": 0.0,
                    }
                )
        document["workers"] = described
        found.sort()
        if limit is not None:
            found = found[:limit]
        return document, [text for _, text in found]

    return workers.status(limit).addCallback(merge)
