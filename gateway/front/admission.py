"""
Admission: the factories that apply the connection limits to connections.

A listener's factory chain is, from the outside in::

    CapFactory  ->  [ProxyHeaderFactory]  ->  AddressGate  ->  GatewayFactory

  - L{CapFactory} applies the total cap (L{gateway.front.limits.TotalCap}) to every
    accepted connection.  At the cap, with C{--overflow reject}, the new
    connection gets a L{Refuser}; with C{--overflow queue}, the gateway stops
    accepting on every front (the listening sockets stay open, so new clients
    wait in the kernel's backlog) and resumes as soon as a slot frees.  The
    few connections the kernel had already handed over in the same accept
    batch wait, paused, in a first-in first-out L{Held} queue, ahead of the
    backlog.
  - L{AddressGate} applies the per-address policies once the real client
    address is known: at C{buildProtocol} for a plain front, or after the
    PROXY header for a C{haproxy:} front (L{gateway.front.proxyheader}).
    In a cluster the decision is Redis' (a L{SharedAdmission}): the
    connection gets a L{gateway.front.pending.Pending} protocol, paused, until the answer (at most
    C{--cluster-timeout}) says which protocol it gets.
  - A L{Refuser} answers a refused connection the way its client understands:
    an HTTP client gets C{503 Service Unavailable} with C{Retry-After}; a game
    client is closed, after the optional one-line busy message.

Every refusal is counted and logged through the L{RefusalLog}.  A slot is
released when the connection it was given to is lost, through the close hooks
that every protocol of ours offers (L{gateway.connection.CloseHooks}), so no
wrapper sits on the data path of admitted connections.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol as Structural
from typing import cast

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import alsoProvides, implementer

from gateway.connection import CloseHooks, describe_peer
from gateway.front.door import Verdict, classify
from gateway.front.limits import AddressLimits, Refusal, TotalCap, address_key
from gateway.front.pending import Later, Pending, SharedAdmission
from gateway.interfaces import IRefusal
from gateway.ops.registry import RefusalLog

__all__ = [
    "ANSWER_GRACE",
    "AddressGate",
    "RefusalFactory",
    "CapFactory",
    "CapState",
    "Held",
    "Refuser",
    "Responder",
    "with_close_hook",
]


ANSWER_GRACE = 5.0
"""Seconds a refused connection has to take its answer before it is aborted."""


class Tracked(Structural):
    """
    A protocol that can run hooks when its connection is lost.
    """

    def add_close_hook(self, hook: Callable[[], None]) -> None: ...


class _Hooked(Protocol):
    """
    Runs a hook when the connection of a protocol that has no close hooks of
    its own (any Twisted protocol) is lost; every event is passed on, and the
    protocol talks to the real transport directly.
    """

    def __init__(self, inner: IProtocol, hook: Callable[[], None]) -> None:
        self.inner = inner
        self._hook: Callable[[], None] | None = hook
        if IHalfCloseableProtocol.providedBy(inner):
            alsoProvides(self, IHalfCloseableProtocol)

    @override
    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(transport)
        self.inner.makeConnection(transport)

    @override
    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def readConnectionLost(self) -> None:
        """
        Pass the half-close on (only declared when the inner protocol takes it).
        """
        cast(IHalfCloseableProtocol, self.inner).readConnectionLost()

    def writeConnectionLost(self) -> None:
        """
        Pass our half-close's completion on.
        """
        cast(IHalfCloseableProtocol, self.inner).writeConnectionLost()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        hook, self._hook = self._hook, None
        try:
            self.inner.connectionLost(reason)
        finally:
            if hook is not None:
                hook()


def with_close_hook(protocol: IProtocol, hook: Callable[[], None]) -> IProtocol:
    """
    Arrange for C{hook} to run when C{protocol}'s connection is lost.

    The gateway's own protocols take the hook directly (L{CloseHooks}), which
    adds nothing to their data path; any other protocol is wrapped.

    @return: the protocol to give the transport.
    """
    add = getattr(protocol, "add_close_hook", None)
    if add is not None:
        cast(Tracked, protocol).add_close_hook(hook)
        return protocol
    return _Hooked(protocol, hook)


class Responder:
    """
    How refused connections are answered, and how many may linger at once.

    @ivar retry_after: seconds for the HTTP C{Retry-After} header.
    @ivar busy_message: the line sent to a refused game client, or L{None}.
    @ivar wait: seconds a refused connection may take to show whether it is
        HTTP (its first bytes); then it is treated as a game client.
    @ivar max_lingering: refused connections allowed to wait at once for their
        first bytes; past that, a refused connection is closed at once without
        an answer, so a flood cannot hold many descriptors open.
    @ivar lingering: refused connections waiting now.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        busy_message: str | None = None,
        retry_after: int = 5,
        wait: float = 1.0,
        max_lingering: int = 256,
    ) -> None:
        self.clock = clock
        self.busy_message = busy_message
        self.retry_after = retry_after
        self.wait = wait
        self.max_lingering = max_lingering
        self.lingering = 0

    def reconfigure(self, busy_message: str | None) -> None:
        """
        A new busy line for the refusals that come next (a reload).
        """
        self.busy_message = busy_message

    def http_response(self, reason: Refusal) -> bytes:
        """
        The complete HTTP response for a refused HTTP client.
        """
        body = b"503 Service Unavailable: the server is busy, please retry shortly.\n"
        return (
            b"HTTP/1.1 503 Service Unavailable\r\n"
            + f"Retry-After: {self.retry_after}\r\n".encode()
            + b"Content-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + body
        )


