"""
The per-address limits held across the cluster: L{SharedLimits}.

With C{--cluster}, C{--max-per-ip} and C{--rate-per-ip} count a client's
connections through every node together.  Each admission is one Lua script
in Redis (L{ADMIT}), atomic, and each admitted connection's end one more
(L{RELEASE}); nothing else touches Redis on the data path.

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

This node's own counts are always kept locally too.  Whenever Redis may
disagree with them (an admission decided locally, a command that timed out
or failed), the node's hash is rewritten from them (L{RECONCILE}) as soon as
Redis answers again, and at the next heartbeat.  Each rewrite starts an
B{epoch}; a connection's L{Ticket} says whether Redis counted it and in
which epoch, so that its end is taken off Redis' count exactly when Redis
has it: admitted by the script, or alive when a rewrite was sent.  An
admission whose script ran before a rewrite but was answered after it is
added again (the rewrite could not include it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.link import RedisLink
from gateway.front.limits import AddressLimits, Refusal
from gateway.front.pending import Decision, Ticket

__all__ = ["ADMIT", "RECONCILE", "RELEASE", "SharedLimits"]

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

RELEASE = """
local count = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if count <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return count
"""
"""An admitted connection ended.  KEYS: this node's hash.  ARGV: address key."""

RECONCILE = """
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if #ARGV > 2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[1])
end
return 1
"""
"""Rewrite this node's hash from its own counts.  KEYS: this node's hash, the
set of nodes.  ARGV: node, TTL in ms, then address key and count pairs."""


class SharedLimits:
    """
    Admissions against the cluster's shared per-address limits (see the
    module's docstring).

    @ivar local: admissions decided without Redis so far.
    @ivar alone: whether admissions are being decided locally now.
    """

    _log = Logger()

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
        self._link = link
        self._clock = clock
        self._node = node
        self._ttl_ms = str(max(1, int(ttl * 1000)))
        self._live_nodes = live_nodes
        self._own = f"{cluster}:conn:{node}"
        self._members = f"{cluster}:conn-nodes"
        self._prefix = f"{cluster}:conn:"
        self._rate = f"{cluster}:rate:"
        self.local = 0
        self.alone = False
        self._epoch = 0
        self._dirty = False
        self._limits: AddressLimits | None = None

    # Admissions

    def admit(self, key: str, limits: AddressLimits) -> Deferred[Decision]:
        """
        Admit a connection from C{key} under C{limits}: in Redis, or
        locally (with the limits divided) when Redis does not answer in
        time.  Either way the connection is counted locally once admitted.
        """
        self._limits = limits
        if self._dirty:
            # Redis may disagree with this node's counts: write them first
            # (sent first, run first), and decide by them.
            self.reconcile()
        cap, rate, burst = limits.shape()
        epoch = self._epoch
        args = (self._node, key, cap, _number(rate), _number(burst), self._ttl_ms, self._prefix)
        asked = self._script(ADMIT, (self._own, self._members, self._rate + key), args)
        return asked.addCallbacks(
            self._answered,
            self._unanswered,
            callbackArgs=(key, limits, cap > 0, epoch),
            errbackArgs=(key, limits),
        )

    def _answered(
        self, reply: object, key: str, limits: AddressLimits, counts: bool, epoch: int
    ) -> Decision:
        self._together()
        code = int(reply)  # type: ignore[call-overload]
        if code == 1:
            return Decision(Refusal.ADDRESS_CAP, None)
        if code == 2:
            return Decision(Refusal.RATE, None)
        limits.count(key, self._clock.seconds())
        if counts and epoch != self._epoch:
            # Counted before a rewrite that could not include it: again.
            self._send(("HINCRBY", self._own, key, 1))
        return Decision(None, Ticket(key, counts, self._epoch))

    def _unanswered(self, failure: Failure, key: str, limits: AddressLimits) -> Decision:
        # A command that timed out may still have counted in Redis.
        self._dirty = True
        if not self.alone:
            self.alone = True
            share = self.share()
            self._log.warn(
                "cluster: admissions are decided by this node alone, each per-address "
                "limit divided by {share} live node(s), until Redis answers ({why})",
                share=share,
                why=failure.getErrorMessage(),
            )
        self.local += 1
        refusal = limits.admit(key, self._clock.seconds(), self.share())
        return Decision(refusal, None if refusal is not None else Ticket(key, False, self._epoch))

    def share(self) -> int:
        """
        How many nodes' worth of the limits this node decides alone.
        """
        return max(1, self._live_nodes())

    def _together(self) -> None:
        if self.alone:
            self.alone = False
            self._log.info(
                "cluster: admissions use the shared limits again ({count} decided by this "
                "node alone so far)",
                count=self.local,
            )

    def release(self, ticket: Ticket) -> None:
        """
        An admitted connection ended: take it off Redis' count if Redis
        has it (its admission counted it, or a rewrite since did).
        """
        if ticket.counted or ticket.epoch != self._epoch:
            self._script(RELEASE, (self._own,), (ticket.key,)).addErrback(self._lost)

    # Keeping Redis' counts true

    def beat(self) -> Deferred[Any] | None:
        """
        A heartbeat, which Redis answered: keep this node's counts alive for
        another TTL, or write them again if Redis may disagree (or lost
        them).
        """
        self._together()
        if self._dirty:
            return self.reconcile()
        if not self._counts():
            return None

        def check(reply: object) -> None:
            if reply in (0, b"0"):
                self.reconcile()  # the hash expired (Redis was away long)

        return self._link.call("PEXPIRE", self._own, self._ttl_ms).addCallbacks(check, self._lost)

    def reconcile(self) -> Deferred[Any]:
        """
        Rewrite this node's hash from its own counts (a new epoch).
        """
        self._dirty = False
        self._epoch += 1
        args: list[object] = [self._node, self._ttl_ms]
        for key, count in self._counts().items():
            args += [key, count]
        return self._script(RECONCILE, (self._own, self._members), tuple(args)).addErrback(
            self._lost
        )

    def forget(self) -> Deferred[Any]:
        """
        This node stops: its counts go with it.
        """
        return self._send(("DEL", self._own))

    def _counts(self) -> dict[str, int]:
        return self._limits.counts() if self._limits is not None else {}

    def _lost(self, failure: Failure) -> None:
        # Redis may now disagree with this node's counts: the next beat
        # that reaches it writes them again.
        self._dirty = True

    def summary(self) -> dict[str, Any]:
        """
        For C{status.json}'s C{cluster} object.
        """
        return {"local_admissions": self.local, "limits_alone": self.alone}

    # Redis

    def _send(self, command: tuple[object, ...]) -> Deferred[Any]:
        sent = self._link.call(*command)
        sent.addErrback(self._lost)
        return sent

    def _script(
        self, script: str, keys: tuple[str, ...], args: tuple[object, ...]
    ) -> Deferred[Any]:
        """
        Run a script.  Always C{EVAL}, never C{EVALSHA}: a script Redis does
        not have (restarted, flushed) would have to be sent again after its
        C{NOSCRIPT} error, behind commands sent meanwhile, and the order of
        the admissions, releases and rewrites is what keeps the counts true.
        Redis compiles a script once and finds it again by its digest.
        """
        return self._link.call("EVAL", script, len(keys), *keys, *args)


def _number(value: float) -> str:
    """
    A number as Lua's C{tonumber} reads it.
    """
    return repr(float(value))
