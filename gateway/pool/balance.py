"""
Balancing policies: which of the available backends gets a new session.

Each policy is an L{IBalancer}: it is given the backends that may take the
session (up, not already tried by it) in configured order, and the session's
key, and returns one.  Weights are data on the backends (C{Backend.weight}).

  - L{RoundRobin}: smooth weighted round-robin (as nginx does it): over any
    window, each backend gets sessions in proportion to its weight, and a
    heavier backend's turns are spread out rather than bunched.
  - L{LeastConnections}: the backend with the fewest active sessions per unit
    of weight; ties go round-robin, so equal backends share evenly.
  - L{RendezvousHash}: highest-random-weight (rendezvous) hashing of the key
    against each backend's name, weighted.  The same key goes to the same
    backend while that backend is available; adding or removing one of N
    backends moves only the keys that belonged to it (about 1/N of them); and
    because it depends only on the key and the names, several gateways with the
    same backend list send a key to the same backend without sharing state.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from zope.interface import implementer

from gateway.interfaces import IBalancer

if TYPE_CHECKING:
    from gateway.pool.backend import Backend

__all__ = ["BALANCERS", "LeastConnections", "RendezvousHash", "RoundRobin", "make_balancer"]


@implementer(IBalancer)
class RoundRobin:
    """
    Smooth weighted round-robin.
    """

    needs_key = False

    def __init__(self) -> None:
        # Backend -> its running "current weight"; entries of backends that
        # left the pool are dropped once the table has grown well past the
        # candidates.
        self._current: dict[Backend, float] = {}

    def choose(self, candidates: Sequence[Backend], key: bytes | None) -> Backend:
        total = 0.0
        best: Backend | None = None
        best_weight = -math.inf
        current = self._current
        for backend in candidates:
            weight = backend.weight
            total += weight
            value = current.get(backend, 0.0) + weight
            current[backend] = value
            if value > best_weight:
                best, best_weight = backend, value
        assert best is not None, "choose() needs at least one candidate"
        current[best] = best_weight - total
        if len(current) > 4 * len(candidates) + 16:
            keep = set(candidates)
            self._current = {k: v for k, v in current.items() if k in keep}
        return best


@implementer(IBalancer)
class LeastConnections:
    """
    Fewest active sessions per unit of weight; ties round-robin.
    """

    needs_key = False

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[Backend], key: bytes | None) -> Backend:
        assert candidates, "choose() needs at least one candidate"
        load = min(backend.active / backend.weight for backend in candidates)
        tied = [backend for backend in candidates if backend.active / backend.weight == load]
        self._turn += 1
        return tied[self._turn % len(tied)]


@implementer(IBalancer)
class RendezvousHash:
    """
    Weighted rendezvous hashing of the session key over the backends' names.
    """

    needs_key = True

    def choose(self, candidates: Sequence[Backend], key: bytes | None) -> Backend:
        assert candidates, "choose() needs at least one candidate"
        key = key or b""
        best: Backend | None = None
        best_score = -math.inf
        for backend in candidates:
            digest = hashlib.blake2b(
                key, digest_size=8, person=b"gw-rdv", salt=_salt(backend.name)
            ).digest()
            # A uniform number u in (0, 1), then the weighted score of
            # "Weighted distributed hash tables" (Schindelhauer, Schomaker):
            # -weight / ln(u) is largest for the winner.  ln(u) is computed as
            # log1p(-(1 - u)) so that u close to 1 never rounds to ln(1) = 0.
            complement = (2**64 - int.from_bytes(digest, "big")) / (2**64 + 1)
            score = backend.weight / -math.log1p(-complement)
            if score > best_score:
                best, best_score = backend, score
        assert best is not None
        return best


def _salt(name: str) -> bytes:
    """
    A 16-byte salt from a backend's name (blake2b's salt is at most 16 bytes).
    """
    return hashlib.blake2b(name.encode(), digest_size=16).digest()


BALANCERS = {
    "roundrobin": RoundRobin,
    "leastconn": LeastConnections,
    "hash": RendezvousHash,
}
"""The C{--balance} choices."""


def make_balancer(name: str) -> IBalancer:
    """
    The balancer called C{name} (a C{--balance} value).

    @raise KeyError: no such balancer.
    """
    balancer: IBalancer = BALANCERS[name]()
    return balancer
