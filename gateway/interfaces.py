"""
The interfaces where the gateway's parts meet.

A game session asks an L{IBackendChooser} for a backend; the pool is one, and a
test or a future balancing policy can be another.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from gateway.pool.backend import Backend

__all__ = ["IAddressPolicy", "IBackendChooser", "IBalancer", "IRefusal"]


class IBackendChooser(Interface):
    """
    Picks the backend for a new game session.
    """

    needs_key = Attribute("Whether choose() uses the session key (then it is worth waiting for).")

    def choose(
        exclude: Collection[Backend],
        key: bytes | None = None,
        blocked: int = 0,
        patient: bool = False,
    ) -> Backend | None:
        """
        The backend for the next connection attempt.

        @param exclude: backends this session already tried; never chosen again.
        @param key: the session's affinity key (see L{IBalancer}), if any.
        @param blocked: slots of each limited backend the session may not
            take (reserved for waiting-room classes above its own).
        @param patient: whether the session may wait in the waiting room for
            its own backend (with a policy that uses keys).
        @return: a backend that accepts new sessions, or L{None} when none is left.
        """

    def attempt_failed(backend: Backend) -> None:
        """
        A connection attempt to C{backend} failed (passive health detection).
        """

    def attempt_succeeded(backend: Backend) -> None:
        """
        A connection attempt to C{backend} succeeded.
        """

    def nothing_available() -> None:
        """
        A session found no backend to try (all down, draining or tried).
        """


class IBalancer(Interface):
    """
    A balancing policy: picks one backend among those that may take a session.
    """

    needs_key = Attribute("Whether the policy uses the session key.")

    def choose(candidates: Sequence[Backend], key: bytes | None) -> Backend:
        """
        Pick one of C{candidates} (never empty; in configured order).

        @param key: the session's affinity key: the first group of
            C{--session-key} in the client's first line, or the client's
            address; L{None} when the policy does not need one.
        """


class IAddressPolicy(Interface):
    """
    A limit on the connections from one client address (by its key, see
    L{gateway.front.limits.address_key}).  Time is passed in, never read.
    """

    reason = Attribute("The L{gateway.front.limits.Refusal} counted when this policy refuses.")

    def allows(key: str, now: float, share: int = 1) -> bool:
        """
        Whether a new connection from C{key} may be admitted at C{now}.

        @param share: how many nodes' worth of the limit this node decides
            alone (a cluster without Redis): the limit is divided by it.
        """

    def acquire(key: str, now: float, share: int = 1) -> None:
        """
        Count an admitted connection from C{key} (taking C{share} of a
        divided limit's allowance, see L{allows}).
        """

    def release(key: str) -> None:
        """
        An admitted connection from C{key} ended.
        """


class IRefusal(Interface):
    """
    Marks a protocol that answers a refused connection: it holds no slot of
    the total cap (the slot it was counted in is given back at once).
    """
