"""
Affinity shared with other gateways: which backend a session key was last
sent to, asked once at a session's start (L{Lookup}) and told once it is
connected.

The pool and the sessions see the shared memory through a structural
interface, L{AffinityStore}: the cluster's (L{gateway.cluster.affinity})
keeps it in Redis, and the session code does not import the cluster (whose
client library installs a reactor when it is imported).  A L{Lookup}
answers once, and at the latest C{store.timeout} seconds after it was asked,
on the session's clock: whatever the store does, a session never waits
longer for it.

A lookup ends in one of L{RESULTS}, a closed vocabulary counted by the
store for C{status.json} and C{/metrics}:

  - C{used}: the remembered backend is up here and took the session;
  - C{overridden}: a backend was remembered, but this node cannot use it
    (not in the pool, down, draining, or without a free seat for the
    session), so the pool chose as it does without a cluster;
  - C{none}: nothing was remembered for the key (or it expired);
  - C{failed}: the store did not answer in time, or failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

__all__ = ["RESULTS", "AffinityStore", "Lookup"]

RESULTS = ("used", "overridden", "none", "failed")
"""How a lookup ended (see the module's docstring)."""


class AffinityStore(Protocol):
    """
    Where the backend a session key was last sent to is remembered, for
    every gateway of a cluster.

    @ivar timeout: the most seconds a session waits for L{lookup}.
    """

    timeout: float

    def lookup(self, pool: str, key: bytes) -> Deferred[str | None]:
        """
        The name of the backend of C{pool} that C{key} was last sent to.

        @return: the name, or L{None} if none is remembered; a failure if the
            store cannot tell.
        """
        ...

    def remember(self, pool: str, key: bytes, backend: str) -> None:
        """
        C{key}'s session reached C{backend} of C{pool}: remember it (without
        waiting, and without a failure being anyone's concern).
        """

    def count(self, result: str) -> None:
        """
        A lookup ended with C{result}, one of L{RESULTS}.
        """


class Lookup:
    """
    One session's lookup: the store's answer, or L{None} and C{failed} once
    C{store.timeout} has passed on C{clock}.

    @ivar done: whether it has answered (or was cancelled).
    """

    __slots__ = ("_answer", "_timer", "done")

    def __init__(
        self,
        store: AffinityStore,
        clock: IReactorTime,
        pool: str,
        key: bytes,
        answer: Callable[[str | None, bool], None],
    ) -> None:
        """
        Ask C{store} at once.

        @param answer: called once, with the remembered name (or L{None})
            and whether the lookup failed; maybe before this returns.
        """
        self.done = False
        self._answer = answer
        self._timer: IDelayedCall | None = clock.callLater(store.timeout, self._end, None, True)
        asked = store.lookup(pool, key)
        asked.addCallbacks(self._end, self._failed, callbackArgs=(False,))

    def _failed(self, failure: Failure) -> None:
        # Failures are the store's to log or count; here it is "unknown".
        self._end(None, True)

    def _end(self, name: str | None, failed: bool) -> None:
        if self.done:
            return  # a late answer after the timeout, or after a cancel
        self.cancel()
        self._answer(name, failed)

    def cancel(self) -> None:
        """
        Stop waiting: the answer, if it comes, is ignored.
        """
        self.done = True
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
