"""
The backends' seats counted across the cluster: L{SharedSeats}, the pools'
L{gateway.pool.seats.SeatStore}.

With C{--cluster}, a backend's C{max-sessions} counts its game sessions
through every node, and C{--cluster-max-sessions} caps the cluster's game
sessions.  A session whose backend has a C{max-sessions} (or any session,
with a cap) claims its seat once its backend is chosen: one Lua script
(L{CLAIM}), atomic, which adds up the backend's sessions and all sessions
over the live nodes' hashes and counts the seat in this node's; the seat's
end is one more (C{RELEASE}).  Nothing else touches Redis for a session.

Keys, under the cluster's name C{NAME}: C{NAME:seats:NODE}, a hash per node
(a backend's name to this node's sessions on it, and C{*} to all of them),
expiring with the node, and C{NAME:seats-nodes} (see
L{gateway.cluster.counts}, which also keeps them true when Redis and this
node may disagree).

Between claims, each backend's C{elsewhere} (its sessions through the other
nodes) comes with every claim's answer for that backend, and for all of
them at every heartbeat (L{VIEW}); the pools' waiting rooms look again when
seats freed elsewhere.  So the pool rarely chooses a backend the others
filled, and a player waiting here gets a seat freed on another node within
a heartbeat.

When Redis does not answer within C{--cluster-timeout}, the node decides
alone with each limit divided by the nodes last seen alive: a backend's
C{elsewhere} becomes what the other nodes' shares leave, and the cap is
this node's share of it; counted, logged once each way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.cluster.counts import NodeCounts
from gateway.cluster.link import RedisLink
from gateway.pool.backend import Backend
from gateway.pool.pools import Pools
from gateway.pool.seats import Seat, SeatAnswer

__all__ = ["CLAIM", "TOTAL", "VIEW", "SharedSeats"]

TOTAL = "*"
"""The field of a node's hash that counts all its sessions."""

CLAIM = """
local own, members = KEYS[1], KEYS[2]
local node, backend, prefix = ARGV[1], ARGV[2], ARGV[6]
local limit, cap, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local on, total, here = 0, 0, 0
for _, name in ipairs(redis.call('SMEMBERS', members)) do
  local hash = prefix .. name
  local got = redis.call('HMGET', hash, backend, '*')
  if got[1] or got[2] then
    local count = tonumber(got[1] or 0)
    on = on + count
    total = total + tonumber(got[2] or 0)
    if name == node then here = count end
  elseif redis.call('EXISTS', hash) == 0 then
    redis.call('SREM', members, name)
  end
end
if limit > 0 and on >= limit then return {1, on - here} end
if cap > 0 and total >= cap then return {2, on - here} end
redis.call('HINCRBY', own, backend, 1)
redis.call('HINCRBY', own, '*', 1)
redis.call('PEXPIRE', own, ttl)
redis.call('SADD', members, node)
return {0, on - here}
"""
"""Claim a seat: C{{0, elsewhere}} taken (and counted), C{{1, elsewhere}} the
backend is full, C{{2, elsewhere}} the cluster's cap is reached; C{elsewhere}
is the backend's sessions through the other nodes.  KEYS: this node's hash,
the set of nodes.  ARGV: node, backend, its max-sessions, the cap, TTL in
ms, the prefix of the nodes' hashes."""

VIEW = """
local sums = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if name ~= ARGV[1] then
    local hash = ARGV[2] .. name
    local fields = redis.call('HGETALL', hash)
    if #fields == 0 and redis.call('EXISTS', hash) == 0 then
      redis.call('SREM', KEYS[1], name)
    end
    for i = 1, #fields, 2 do
      sums[fields[i]] = (sums[fields[i]] or 0) + tonumber(fields[i + 1])
    end
  end
end
local flat = {}
for field, count in pairs(sums) do
  flat[#flat + 1] = field
  flat[#flat + 1] = count
end
return flat
"""
"""The other nodes' sessions, by backend (and C{*}), as a flat list of field
and count.  KEYS: the set of nodes.  ARGV: this node, the hashes' prefix."""