@implementer(IRefusal)
class Refuser(CloseHooks, Protocol):
    """
    Answers one refused connection and closes it (aborting it if the close
    has not completed L{ANSWER_GRACE} seconds later, e.g. a TLS client that
    never finishes its handshake).
    """

    def __init__(self, responder: Responder, reason: Refusal) -> None:
        CloseHooks.__init__(self)
        self._responder = responder
        self.reason = reason
        self._seen = b""
        self._timer: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._lingering = False
        self._answered = False

    @override
    def connectionMade(self) -> None:
        responder = self._responder
        if responder.lingering >= responder.max_lingering:
            # Too many refused connections are waiting already: close this one
            # at once, without an answer (we cannot know whether it is HTTP).
            self._answer(b"")
            return
        responder.lingering += 1
        self._lingering = True
        self._timer = responder.clock.callLater(responder.wait, self._answer_game)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._seen += data
        verdict = classify(self._seen)
        if verdict is Verdict.HTTP:
            self._answer(self._responder.http_response(self.reason))
        elif verdict is Verdict.GAME:
            self._answer_game()

    def _answer_game(self) -> None:
        message = self._responder.busy_message
        self._answer((message + "\r\n").encode() if message else b"")

    def _answer(self, data: bytes) -> None:
        if self._answered:
            return
        self._answered = True
        self._stop_timer()
        assert self.transport is not None
        if data:
            self.transport.write(data)
        # Scheduled before loseConnection, which may lose the connection at once.
        self._abort_call = self._responder.clock.callLater(
            ANSWER_GRACE,
            self.transport.abortConnection,  # type: ignore[attr-defined]
        )
        self.transport.loseConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._stop_timer()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        if self._lingering:
            self._lingering = False
            self._responder.lingering -= 1
        self.run_close_hooks()


