"""
A node's own counts kept in Redis for the other nodes: L{NodeCounts}, the
part that the cluster's shared limits (L{gateway.cluster.admission}) and
shared seats (L{gateway.cluster.seats}) have in common.

Each node keeps its counts in a hash of its own, C{NAME:KIND:NODE} (a field
per thing counted), which expires C{--cluster-ttl} after its last update or
heartbeat: the counts of a node that died stop counting within the TTL, and
a node that stops cleanly deletes it.  The set C{NAME:KIND-nodes} lists the
nodes that may have such a hash, for the scripts that add them up (they drop
the nodes whose hash expired).  The scripts that decide and count are the
subclasses'; taking a count off (L{RELEASE}) and rewriting the hash
(L{RECONCILE}) are here.

The node's own counts are always kept locally too (L{NodeCounts.counts}).
Whenever Redis may disagree with them (something decided without Redis, a
command that timed out or failed, an expired hash), the node's hash is
rewritten from them (L{RECONCILE}) before the next question to Redis, and at
the next heartbeat.  Each rewrite starts an B{epoch}; what was counted
carries whether Redis counted it and in which epoch, so that taking it off
happens exactly when Redis has it (counted by its script, or alive when a
rewrite was sent), and a count whose script ran before a rewrite but was
answered after it is added again (the rewrite could not include it).

Every script is sent whole (C{EVAL}, never C{EVALSHA}): a script Redis does
not have (restarted, flushed) would have to be sent again after its
C{NOSCRIPT} error, behind commands sent meanwhile, and the order of the
counts, releases and rewrites is what keeps the counts true.  Redis compiles
a script once and finds it again by its digest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.link import RedisLink

__all__ = ["RECONCILE", "RELEASE", "NodeCounts"]

RELEASE = """
for i = 1, #ARGV do
  local count = redis.call('HINCRBY', KEYS[1], ARGV[i], -1)
  if count <= 0 then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 1
"""
"""Take one off each field.  KEYS: this node's hash.  ARGV: the fields."""

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
set of nodes.  ARGV: node, TTL in ms, then field and count pairs."""


class NodeCounts:
    """
    This node's counts of one kind in Redis (see the module's docstring).

    @ivar local: decisions taken without Redis so far.
    @ivar alone: whether decisions are being taken without Redis now.
    """

    _log = Logger()

    ALONE = (
        "cluster: decided by this node alone ({share} live node(s)), until Redis answers ({why})"
    )
    """Logged once when Redis stops answering (C{share}, C{why})."""

    TOGETHER = "cluster: shared again ({count} decided by this node alone so far)"
    """Logged once when Redis answers again (C{count})."""

    def __init__(
        self,
        link: RedisLink,
        clock: IReactorTime,
        *,
        cluster: str,
        node: str,
        kind: str,
        ttl: float,
        live_nodes: Callable[[], int],
    ) -> None:
        """
        @param kind: what is counted, in the keys' names.
        @param ttl: seconds after which a dead node's counts stop counting.
        @param live_nodes: the number of nodes last seen alive (this one
            included).
        """
        self._link = link
        self._clock = clock
        self._node = node
        self._ttl_ms = str(max(1, int(ttl * 1000)))
        self._live_nodes = live_nodes
        self._own = f"{cluster}:{kind}:{node}"
        self._members = f"{cluster}:{kind}-nodes"
        self._prefix = f"{cluster}:{kind}:"
        self.local = 0
        self.alone = False
        self._epoch = 0
        self._dirty = False

    def counts(self) -> dict[str, int]:
        """
        This node's own counts, by field (the truth Redis is rewritten from).
        """
        raise NotImplementedError

    def share(self) -> int:
        """
        How many nodes' worth of the limits this node decides alone.
        """
        return max(1, self._live_nodes())

    # A question to Redis

    def asking(self) -> int:
        """
        Before a question whose answer counts: the hash is rewritten first
        if Redis may disagree (sent first, run first).

        @return: the epoch the question is sent in.
        """
        if self._dirty:
            self.reconcile()
        return self._epoch

    def answered(self, fields: tuple[str, ...], counted: bool, epoch: int) -> int:
        """
        Redis answered a question sent in C{epoch}; if it counted C{fields}
        before a rewrite that could not include them, count them again.

        @return: the epoch the count belongs to now.
        """
        self._together()
        if counted and epoch != self._epoch:
            for field in fields:
                self._send(("HINCRBY", self._own, field, 1))
            # The rewrite may have had nothing to write: no TTL, not listed.
            self._send(("PEXPIRE", self._own, self._ttl_ms))
            self._send(("SADD", self._members, self._node))
        return self._epoch

    def unanswered(self, failure: Failure) -> int:
        """
        Redis did not answer a question: this node decides alone (logged
        once), and Redis may disagree now (a question that timed out may
        still have counted).

        @return: the epoch of what is counted alone.
        """
        self._dirty = True
        self.local += 1
        if not self.alone:
            self.alone = True
            self._log.warn(self.ALONE, share=self.share(), why=failure.getErrorMessage())
        return self._epoch

    def _together(self) -> None:
        if self.alone:
            self.alone = False
            self._log.info(self.TOGETHER, count=self.local)

    def release(
        self, fields: tuple[str, ...], counted: bool, epoch: int, rewritten: bool = True
    ) -> None:
        """
        What was counted ends: take it off Redis' count if Redis has it:
        its question counted it and no rewrite came since, or the last
        rewrite included it.

        @param rewritten: whether the last rewrite's counts included it
            (by default, what is counted is always in L{counts}).
        """
        if counted if epoch == self._epoch else rewritten:
            self.script(RELEASE, (self._own,), fields).addErrback(self._lost)

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
        if not self.counts():
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
        for field, count in self.counts().items():
            args += [field, count]
        return self.script(RECONCILE, (self._own, self._members), tuple(args)).addErrback(
            self._lost
        )

    def forget(self) -> Deferred[Any]:
        """
        This node stops: its counts go with it.
        """
        return self._send(("DEL", self._own))

    def _lost(self, failure: Failure) -> None:
        # Redis may now disagree with this node's counts: the next question
        # or beat that reaches it writes them again.
        self._dirty = True

    def _send(self, command: tuple[object, ...]) -> Deferred[Any]:
        sent = self._link.call(*command)
        sent.addErrback(self._lost)
        return sent

    def script(
        self, script: str, keys: tuple[str, ...], args: tuple[object, ...]
    ) -> Deferred[Any]:
        """
        Run a script (always sent whole: see the module's docstring).
        """
        return self._link.call("EVAL", script, len(keys), *keys, *args)
