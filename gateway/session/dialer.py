"""
Finding a backend for a game session: the connection attempts, in turn.

A L{Dialer} asks the pool for a backend and connects with a timeout that
covers the TCP connection and, for a C{tls:} backend, the TLS handshake
(certificate and hostname checks included).  A refused, failed or timed-out
attempt is counted on that backend, logged with its reason, and the next
backend is tried, until every backend allowed by the retries was tried once;
then the session is told there is no backend.  An attempt that fails for a
reason of the gateway's own (L{gateway.session.backendlink.LOCAL_ERRNOS}: out
of file descriptors, buffers, memory or local ports) says nothing about the
backend: it is not counted on it, and the session is told at once, since every
other backend would need the same resources.

A session counts on its backend (C{Backend.active}) from the moment the
backend is chosen for it, not from when its connection completes: a burst
of arrivals must see the sessions chosen before it, or C{--balance
leastconn} would see equal loads and fall back to rotation.  An attempt that
ends without a session (failed, timed out, abandoned) uncounts it; the
session uncounts a taken one when its backend connection ends.  A taken
attempt's connect time goes to the backend's histogram
(C{Backend.connect_time}).

The attempts' protocol is a L{BackendLink} whose events go to the session
(L{DialerOwner}); the session hands the attempt-related ones back here
(L{Dialer.take}, L{Dialer.link_failed}).  On the TCP fast path (a session
that will splice, to a backend with a L{Backend.address}), the attempt is a
L{gateway.session.leanlink.LeanLink} instead: a bare socket, connected without
an endpoint, that reports its failure here the same way; the rest of this
module does not tell the two apart.

With an affinity shared with other gateways (C{--cluster}: the pool's
L{gateway.pool.affinity.AffinityStore}), a policy that uses keys and a
session with a key, the first choice waits for one lookup of the backend
the key was last sent to (at most the store's timeout): that backend is
tried first if it takes the session here (L{Pool.remembered}); otherwise,
or if the store did not answer, the pool chooses as always.  The backend
that takes the session is remembered (L{Dialer.take}); retries choose as
always.

With seats shared with other gateways (C{--cluster}: the pool's
L{gateway.pool.seats.SeatStore}), a chosen backend that needs one is claimed
before it is connected to (at most the store's timeout): a backend full
through the other nodes is uncounted and the next is chosen; at the
cluster's cap the session is refused (L{DialerOwner.capped}).  The seat
(L{Dialer.seat}) goes with the session, which gives it back when its
backend connection ends; a failed attempt gives it back at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from typing import Protocol as Structural

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.connection import OneShotFactory
from gateway.interfaces import IBackendChooser
from gateway.pool.affinity import AffinityStore, Lookup
from gateway.pool.seats import Seat, SeatAnswer, SeatStore
from gateway.session.backendlink import (
    BackendLink,
    Link,
    LinkOwner,
    describe_failure,
    local_shortage,
)
from gateway.session.leanlink import LeanLink

if TYPE_CHECKING:
    from gateway.pool.backends import Backend
    from gateway.session.settings import SessionSettings

__all__ = ["Dialer", "DialerOwner"]


class _Attempt(Structural):
    """
    A connection attempt that can be given up: the Deferred of an endpoint's
    C{connect}, or a L{LeanLink} connecting.
    """

    def cancel(self) -> None:
        """
        Give up: the attempt fails with a cancellation.
        """


class DialerOwner(LinkOwner, Structural):
    """
    What a L{Dialer} asks and tells its session.
    """

    @property
    def client_gone(self) -> bool:
        """
        Whether the client has left (then attempts are abandoned).
        """
        ...

    def no_backend(self, detail: str, tried: str) -> None:
        """
        Every backend allowed was tried, or none is up (or has room): the
        client waits, or is refused (then counted as unserved on the pool).

        @param detail: what happened, for the refusal log.
        @param tried: the names of the backends tried (C{"none up"} if none).
        """

    def short_of_resources(self, detail: str) -> None:
        """
        An attempt failed for want of the gateway's own resources: refuse the
        client.
        """

    def capped(self, detail: str) -> None:
        """
        The cluster's cap on game sessions is reached: refuse the client.
        """


class Dialer:
    """
    The connection attempts of one session, one at a time.

    @ivar tried: the backends tried so far, in order.
    @ivar seat: the shared seat of the pending or taken attempt, if any.
    """

    # Slots: one dialer per live session (see GameSession).
    __slots__ = (
        "_attempt",
        "_attempt_timer",
        "_blocked",
        "_chooser",
        "_claiming",
        "_patient",
        "_clock",
        "_connect_timeout",
        "_dialed_at",
        "_fast_path",
        "_key",
        "_lookup",
        "_owner",
        "_peer",
        "_pending",
        "_retries",
        "seat",
        "tried",
    )

    _log = Logger()

    def __init__(
        self,
        owner: DialerOwner,
        chooser: IBackendChooser,
        clock: IReactorTime,
        settings: SessionSettings,
        *,
        key: bytes | None,
        peer: str,
        blocked: int = 0,
        patient: bool = False,
        fast_path: bool = False,
    ) -> None:
        """
        @param owner: the session, which hears of every event.
        @param chooser: picks backends (the pool).
        @param clock: for the attempts' timeouts.
        @param settings: the connect timeout and retries.
        @param key: the session's affinity key, for a balancer that uses one.
        @param peer: the client's address, for logs.
        @param blocked: slots of each backend the session may not take
            (reserved for waiting-room classes above its own).
        @param patient: whether the session may wait for a seat (then a
            keyed pool offers only the key's own backend).
        @param fast_path: whether a backend with a bare address is connected
            on the TCP fast path (a session that will splice); C{clock} is
            then the reactor.
        """
        self._owner = owner
        self._chooser = chooser
        self._clock = clock
        self._connect_timeout = settings.connect_timeout
        self._retries = settings.retries
        self._key = key
        self._peer = peer
        self._blocked = blocked
        self._patient = patient
        self._fast_path = fast_path
        self.tried: list[Backend] = []
        self._pending: Link | None = None
        self._attempt: _Attempt | None = None
        self._attempt_timer: IDelayedCall | None = None
        self._dialed_at = 0.0
        # The shared affinity's lookup: None before it is asked, True once answered.
        self._lookup: Lookup | bool | None = None
        # The backend whose shared seat is being claimed.
        self._claiming: Backend | None = None
        self.seat: Seat | None = None

    def _shared_affinity(self) -> AffinityStore | None:
        """
        The pool's shared affinity, if this session uses one: it has a key
        and its pool a policy that uses keys.
        """
        store: AffinityStore | None = getattr(self._chooser, "affinity", None)
        if store is None or not self._key or not self._chooser.needs_key:
            return None
        return store

    def connect_next(self) -> None:
        """
        Try the next backend the pool chooses, or give up.  The first time,
        with a shared affinity, ask it first (see the module's docstring).
        """
        if self._lookup is None and not self.tried:
            store = self._shared_affinity()
            if store is not None:
                assert self._key is not None
                pool = getattr(self._chooser, "name", "")
                lookup = Lookup(
                    store,
                    self._clock,
                    pool,
                    self._key,
                    lambda name, failed: self._looked_up(store, name, failed),
                )
                # An answer given at once has already gone on.
                self._lookup = True if lookup.done else lookup
                return
        self._choose_next()

    def _looked_up(self, store: AffinityStore, name: str | None, failed: bool) -> None:
        """
        The shared affinity answered (or did not in time): try the backend it
        names if it takes the session here, else choose as always.
        """
        self._lookup = True
        backend = None
        if failed:
            result = "failed"
        elif name is None:
            result = "none"
        else:
            chooser: Any = self._chooser
            backend = chooser.remembered(name, self._blocked)
            result = "used" if backend is not None else "overridden"
        store.count(result)
        if backend is not None:
            self.dial(backend)
        else:
            self._choose_next()

    def _choose_next(self) -> None:
        backend = None
        if len(self.tried) <= self._retries:
            backend = self._chooser.choose(self.tried, self._key, self._blocked, self._patient)
        if backend is None:
            self._give_up()
            return
        self.dial(backend)

    def dial(self, backend: Backend) -> None:
        """
        Try C{backend} (the pool's choice, or the waiting room's), counting
        the session on it at once.
        """
        self.tried.append(backend)
        backend.active += 1  # uncounted by _stop_attempt unless taken
        store: SeatStore | None = getattr(self._chooser, "seats", None)
        if store is not None and store.applies(backend):
            self._claiming = backend
            store.claim(backend).addCallback(self._claimed, backend)
            return
        self._connect(backend)

    def _claimed(self, answer: tuple[SeatAnswer, Seat | None], backend: Backend) -> None:
        """
        The shared seat's answer: connect, or choose again, or refuse.
        """
        result, seat = answer
        if self._claiming is not backend:
            # Abandoned meanwhile (the session uncounted it then).
            if seat is not None:
                seat.release()
            return
        self._claiming = None
        if result is SeatAnswer.TAKEN:
            self.seat = seat
            self._connect(backend)
            return
        backend.active -= 1
        if result is SeatAnswer.CAPPED:
            self._owner.capped("the cluster's cap on game sessions is reached")
        else:
            self.connect_next()  # full through the other nodes: the pool now sees it

    def _connect(self, backend: Backend) -> None:
        address = backend.address if self._fast_path else None
        if address is not None:
            lean = LeanLink(self._owner, backend, self._clock, self._connect_failed)
            self._start_attempt(lean)
            self._attempt = lean
            lean.connect(address)
            return
        link = BackendLink(self._owner, backend)
        self._start_attempt(link)
        attempt = backend.endpoint.connect(OneShotFactory(link))
        if self._pending is link:
            # Still pending: the endpoint did not answer synchronously.
            self._attempt = attempt
        attempt.addErrback(self._connect_failed, link)

    def _start_attempt(self, link: Link) -> None:
        """
        C{link} is the pending attempt, timed from now.
        """
        self._pending = link
        self._dialed_at = self._clock.seconds()
        self._attempt_timer = self._clock.callLater(
            self._connect_timeout, self._attempt_timed_out, link
        )

    def abandon(self) -> None:
        """
        Stop the pending attempt, if any (the client left, or the session
        was closed before a backend took it: a shutdown, a WebSocket
        protocol error): an open connection is aborted, one still connecting
        is cancelled.  The attempt is forgotten first, so the failure this
        causes is the session's, not the backend's: it is neither counted
        nor logged, and no other backend is tried.
        """
        lookup = self._lookup
        if isinstance(lookup, Lookup):
            lookup.cancel()  # its answer, if it comes, is ignored
            self._lookup = True
        claiming, self._claiming = self._claiming, None
        if claiming is not None:
            claiming.active -= 1  # its seat, if taken, is given back on the answer
        link, attempt = self._pending, self._attempt
        if link is None:
            return
        self._stop_attempt(link)
        if link.transport is not None:
            link.transport.abortConnection()
        elif attempt is not None:
            attempt.cancel()

    def take(self, link: Link) -> bool:
        """
        C{link} is usable: end its attempt, and count it as a success (the
        session stays counted on its backend, and the attempt's time goes to
        the backend's connect time histogram).

        @return: whether the session is to use it (it is the pending attempt,
            and the client is still there; if the client left, the link's
            connection is closed).
        """
        if self._pending is not link:
            return False
        if self._owner.client_gone:
            self._stop_attempt(link)
            link.transport.loseConnection()
            return False
        self._stop_attempt(link, taken=True)
        backend = link.backend
        backend.connect_time.observe(self._clock.seconds() - self._dialed_at)
        self._chooser.attempt_succeeded(backend)
        store = self._shared_affinity()
        if store is not None:
            assert self._key is not None
            store.remember(backend.pool, self._key, backend.name)
        return True

    def link_failed(self, link: Link, reason: Failure) -> None:
        """
        C{link}'s connection was lost before it was usable (a failed attempt,
        e.g. a TLS verification error, or a handshake timeout).
        """
        self._attempt_failed(link, link.failure_reason or describe_failure(reason))

    def _give_up(self) -> None:
        tried = ", ".join(b.name for b in self.tried) or "none up"
        self._owner.no_backend(f"no backend available; tried: {tried}", tried)

    def _attempt_timed_out(self, link: Link) -> None:
        self._attempt_timer = None
        if link.transport is None:
            # Still connecting at the TCP level: cancelling fails the attempt.
            if self._attempt is not None:
                self._attempt.cancel()
        else:
            link.failure_reason = f"TLS handshake not done within {self._connect_timeout:g} s"
            link.transport.abortConnection()

    def _connect_failed(self, failure: Failure, link: Link) -> None:
        if failure.check(CancelledError, ConnectingCancelledError):
            reason = f"no connection within {self._connect_timeout:g} s"
        elif local_shortage(failure):
            self._short_of_resources(link, describe_failure(failure))
            return
        else:
            reason = describe_failure(failure)
        self._attempt_failed(link, reason)

    def _short_of_resources(self, link: Link, reason: str) -> None:
        """
        The attempt on C{link} failed for want of the gateway's own resources:
        refuse the session, and leave the backend's state and counters alone
        (the shortage says nothing about it; counting it would take healthy
        backends down).  Other backends are not tried: they would need the
        same descriptor, buffer or port.
        """
        if not self._stop_attempt(link) or self._owner.client_gone:
            return
        self._owner.short_of_resources(
            f"the gateway is short of resources; backend {link.backend.name}: {reason}"
        )

    def _stop_attempt(self, link: Link, *, taken: bool = False) -> bool:
        """
        Forget the pending attempt on C{link}, and unless the session takes
        it, uncount the session on its backend.

        @return: whether C{link} was the pending attempt.
        """
        if self._pending is not link:
            return False
        if not taken:
            link.backend.active -= 1
            seat, self.seat = self.seat, None
            if seat is not None:
                seat.release()
            # The seat is free again; a waiter may have it, after a pause
            # (not at once: this backend may be refusing everyone).
            room = getattr(self._chooser, "room", None)
            if room is not None:
                room.kick_later()
        self._pending = None
        self._attempt = None
        if self._attempt_timer is not None:
            if self._attempt_timer.active():
                self._attempt_timer.cancel()
            self._attempt_timer = None
        return True

    def _attempt_failed(self, link: Link, reason: str) -> None:
        if not self._stop_attempt(link) or self._owner.client_gone:
            # A stale attempt, or one we gave up ourselves because the client left.
            return
        self._chooser.attempt_failed(link.backend)
        self._log.warn(
            "backend {backend} failed for a session from {peer}: {reason}",
            backend=link.backend.name,
            peer=self._peer,
            reason=reason,
        )
        self.connect_next()
