"""
Connections whose protocol is decided later: L{Later}, and L{Pending}, which
waits for the cluster's shared limits (a L{SharedAdmission}) to decide a
connection.

A pending connection is paused from the start and its first bytes are kept;
the decision hands it to the protocol it gets (the front door, or a
L{gateway.front.admission.Refuser}), which from then on gets every event
through it.  The wait is bounded by the shared limits' own timeout
(C{--cluster-timeout}): they never fail, they decide alone when Redis does
not answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from typing import Protocol as Structural

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from gateway.connection import CloseHooks
from gateway.front.limits import AddressLimits, Refusal

__all__ = ["Decision", "Gate", "Later", "Pending", "SharedAdmission", "Ticket"]


@implementer(IHalfCloseableProtocol)
class Later(Protocol):
    """
    A connection whose protocol is decided later: paused from the start,
    its first bytes kept, then handed to the protocol it is given
    (L{become}), which from then on gets every event through this object.
    """

    inner: IProtocol | None = None

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._early: list[bytes] = []

    def become(self, inner: IProtocol) -> None:
        """
        The decision: C{inner} serves the connection from now on.
        """
        self.inner = inner
        assert self.transport is not None
        inner.makeConnection(self.transport)
        early, self._early = self._early, []
        for data in early:
            inner.dataReceived(data)
        if not isinstance(inner, Later) or inner.inner is not None:
            # (A connection handed to another that is still deciding stays
            # paused: that one resumes it.)
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
        else:
            # Bytes read in the same event as the pause: keep them for later.
            self._early.append(data)

    def readConnectionLost(self) -> None:
        """
        Pass a half-close on, or close if the inner protocol cannot take one.
        """
        if self.inner is not None and IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.readConnectionLost()
        else:
            assert self.transport is not None
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Pass our half-close's completion on.
        """
        if self.inner is not None and IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.writeConnectionLost()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.inner is None:
            self.gone()
        else:
            self.inner.connectionLost(reason)

    def gone(self) -> None:
        """
        The connection was lost before the decision.
        """


@dataclass(slots=True)
class Ticket:
    """
    A connection admitted by a L{SharedAdmission}, for its release.

    @ivar key: its address key.
    @ivar counted: whether the shared count has it from its admission.
    @ivar epoch: the shared count's epoch it was admitted in (see
        L{gateway.cluster.admission}).
    @ivar holder: the local count it is in (the per-address cap it was
        counted in, or L{None}), which a rewrite of the shared count may
        have included.
    """

    key: str
    counted: bool
    epoch: int
    holder: object = None


class Decision(NamedTuple):
    """
    A shared admission's outcome: a refusal, or L{None} and the admitted
    connection's ticket.
    """

    refusal: Refusal | None
    ticket: Ticket | None


class SharedAdmission(Structural):
    """
    Limits decided with other nodes (L{gateway.cluster.admission.SharedLimits}).
    """

    def admit(self, key: str, limits: AddressLimits) -> Deferred[Decision]:
        """
        Decide a connection from C{key}; once admitted it is counted in
        C{limits} too.  Never fails: without the other nodes it decides
        alone.
        """

    def release(self, ticket: Ticket) -> None:
        """
        An admitted connection ended.
        """


class Gate(Structural):
    """
    What a L{Pending} connection needs of its address gate
    (L{gateway.front.admission.AddressGate}).
    """

    @property
    def shared(self) -> SharedAdmission | None:
        """
        The shared limits that decide.
        """

    def refuse(self, refusal: Refusal, addr: IAddress) -> IProtocol:
        """
        Count and log a refusal; the protocol that answers it.
        """

    def admitted(
        self, addr: IAddress | None, release: Callable[[], None] | None
    ) -> IProtocol | None:
        """
        The protocol of an admitted connection, C{release} run when it ends.
        """


class Pending(CloseHooks, Later):
    """
    A connection waiting for a L{SharedAdmission}'s decision (paused, for at
    most C{--cluster-timeout}).

    Its close hooks (the total cap's slot, L{gateway.front.admission.CapFactory})
    run when it is lost, or at once when it is refused, as for a connection
    refused by this node's own limits: a refused client must not hold a slot
    another address's client could use while its answer lingers.
    """

    def __init__(self, gate: Gate, addr: IAddress, key: str, limits: AddressLimits) -> None:
        CloseHooks.__init__(self)
        self._gate = gate
        self._addr = addr
        self._key = key
        self._limits = limits
        self._lost = False
        self._on_refusal: list[Callable[[], None]] = []
        self._answer_wraps: list[Callable[[IProtocol], IProtocol]] = []

    def when_refused(self, hook: Callable[[], None]) -> None:
        """
        Run C{hook} at once if the decision is a refusal (a layer outside the
        gate, such as the PROXY header reader, giving back the total cap's
        slot it holds).
        """
        self._on_refusal.append(hook)

    def answer_through(self, wrap: Callable[[IProtocol], IProtocol]) -> None:
        """
        A refusal's answer goes through C{wrap} (TLS, on an acceptor's
        C{tls:} front whose admitted connections its workers decrypt).
        """
        self._answer_wraps.append(wrap)

    @override
    def connectionMade(self) -> None:
        super().connectionMade()
        shared = self._gate.shared
        assert shared is not None
        shared.admit(self._key, self._limits).addCallback(self._decided, shared)

    def _decided(self, decision: Decision, shared: SharedAdmission) -> None:
        key, limits, ticket = self._key, self._limits, decision.ticket

        def release() -> None:
            limits.release(key)
            assert ticket is not None
            shared.release(ticket)

        if self._lost:
            if ticket is not None:
                release()  # admitted for a client that already left
            return
        if decision.refusal is not None:
            self.run_close_hooks()
            hooks, self._on_refusal = self._on_refusal, []
            for hook in hooks:
                hook()
            answer = self._gate.refuse(decision.refusal, self._addr)
            for wrap in self._answer_wraps:
                answer = wrap(answer)
            self.become(answer)
            return
        built = self._gate.admitted(self._addr, release)
        if built is None:
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self.become(built)

    @override
    def gone(self) -> None:
        self._lost = True

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        try:
            super().connectionLost(reason)
        finally:
            self.run_close_hooks()
