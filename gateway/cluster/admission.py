"""
The per-address limits held across the cluster: L{SharedLimits}.

With C{--cluster}, C{--max-per-ip} and C{--rate-per-ip} count a client's
connections through every node together.  Each admission is one Lua script
in Redis (L{ADMIT}), atomic, and each admitted connection's end one more;
nothing else touches Redis on the data path.

Keys, under the cluster's name C{NAME}:

  - C{NAME:conn:NODE}: a hash per node, address key to its live connections
    through that node.  It expires C{--cluster-ttl} after the node's last
    admission or heartbeat, so the counts of a node that died stop counting
    within the TTL; a node that stops cleanly deletes it.
  - C{NAME:conn-nodes}: the set of nodes that may have such a hash; the
    script sums the address's count over them and drops the nodes whose
    hash expired.
  - C{NAME:rate:ADDRESS}: the address's token bucket (tokens, stamp), on
    Redis' clock (C{TIME}), expiring once it would be full again.

When Redis does not answer within C{--cluster-timeout} (or is known to be
away: then nothing is sent and nothing waits, see
L{gateway.cluster.link.RedisLink}), the admission is decided by this node's
own limits with each limit divided by the number of nodes last seen alive
(L{gateway.front.limits.AddressLimits.admit}'s C{share}).  That is counted
(L{SharedLimits.local}), logged once when it starts and once when Redis is
back; no connection is ever cut for it.

This node's own counts (the per-address cap's) are kept locally too, and
written back to Redis whenever Redis may disagree with them: see
L{gateway.cluster.counts}, which also takes an ended connection off
(C{RELEASE}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.cluster.counts import NodeCounts
from gateway.cluster.link import RedisLink
from gateway.front.limits import AddressLimits, Refusal
from gateway.front.pending import Decision, Ticket

__all__ = ["ADMIT", "SharedLimits"]

ADMIT = """
local own, members, bucket = KEYS[1], KEYS[2], KEYS[3]
local node, address, prefix = ARGV[1], ARGV[2], ARGV[7]
local cap, rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
if cap > 0 then
  local total = 0
  for _, name in ipairs(redis.call('SMEMBERS', members)) do
    local hash = prefix .. name
    local count = redis.call('HGET', hash, address)
    if count then
      total = total + tonumber(count)
    elseif redis.call('EXISTS', hash) == 0 then
      redis.call('SREM', members, name)
    end
  end
  if total >= cap then return 1 end
end
if rate > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local held = redis.call('HMGET', bucket, 't', 's')
  local tokens = burst
  if held[1] and held[2] then
    local since = math.max(0, now - tonumber(held[2]))
    tokens = math.min(burst, tonumber(held[1]) + since * rate)
  end
  if tokens < 1 - 1e-9 then return 2 end
  redis.call('HSET', bucket, 't', string.format('%.6f', math.max(0, tokens - 1)),
             's', string.format('%.6f', now))
  redis.call('PEXPIRE', bucket, math.ceil(burst / rate * 1000) + 1000)
end
if cap > 0 then
  redis.call('HINCRBY', own, address, 1)
  redis.call('PEXPIRE', own, ttl)
  redis.call('SADD', members, node)
end
return 0
"""
"""Admit one connection: 0 admitted (and counted), 1 over the per-address
cap, 2 over the rate.  KEYS: this node's hash, the set of nodes, the
address's bucket.  ARGV: node, address key, cap, rate, burst, TTL in ms, the
prefix of the nodes' hashes."""


class SharedLimits(NodeCounts):
    """
    Admissions against the cluster's shared per-address limits (see the
    module's docstring).
    """

    ALONE = (
        "cluster: admissions are decided by this node alone, each per-address limit divided "
        "by {share} live node(s), until Redis answers ({why})"
    )
    TOGETHER = (
        "cluster: admissions use the shared limits again ({count} decided by this node alone "
        "so far)"
    )

    def __init__(
        self,
        link: RedisLink,
        clock: IReactorTime,
        *,
        cluster: str,
        node: str,
        ttl: float,
        live_nodes: Callable[[], int],
    ) -> None:
        """
        @param ttl: seconds after which a dead node's counts stop counting.
        @param live_nodes: the number of nodes last seen alive (this one
            included).
        """
        super().__init__(
            link, clock, cluster=cluster, node=node, kind="conn", ttl=ttl, live_nodes=live_nodes
        )
        self._rate = f"{cluster}:rate:"
        self._limits: AddressLimits | None = None
        # The per-address cap whose counts the last rewrite wrote.
        self._rewritten: object = None

    def counts(self) -> dict[str, int]:
        return self._limits.counts() if self._limits is not None else {}

    def reconcile(self) -> Deferred[Any]:
        # A reload may have put a new per-address cap in place: the rewrite
        # holds the connections counted in the cap of the latest limits.
        self._rewritten = self._limits.address_cap if self._limits is not None else None
        return super().reconcile()

    def admit(self, key: str, limits: AddressLimits) -> Deferred[Decision]:
        """
        Admit a connection from C{key} under C{limits}: in Redis, or
        locally (with the limits divided) when Redis does not answer in
        time.  Either way the connection is counted locally once admitted.
        """
        self._limits = limits
        epoch = self.asking()
        cap, rate, burst = limits.shape()
        args = (self._node, key, cap, _number(rate), _number(burst), self._ttl_ms, self._prefix)
        asked = self.script(ADMIT, (self._own, self._members, self._rate + key), args)
        return asked.addCallbacks(
            self._answered,
            self._unanswered,
            callbackArgs=(key, limits, cap > 0, epoch),
            errbackArgs=(key, limits),
        )

    def _answered(
        self, reply: object, key: str, limits: AddressLimits, counts: bool, epoch: int
    ) -> Decision:
        code = int(reply)  # type: ignore[call-overload]
        admitted = code == 0
        epoch = self.answered((key,), counts and admitted, epoch)
        if code == 1:
            return Decision(Refusal.ADDRESS_CAP, None)
        if code == 2:
            return Decision(Refusal.RATE, None)
        limits.count(key, self._clock.seconds())
        return Decision(None, Ticket(key, counts, epoch, limits.address_cap))

    def _unanswered(self, failure: Failure, key: str, limits: AddressLimits) -> Decision:
        epoch = self.unanswered(failure)
        refusal = limits.admit(key, self._clock.seconds(), self.share())
        if refusal is not None:
            return Decision(refusal, None)
        return Decision(None, Ticket(key, False, epoch, limits.address_cap))

    def release(self, ticket: Ticket) -> None:  # type: ignore[override]
        """
        An admitted connection ended.
        """
        rewritten = ticket.holder is not None and ticket.holder is self._rewritten
        NodeCounts.release(self, (ticket.key,), ticket.counted, ticket.epoch, rewritten)

    def summary(self) -> dict[str, Any]:
        """
        For C{status.json}'s C{cluster} object.
        """
        return {"local_admissions": self.local, "limits_alone": self.alone}


def _number(value: float) -> str:
    """
    A number as Lua's C{tonumber} reads it.
    """
    return repr(float(value))