class CapState:
    """
    The total cap shared by every front: its count, the fronts' listening
    ports (paused at the cap in queue mode) and the queue of held connections.

    @ivar queue_mode: C{--overflow queue} (else reject).
    @ivar paused: whether the fronts stopped accepting.
    @ivar release_hook: L{release}, as the close hook of every counted
        connection.
    """

    _log = Logger()

    def __init__(
        self,
        cap: TotalCap,
        *,
        queue_mode: bool,
        refusals: RefusalLog,
        responder: Responder,
    ) -> None:
        self.cap = cap
        self.queue_mode = queue_mode
        self.refusals = refusals
        self.responder = responder
        self.paused = False
        self._ports: list[IListeningPort] = []
        self._held: deque[Held] = deque()
        # Every connection's close hook: one bound method for all of them,
        # not one each (64 bytes of every idle connection otherwise).
        self.release_hook: Callable[[], None] = self.release

    @property
    def held(self) -> int:
        """
        Connections waiting in the held queue.
        """
        return len(self._held)

    def add_port(self, port: IListeningPort) -> None:
        """
        A front started listening: pause or resume it with the others.
        """
        self._ports.append(port)
        if self.paused:
            port.stopReading()  # type: ignore[attr-defined]

    def remove_port(self, port: IListeningPort) -> None:
        """
        A front stopped listening.
        """
        if port in self._ports:
            self._ports.remove(port)

    def release(self) -> None:
        """
        A counted connection ended: give its slot to the first held
        connection, or accept again.
        """
        self.cap.release()
        while self._held and not self.cap.full:
            held = self._held.popleft()
            self.cap.acquire()
            held.admit()
        self.update_pause()

    def hold(self, held: Held) -> None:
        """
        Queue a connection accepted while at the cap.
        """
        self._held.append(held)
        self.refusals.counters.queued += 1

    def unhold(self, held: Held) -> None:
        """
        A held connection went away before its turn.
        """
        if held in self._held:
            self._held.remove(held)

    def reconfigure(self, limit: int, queue_mode: bool) -> None:
        """
        Apply a new total cap and overflow mode (a reload): held connections
        get the slots a higher cap frees, and leaving queue mode accepts again.
        """
        self.cap.resize(limit)
        while self._held and not self.cap.full:
            held = self._held.popleft()
            self.cap.acquire()
            held.admit()
        if self.queue_mode and not queue_mode and self.paused:
            self.paused = False
            for port in self._ports:
                port.startReading()  # type: ignore[attr-defined]
        self.queue_mode = queue_mode
        self.update_pause()

    def update_pause(self) -> None:
        """
        In queue mode, stop accepting on every front at the cap (or while
        connections are held), and accept again otherwise.
        """
        if not self.queue_mode:
            return
        want_paused = self.cap.full or bool(self._held)
        if want_paused == self.paused:
            return
        self.paused = want_paused
        for port in self._ports:
            if want_paused:
                port.stopReading()  # type: ignore[attr-defined]
            else:
                port.startReading()  # type: ignore[attr-defined]
        self._log.info(
            "{state} accepting: {active} of {limit} connections in use",
            state="stopped" if want_paused else "resumed",
            active=self.cap.active,
            limit=self.cap.limit,
        )


class CapFactory(ServerFactory):
    """
    The outermost factory of a front: applies the total cap.
    """

    noisy = False

    def __init__(
        self, state: CapState, wrapped: Factory, refusal_factory: Factory | None = None
    ) -> None:
        """
        @param refusal_factory: builds the protocol that answers a connection
            refused at the cap; by default a L{RefusalFactory}.  A C{haproxy:}
            front passes one that reads the PROXY header first, so that the
            answer and the log are about the real client.
        """
        self.state = state
        self.wrapped = wrapped
        self.refusal_factory = refusal_factory or RefusalFactory(
            state.responder, Refusal.TOTAL_CAP, state.refusals
        )

    @override
    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]
        state = self.state
        if state.cap.full:
            if state.queue_mode:
                return Held(self, addr)
            return self.refusal_factory.buildProtocol(addr)
        return self.admit(addr)

    def admit(self, addr: IAddress | None) -> IProtocol | None:
        """
        Count a connection against the cap and build its protocol.
        """
        state = self.state
        state.cap.acquire()
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None or IRefusal.providedBy(protocol):
            # Refused by a per-address policy: it must not hold a slot that
            # another address's client could use.
            state.release()
            return protocol
        state.update_pause()
        return with_close_hook(protocol, state.release_hook)


