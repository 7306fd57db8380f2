"""
The interfaces where the gateway's parts meet.

A game session asks an L{IBackendChooser} for a backend; the pool is one, and a
test or a future balancing policy can be another.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from gateway.pool import Backend

__all__ = ["IAddressPolicy", "IBackendChooser"]


class IBackendChooser(Interface):
    """
    Picks the backend for a new game session.
    """

    def choose(exclude: Collection[Backend]) -> Backend | None:
        """
        The backend for the next connection attempt.

        @param exclude: backends this session already tried; never chosen again.
        @return: a backend that accepts new sessions, or L{None} when none is left.
        """


class IAddressPolicy(Interface):
    """
    A limit on the connections from one client address (by its key, see
    L{gateway.limits.address_key}).  Time is passed in, never read.
    """

    reason = Attribute("The L{gateway.limits.Refusal} counted when this policy refuses.")

    def allows(key: str, now: float) -> bool:
        """
        Whether a new connection from C{key} may be admitted at C{now}.
        """

    def acquire(key: str, now: float) -> None:
        """
        Count an admitted connection from C{key}.
        """

    def release(key: str) -> None:
        """
        An admitted connection from C{key} ended.
        """
