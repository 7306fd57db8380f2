"""
The interfaces where the gateway's parts meet.

A game session asks an L{IBackendChooser} for a backend; the pool is one, and a
test or a future balancing policy can be another.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from gateway.pool import Backend

__all__ = ["IBackendChooser"]


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