class Held(Later):
    """
    A connection accepted at the cap in queue mode: paused until a slot frees,
    then handed to the protocol it would have had.
    """

    def __init__(self, factory: CapFactory, addr: IAddress | None) -> None:
        self._factory = factory
        self._addr = addr

    @override
    def connectionMade(self) -> None:
        super().connectionMade()
        self._factory.state.hold(self)
        self._factory.state.update_pause()

    def admit(self) -> None:
        """
        Our turn: build the real protocol (the slot is already counted).
        """
        state = self._factory.state
        built = self._factory.wrapped.buildProtocol(self._addr)
        if built is None:
            state.release()
            assert self.transport is not None
            self.transport.loseConnection()
            return
        if IRefusal.providedBy(built):
            state.release()
            self.become(built)
        else:
            self.become(with_close_hook(built, state.release_hook))

    @override
    def gone(self) -> None:
        self._factory.state.unhold(self)
        self._factory.state.update_pause()


class RefusalFactory(Factory):
    """
    Counts and logs a refusal for the given reason, and answers it with a
    L{Refuser}.
    """

    noisy = False

    def __init__(self, responder: Responder, reason: Refusal, refusals: RefusalLog) -> None:
        self.responder = responder
        self.reason = reason
        self.refusals = refusals

    @override
    def buildProtocol(self, addr: IAddress | None) -> Refuser:
        self.refusals.refused(self.reason, describe_peer(addr) if addr is not None else "-")
        return Refuser(self.responder, self.reason)


class _Release:
    """
    The close hook of a connection admitted by its address: releases its
    key.  A slotted object, not a closure: about 150 bytes less of every
    idle connection when per-address limits are on (docs/performance.md).
    """

    __slots__ = ("_key", "_limits")

    def __init__(self, limits: AddressLimits, key: str) -> None:
        self._limits = limits
        self._key = key

    def __call__(self) -> None:
        self._limits.release(self._key)


class AddressGate(Factory):
    """
    Applies the per-address limits once the real client address is known.

    @ivar shared: the cluster's shared limits, which decide instead of
        this node's own when given (C{--cluster}).
    """

    noisy = False

    def __init__(
        self,
        wrapped: Factory,
        limits: AddressLimits | None,
        *,
        clock: IReactorTime,
        refusals: RefusalLog,
        responder: Responder,
        shared: SharedAdmission | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.limits = limits
        self.shared = shared
        self._clock = clock
        self._refusals = refusals
        self._responder = responder

    def reconfigure(self, limits: AddressLimits | None) -> None:
        """
        New per-address limits for the connections that come next (a
        reload; the limits keep the live counts they are given).
        """
        self.limits = limits

    @override
    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]
        limits = self.limits
        host = getattr(addr, "host", None)
        if limits is None or not isinstance(host, str):
            return self.admitted(addr, None)
        assert addr is not None
        key = address_key(host)
        if self.shared is not None:
            return Pending(self, addr, key, limits)
        refusal = limits.admit(key, self._clock.seconds())
        if refusal is not None:
            return self.refuse(refusal, addr)
        return self.admitted(addr, _Release(limits, key))

    def refuse(self, refusal: Refusal, addr: IAddress) -> Refuser:
        """
        Count and log a refusal, and answer it.
        """
        self._refusals.refused(refusal, describe_peer(addr))
        return Refuser(self._responder, refusal)

    def admitted(
        self, addr: IAddress | None, release: Callable[[], None] | None
    ) -> IProtocol | None:
        """
        The protocol of an admitted connection, with C{release} run when it
        ends (at once if no protocol is built).
        """
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None:
            if release is not None:
                release()
            return None
        self._refusals.counters.accepted += 1
        if release is not None:
            return with_close_hook(protocol, release)
        return protocol
