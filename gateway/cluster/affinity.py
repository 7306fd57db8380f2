"""
The cluster's shared affinity (C{--affinity-ttl}): L{SharedAffinity}, the
L{gateway.pool.affinity.AffinityStore} kept in Redis.

One string per pool and session key, C{CLUSTER:affinity:POOL:k:KEY} for a
key of C{A-Z a-z 0-9 . _ : - @} only (at most L{READABLE_KEY} bytes), else
C{CLUSTER:affinity:POOL:x:HEX} (the key's bytes in hex), whose value is the
backend's name, set with C{PX} the TTL on every connect (so a key in use
keeps its backend), and read with one C{GET} when a keyed session starts.
Both go through the node's L{RedisLink}: a lookup has C{--cluster-timeout},
and fails at once while Redis is known to be away; a remember is sent and
forgotten (a longer timeout: nothing waits on it, and a slow answer should
not mark Redis away for the lookups).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from gateway.pool.affinity import RESULTS

if TYPE_CHECKING:
    # Only a type: importing the link imports txredisapi, which installs a
    # reactor (the key format is tested without one).
    from gateway.cluster.link import RedisLink

__all__ = ["READABLE_KEY", "REMEMBER_TIMEOUT", "SharedAffinity", "affinity_key"]

READABLE_KEY = 128
"""The longest session key kept as it is in a Redis key (a longer one is in hex)."""

REMEMBER_TIMEOUT = 2.0
"""Seconds a remember (C{SET}) may take; nothing waits on it."""

_READABLE = re.compile(rb"[A-Za-z0-9._:@-]+")


def affinity_key(cluster: str, pool: str, key: bytes) -> str:
    """
    The Redis key that remembers C{key}'s backend in C{pool} (see the
    module's docstring).
    """
    if len(key) <= READABLE_KEY and _READABLE.fullmatch(key):
        return f"{cluster}:affinity:{pool}:k:{key.decode('ascii')}"
    return f"{cluster}:affinity:{pool}:x:{key.hex()}"


class SharedAffinity:
    """
    Affinity kept in the cluster's Redis (see the module's docstring).

    @ivar timeout: seconds a session waits for a lookup (C{--cluster-timeout}).
    @ivar ttl: seconds a key's backend is remembered after its last connect.
    @ivar counts: how lookups ended, by result (L{RESULTS}).
    @ivar remember_failures: remembers Redis did not take.
    """

    def __init__(self, link: RedisLink, cluster: str, *, ttl: float, timeout: float) -> None:
        """
        @param link: the node's connection to Redis.
        @param cluster: the cluster's name (the keys' prefix).
        """
        self._link = link
        self._cluster = cluster
        self.ttl = ttl
        self.timeout = timeout
        self.counts = dict.fromkeys(RESULTS, 0)
        self.remember_failures = 0

    def lookup(self, pool: str, key: bytes) -> Deferred[str | None]:
        """
        The backend C{key} was last sent to in C{pool}, if Redis remembers one.
        """
        asked = self._link.call(
            "GET", affinity_key(self._cluster, pool, key), timeout=self.timeout
        )
        return asked.addCallback(_text)

    def remember(self, pool: str, key: bytes, backend: str) -> None:
        """
        C{key} was sent to C{backend}: remember it for L{ttl}.
        """
        told = self._link.call(
            "SET",
            affinity_key(self._cluster, pool, key),
            backend,
            "PX",
            str(max(1, round(self.ttl * 1000))),
            timeout=REMEMBER_TIMEOUT,
        )
        told.addErrback(self._not_remembered)

    def _not_remembered(self, failure: object) -> None:
        # Not the session's concern; the link logs Redis going away.
        self.remember_failures += 1

    def count(self, result: str) -> None:
        """
        A lookup ended with C{result}.
        """
        self.counts[result] += 1

    def summary(self) -> dict[str, Any]:
        """
        For C{status.json}'s C{cluster} object: the TTL and the counts.
        """
        return {"ttl": self.ttl, **self.counts, "remember_failures": self.remember_failures}


def _text(reply: object) -> str | None:
    """
    A C{GET} reply as text (txredisapi gives text or bytes; L{None} for none).
    """
    if reply is None:
        return None
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