class SharedSeats(NodeCounts):
    """
    Seats on the backends counted across the cluster (see the module's
    docstring).

    @ivar cap: the cluster's cap on game sessions (0: none).
    @ivar elsewhere_total: the other nodes' sessions as last learned.
    """

    ALONE = (
        "cluster: seats are counted by this node alone, each backend's max-sessions and the "
        "cluster's cap divided by {share} live node(s), until Redis answers ({why})"
    )
    TOGETHER = (
        "cluster: seats are counted across the cluster again ({count} taken by this node "
        "alone so far)"
    )

    def __init__(
        self,
        link: RedisLink,
        clock: IReactorTime,
        pools: Pools,
        *,
        cluster: str,
        node: str,
        ttl: float,
        cap: int,
        live_nodes: Callable[[], int],
    ) -> None:
        """
        @param cap: C{--cluster-max-sessions} (0: none).
        """
        super().__init__(
            link, clock, cluster=cluster, node=node, kind="seats", ttl=ttl, live_nodes=live_nodes
        )
        self._pools = pools
        self.cap = cap
        self.elsewhere_total = 0
        self._held: dict[str, int] = {}

    def counts(self) -> dict[str, int]:
        counts = dict(self._held)
        total = sum(counts.values())
        if total:
            counts[TOTAL] = total
        return counts

    def applies(self, backend: Backend) -> bool:
        """
        Whether a session on C{backend} claims a shared seat.
        """
        return backend.max_sessions > 0 or self.cap > 0

    def claim(self, backend: Backend) -> Deferred[tuple[SeatAnswer, Seat | None]]:
        """
        Claim a seat on C{backend} (see L{gateway.pool.seats.SeatStore}).
        """
        epoch = self.asking()
        args = (
            self._node,
            backend.name,
            backend.max_sessions,
            self.cap,
            self._ttl_ms,
            self._prefix,
        )
        asked = self.script(CLAIM, (self._own, self._members), args)
        return asked.addCallbacks(
            self._answered,
            self._unanswered,
            callbackArgs=(backend, epoch),
            errbackArgs=(backend,),
        )

    def _answered(
        self, reply: object, backend: Backend, epoch: int
    ) -> tuple[SeatAnswer, Seat | None]:
        values: list[Any] = reply if isinstance(reply, list) else [reply, 0]
        code, elsewhere = int(values[0]), int(values[1])
        backend.elsewhere = elsewhere
        epoch = self.answered((backend.name, TOTAL), code == 0, epoch)
        if code == 1:
            return SeatAnswer.FULL, None
        if code == 2:
            return SeatAnswer.CAPPED, None
        return SeatAnswer.TAKEN, self._take(backend.name, True, epoch)

    def _unanswered(self, failure: Failure, backend: Backend) -> tuple[SeatAnswer, Seat | None]:
        epoch = self.unanswered(failure)
        share = self.share()
        limit = backend.max_sessions
        if limit:
            # What the other nodes' shares leave this one.
            backend.elsewhere = max(0, limit - max(1, limit // share))
            if backend.active + backend.elsewhere > limit:  # active counts this session
                return SeatAnswer.FULL, None
        if self.cap and sum(self._held.values()) >= max(1, self.cap // share):
            return SeatAnswer.CAPPED, None
        return SeatAnswer.TAKEN, self._take(backend.name, False, epoch)

    def _take(self, name: str, counted: bool, epoch: int) -> Seat:
        self._held[name] = self._held.get(name, 0) + 1
        return Seat(name, counted, epoch, self._give_back)

    def _give_back(self, seat: Seat) -> None:
        held = self._held.get(seat.backend, 0) - 1
        if held > 0:
            self._held[seat.backend] = held
        else:
            self._held.pop(seat.backend, None)
        self.release((seat.backend, TOTAL), seat.counted, seat.epoch)

    # Between claims

    def beat(self) -> Deferred[Any] | None:
        """
        A heartbeat: the counts kept (or written back), then the other
        nodes' sessions read for every backend.
        """
        kept = super().beat()
        view = self.script(VIEW, (self._members,), (self._node, self._prefix))
        view.addCallbacks(self._viewed, lambda failure: None)
        return kept

    def _viewed(self, reply: object) -> None:
        values: list[Any] = reply if isinstance(reply, list) else []
        sums: dict[str, int] = {}
        for index in range(0, len(values) - 1, 2):
            field = values[index]
            name = field.decode() if isinstance(field, bytes) else str(field)
            sums[name] = int(values[index + 1])
        self.elsewhere_total = sums.get(TOTAL, 0)
        for pool in self._pools.pools:
            freed = False
            for backend in pool.backends:
                elsewhere = sums.get(backend.name, 0)
                freed = freed or elsewhere < backend.elsewhere
                backend.elsewhere = elsewhere
            if freed:
                pool.room.kick()

    def summary(self) -> dict[str, Any]:
        """
        For C{status.json}'s C{cluster} object.
        """
        held = sum(self._held.values())
        return {
            "max_sessions": self.cap,
            "sessions": held + self.elsewhere_total,
            "local_seats": self.local,
            "seats_alone": self.alone,
        }
