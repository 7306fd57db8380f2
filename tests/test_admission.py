"""
Unit tests of L{gateway.front.admission}: the total cap in both overflow modes
(L{CapFactory}, L{CapState}, L{Held}), the per-address gate (L{AddressGate})
and the answer a refused client gets (L{Refuser}, L{Responder}).

Every test is synchronous: connections are L{StringTransportWithDisconnection}s
driven by hand, time is a L{MemoryReactorClock}, and a listening port is a
fake that records whether it was told to stop or start accepting.  The cap's
bookkeeping is checked by hypothesis against a model of the live connections,
in both modes; the refuser's classification against every split of its input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IListeningPort, IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from gateway.connection import CloseHooks
from gateway.front.admission import AddressGate, CapFactory, CapState, Held, Refuser, Responder
from gateway.front.door import HTTP_METHODS
from gateway.front.limits import AddressCap, AddressLimits, AddressRate, Refusal, TotalCap
from gateway.ops.registry import Counters, RefusalLog

PEER = IPv4Address("TCP", "192.0.2.1", 40000)


def peer(number: int, host: str = "192.0.2.1") -> IPv4Address:
    """
    A client address; C{number} is its port, so that tests can tell
    connections apart by the address the wrapped factory was given.
    """
    return IPv4Address("TCP", host, 10000 + number)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """
    Every way of cutting C{data} into consecutive non-empty pieces.
    """
    if len(data) < 2:
        return st.just([data] if data else [])
    return st.lists(
        st.integers(min_value=1, max_value=len(data) - 1), unique=True, max_size=len(data)
    ).map(
        lambda cuts: [
            data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)
        ]
    )


class Inner(CloseHooks, Protocol):
    """
    The protocol the wrapped factory builds: records what reaches it.

    @ivar addr: the address it was built for.
    @ivar received: every byte given to C{dataReceived}.
    @ivar lost: how many times C{connectionLost} was called.
    """

    def __init__(self, addr: IAddress | None) -> None:
        CloseHooks.__init__(self)
        self.addr = addr
        self.received = b""
        self.lost = 0

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost += 1
        self.run_close_hooks()


@implementer(IHalfCloseableProtocol)
class HalfCloseInner(Inner):
    """
    An inner protocol that takes half-closes (as the front door does).

    @ivar read_closed: how many times C{readConnectionLost} was called.
    """

    def __init__(self, addr: IAddress | None) -> None:
        super().__init__(addr)
        self.read_closed = 0

    def readConnectionLost(self) -> None:
        """
        Record the client's half-close.
        """
        self.read_closed += 1

    def writeConnectionLost(self) -> None:
        """
        Nothing to do.
        """


class InnerFactory(Factory):
    """
    The factory the admission layer wraps: builds L{Inner}s and records them.

    @ivar built: every protocol built, in order.
    @ivar refuse: return L{None} from C{buildProtocol} (a factory declining).
    """

    def __init__(self, half_close: bool = False) -> None:
        self.built: list[Inner] = []
        self.refuse = False
        self._kind = HalfCloseInner if half_close else Inner

    @override
    def buildProtocol(self, addr: IAddress | None) -> Inner | None:
        if self.refuse:
            return None
        protocol = self._kind(addr)
        self.built.append(protocol)
        return protocol

    @property
    def ports(self) -> list[int]:
        """
        The client port of each address a protocol was built for, in order.
        """
        return [getattr(p.addr, "port", -1) for p in self.built]


@implementer(IListeningPort)
class FakePort:
    """
    A listening port that records when it is told to stop or start accepting.

    @ivar calls: C{"stop"} and C{"start"}, in order.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        """
        Record a pause.
        """
        self.calls.append("stop")

    def startReading(self) -> None:  # noqa: N802 - Twisted's name
        """
        Record a resume.
        """
        self.calls.append("start")

    def startListening(self) -> None:  # noqa: N802 - Twisted's name
        """
        Nothing to bind.
        """

    def stopListening(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        """
        Nothing to unbind.
        """
        return succeed(None)

    def getHost(self) -> IAddress:
        """
        A made-up local address.
        """
        return IPv4Address("TCP", "0.0.0.0", 8080)


@dataclass
class Cap:
    """
    A cap under test with everything around it.
    """

    factory: CapFactory
    state: CapState
    inner: InnerFactory
    counters: Counters
    clock: MemoryReactorClock
    ports: list[FakePort] = field(default_factory=list)


def make_cap(limit: int, *, queue: bool, ports: int = 2, half_close: bool = False) -> Cap:
    """
    A L{CapFactory} of C{limit} connections wrapping an L{InnerFactory}, with
    C{ports} fake listening ports registered.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    state = CapState(
        TotalCap(limit),
        queue_mode=queue,
        refusals=RefusalLog(clock, counters),
        responder=Responder(clock, busy_message="busy"),
    )
    inner = InnerFactory(half_close)
    cap = Cap(CapFactory(state, inner), state, inner, counters, clock)
    for _ in range(ports):
        port = FakePort()
        state.add_port(port)
        cap.ports.append(port)
    return cap


def connect(
    factory: Factory, addr: IAddress = PEER
) -> tuple[IProtocol, StringTransportWithDisconnection]:
    """
    Accept one connection from C{addr} the way a listening port does.
    """
    protocol = factory.buildProtocol(addr)
    assert protocol is not None
    transport = StringTransportWithDisconnection(peerAddress=addr)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def refusal_lines(events: EventLoggingObserver | list[LogEvent]) -> list[str]:
    """
    The text of each refusal logged by the L{RefusalLog}.
    """
    return [formatEvent(e) for e in events if isinstance(e.get("log_source"), RefusalLog)]


# CapFactory: reject mode


def test_reject_under_cap_builds_wrapped_protocol() -> None:
    """
    Under the cap, the wrapped factory builds the connection's protocol,
    for the connection's address, and the connection is counted.
    """
    cap = make_cap(2, queue=False)
    protocol, _ = connect(cap.factory, peer(1))
    assert cap.inner.built == [protocol]
    assert cap.inner.ports == [10001]
    assert cap.state.cap.active == 1
    connect(cap.factory, peer(2))
    assert cap.state.cap.active == 2
    assert sum(cap.counters.refused.values()) == 0


def test_reject_at_cap_refuses(log_events: EventLoggingObserver) -> None:
    """
    At the cap, a new connection gets a L{Refuser} for L{Refusal.TOTAL_CAP}:
    the wrapped factory is not called, the refusal is counted and logged with
    the client's address, and the count stays at the cap.
    """
    cap = make_cap(1, queue=False)
    connect(cap.factory, peer(1))
    refused, transport = connect(cap.factory, peer(2))
    assert isinstance(refused, Refuser)
    assert refused.reason is Refusal.TOTAL_CAP
    assert cap.inner.ports == [10001]
    assert cap.counters.refused[Refusal.TOTAL_CAP] == 1
    assert cap.state.cap.active == 1
    assert refusal_lines(log_events) == ["refused 192.0.2.1:10002: total-cap"]
    # The refuser's end does not free a slot it never had.
    transport.loseConnection()
    assert cap.state.cap.active == 1


def test_reject_never_pauses_ports() -> None:
    """
    In reject mode the fronts keep accepting at the cap (every extra
    connection is answered and closed instead).
    """
    cap = make_cap(1, queue=False)
    connect(cap.factory, peer(1))
    connect(cap.factory, peer(2))
    assert not cap.state.paused
    assert [port.calls for port in cap.ports] == [[], []]


def test_slot_released_once_on_close() -> None:
    """
    The slot of an admitted connection is released by its close hook when
    the connection is lost, exactly once even if C{connectionLost} comes
    twice; then a new connection is admitted again.
    """
    cap = make_cap(1, queue=False)
    protocol, transport = connect(cap.factory, peer(1))
    transport.loseConnection()
    assert cap.state.cap.active == 0
    protocol.connectionLost(Failure(ConnectionError()))
    assert cap.state.cap.active == 0
    again, _ = connect(cap.factory, peer(2))
    assert isinstance(again, Inner)
    assert cap.state.cap.active == 1


class Plain(Protocol):
    """
    A protocol with no close hooks of its own (any Twisted protocol).

    @ivar events: what reached it, in order.
    """

    def __init__(self) -> None:
        self.events: list[str] = []

    @override
    def connectionMade(self) -> None:
        self.events.append("made")

    @override
    def dataReceived(self, data: bytes) -> None:
        self.events.append(data.decode())

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.events.append("lost")


@implementer(IHalfCloseableProtocol)
class PlainHalfClose(Plain):
    """
    A protocol with no close hooks that takes half-closes.
    """

    def readConnectionLost(self) -> None:
        """
        Record the client's half-close.
        """
        self.events.append("read-closed")

    def writeConnectionLost(self) -> None:
        """
        Record our half-close's completion.
        """
        self.events.append("write-closed")


class PlainFactory(Factory):
    """
    Builds L{Plain} protocols (or L{PlainHalfClose}) and keeps them.
    """

    def __init__(self, kind: type[Plain] = Plain) -> None:
        self.kind = kind
        self.built: list[Plain] = []

    @override
    def buildProtocol(self, addr: IAddress | None) -> Plain:
        protocol = self.kind()
        self.built.append(protocol)
        return protocol


@pytest.mark.parametrize("queue", [False, True])
def test_protocol_without_hooks_releases_slot(queue: bool) -> None:
    """
    Any Twisted protocol can be capped, in either mode: one without close
    hooks gets every event (connection, data, end) on the real transport,
    and its slot is released when its connection is lost.
    """
    state = CapState(
        TotalCap(1),
        queue_mode=queue,
        refusals=RefusalLog(MemoryReactorClock(), Counters()),
        responder=Responder(MemoryReactorClock()),
    )
    inner = PlainFactory()
    factory = CapFactory(state, inner)
    outer, transport = connect(factory, peer(1))
    assert not IHalfCloseableProtocol.providedBy(outer)
    (plain,) = inner.built
    assert plain.transport is transport
    outer.dataReceived(b"data")
    transport.loseConnection()
    assert plain.events == ["made", "data", "lost"]
    assert state.cap.active == 0


def test_protocol_without_hooks_half_close() -> None:
    """
    A protocol without close hooks that takes half-closes still gets them
    through the wrapper that releases its slot.
    """
    clock = MemoryReactorClock()
    state = CapState(
        TotalCap(1),
        queue_mode=False,
        refusals=RefusalLog(clock, Counters()),
        responder=Responder(clock),
    )
    inner = PlainFactory(PlainHalfClose)
    outer, transport = connect(CapFactory(state, inner), peer(1))
    assert IHalfCloseableProtocol.providedBy(outer)
    outer.readConnectionLost()
    outer.writeConnectionLost()
    transport.loseConnection()
    assert inner.built[0].events == ["made", "read-closed", "write-closed", "lost"]
    assert state.cap.active == 0


def test_failing_protocol_still_releases_slot() -> None:
    """
    A protocol whose C{connectionLost} raises still gives its slot back.
    """

    class Failing(Plain):
        """
        A protocol with a bug at the end of its connection.
        """

        @override
        def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
            raise ValueError("bug in the protocol")

    clock = MemoryReactorClock()
    state = CapState(
        TotalCap(1),
        queue_mode=False,
        refusals=RefusalLog(clock, Counters()),
        responder=Responder(clock),
    )
    _, transport = connect(CapFactory(state, PlainFactory(Failing)), peer(1))
    with pytest.raises(ValueError):
        transport.loseConnection()
    assert state.cap.active == 0


def test_declining_wrapped_factory_frees_slot() -> None:
    """
    A wrapped factory that declines (returns L{None}) does not keep a slot.
    """
    cap = make_cap(1, queue=False)
    cap.inner.refuse = True
    assert cap.factory.buildProtocol(peer(1)) is None
    assert cap.state.cap.active == 0


def test_no_cap_admits_everything() -> None:
    """
    A limit of 0 is no cap: every connection is admitted and counted.
    """
    cap = make_cap(0, queue=True)
    for number in range(50):
        protocol, _ = connect(cap.factory, peer(number))
        assert isinstance(protocol, Inner)
    assert cap.state.cap.active == 50
    assert not cap.state.paused


# CapFactory: queue mode


def test_queue_pauses_every_port_at_cap(log_events: EventLoggingObserver) -> None:
    """
    In queue mode, the connection that fills the cap stops every front from
    accepting (once each), and that is logged.
    """
    cap = make_cap(2, queue=True)
    connect(cap.factory, peer(1))
    assert [port.calls for port in cap.ports] == [[], []]
    connect(cap.factory, peer(2))
    assert cap.state.paused
    assert [port.calls for port in cap.ports] == [["stop"], ["stop"]]
    assert any("stopped accepting: 2 of 2" in formatEvent(e) for e in log_events)


def test_port_added_while_paused_is_paused() -> None:
    """
    A front that starts listening while the gateway is at the cap is paused
    at once, and resumed with the others.
    """
    cap = make_cap(1, queue=True, ports=0)
    _, transport = connect(cap.factory, peer(1))
    late = FakePort()
    cap.state.add_port(late)
    assert late.calls == ["stop"]
    transport.loseConnection()
    assert late.calls == ["stop", "start"]


def test_removed_port_is_left_alone() -> None:
    """
    A front that stopped listening is no longer paused or resumed.
    """
    cap = make_cap(1, queue=True)
    gone = cap.ports[0]
    cap.state.remove_port(gone)
    cap.state.remove_port(gone)  # twice: no error
    _, transport = connect(cap.factory, peer(1))
    transport.loseConnection()
    assert gone.calls == []
    assert cap.ports[1].calls == ["stop", "start"]


def test_queue_holds_connection_at_cap() -> None:
    """
    In queue mode a connection accepted at the cap is L{Held}: its transport
    is paused, the wrapped factory is not called yet, and it is counted as
    queued.
    """
    cap = make_cap(1, queue=True)
    connect(cap.factory, peer(1))
    held, transport = connect(cap.factory, peer(2))
    assert isinstance(held, Held)
    assert held.inner is None
    assert transport.producerState == "paused"
    assert cap.inner.ports == [10001]
    assert cap.counters.queued == 1
    assert cap.state.held == 1
    assert cap.state.cap.active == 1
    assert sum(cap.counters.refused.values()) == 0


def test_queue_serves_held_in_order() -> None:
    """
    Held connections get the slots as they free, first in first out: each
    gets the wrapped protocol built for its own address, its transport is
    resumed, and from then on its data and its end reach that protocol.
    """
    cap = make_cap(1, queue=True)
    _, first = connect(cap.factory, peer(1))
    helds = [connect(cap.factory, peer(n)) for n in (2, 3, 4)]
    assert cap.state.held == 3

    first.loseConnection()
    second, second_transport = helds[0]
    assert isinstance(second, Held)
    assert cap.inner.ports == [10001, 10002]
    assert second.inner is cap.inner.built[1]
    assert cap.inner.built[1].transport is second_transport
    assert second_transport.producerState == "producing"
    assert helds[1][1].producerState == "paused"
    assert cap.state.held == 2
    assert cap.state.cap.active == 1

    second.dataReceived(b"hello")
    assert cap.inner.built[1].received == b"hello"
    second_transport.loseConnection()
    assert cap.inner.built[1].lost == 1
    assert cap.inner.ports == [10001, 10002, 10003]
    helds[1][1].loseConnection()
    assert cap.inner.ports == [10001, 10002, 10003, 10004]
    assert cap.state.held == 0
    assert cap.state.cap.active == 1


def test_queue_resumes_when_empty_and_below_cap(log_events: EventLoggingObserver) -> None:
    """
    The fronts stay paused while connections wait, even after a slot freed,
    and resume (once each) only when the queue is empty and a slot is free.
    """
    cap = make_cap(1, queue=True)
    _, a = connect(cap.factory, peer(1))
    _, b = connect(cap.factory, peer(2))
    _, c = connect(cap.factory, peer(3))
    a.loseConnection()
    b.loseConnection()
    assert [port.calls for port in cap.ports] == [["stop"], ["stop"]]
    c.loseConnection()
    assert not cap.state.paused
    assert [port.calls for port in cap.ports] == [["stop", "start"], ["stop", "start"]]
    assert any("resumed accepting: 0 of 1" in formatEvent(e) for e in log_events)


def test_held_leaving_early_never_gets_slot() -> None:
    """
    A held connection that disconnects before its turn leaves the queue: it
    never gets a slot or a protocol, and the next one in line is served.
    """
    cap = make_cap(1, queue=True)
    _, first = connect(cap.factory, peer(1))
    early, early_transport = connect(cap.factory, peer(2))
    _, later_transport = connect(cap.factory, peer(3))
    early_transport.loseConnection()
    assert cap.state.held == 1
    assert cap.state.paused  # still at the cap
    first.loseConnection()
    assert isinstance(early, Held)
    assert early.inner is None
    assert cap.inner.ports == [10001, 10003]
    assert later_transport.producerState == "producing"
    assert cap.state.cap.active == 1


def test_held_alone_leaving_at_cap_keeps_ports_paused() -> None:
    """
    When the only held connection leaves while the cap is still full, the
    fronts stay paused; they resume when the admitted connection ends.
    """
    cap = make_cap(1, queue=True)
    _, first = connect(cap.factory, peer(1))
    _, held = connect(cap.factory, peer(2))
    held.loseConnection()
    assert cap.state.held == 0
    assert cap.ports[0].calls == ["stop"]
    first.loseConnection()
    assert cap.ports[0].calls == ["stop", "start"]


def test_held_declined_by_wrapped_factory_passes_turn_on() -> None:
    """
    When the wrapped factory declines a held connection at its turn, that
    connection is closed and its slot goes to the next one in line.
    """
    cap = make_cap(1, queue=True)
    _, first = connect(cap.factory, peer(1))
    _, declined = connect(cap.factory, peer(2))
    cap.inner.refuse = True
    _, next_in_line = connect(cap.factory, peer(3))
    first.loseConnection()
    assert not declined.connected
    # The declined one released its slot, which the next one tried too.
    assert not next_in_line.connected
    assert cap.state.cap.active == 0
    assert cap.state.held == 0
    assert not cap.state.paused


def test_held_half_close() -> None:
    """
    A held connection's half-close closes it before its turn; after its turn
    it is passed to an inner protocol that takes half-closes, and closes the
    connection for one that does not.
    """
    cap = make_cap(1, queue=True, half_close=True)
    _, first = connect(cap.factory, peer(1))
    waiting, waiting_transport = connect(cap.factory, peer(2))
    admitted, admitted_transport = connect(cap.factory, peer(3))
    assert isinstance(waiting, Held) and isinstance(admitted, Held)
    waiting.readConnectionLost()
    assert not waiting_transport.connected
    first.loseConnection()
    admitted.readConnectionLost()
    inner = admitted.inner
    assert isinstance(inner, HalfCloseInner)
    assert inner.read_closed == 1
    assert admitted_transport.connected
    admitted.writeConnectionLost()

    plain = make_cap(1, queue=True)
    _, owner = connect(plain.factory, peer(1))
    held, held_transport = connect(plain.factory, peer(2))
    assert isinstance(held, Held)
    owner.loseConnection()
    held.writeConnectionLost()  # ignored by a protocol without half-close
    held.readConnectionLost()
    assert not held_transport.connected
    assert plain.state.cap.active == 0


# The cap's bookkeeping, by hypothesis

OPERATIONS = st.lists(st.one_of(st.just(-1), st.integers(min_value=0, max_value=30)), max_size=40)
"""-1 accepts a new connection; n disconnects the live connection n (modulo)."""


@dataclass
class Live:
    """
    One connection of the model.
    """

    number: int
    protocol: IProtocol
    transport: StringTransportWithDisconnection


def admitted(protocol: IProtocol) -> bool:
    """
    Whether a connection holds a slot: it has the wrapped protocol.
    """
    if isinstance(protocol, Held):
        return protocol.inner is not None
    return isinstance(protocol, Inner)


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(min_value=1, max_value=4), operations=OPERATIONS, queue=st.booleans())
def test_cap_accounting_matches_live_connections(
    limit: int, operations: list[int], queue: bool
) -> None:
    """
    After any sequence of connects and disconnects, in either mode, the
    cap's count equals the live connections that have the wrapped protocol,
    never negative and never above the limit.  In reject mode every
    connection past the cap is refused; in queue mode none is refused, no
    connection waits while a slot is free, the fronts are paused exactly
    while the cap is full or someone waits, and held connections are served
    in arrival order, skipping only those that left before their turn.
    """
    cap = make_cap(limit, queue=queue, ports=1)
    live: list[Live] = []
    held_order: list[int] = []  # held connections in arrival order
    left_early: set[int] = set()
    refusals = 0
    for number, operation in enumerate(operations):
        if operation < 0:
            was_full = cap.state.cap.full
            protocol, transport = connect(cap.factory, peer(number))
            live.append(Live(number, protocol, transport))
            if was_full and queue:
                assert isinstance(protocol, Held)
                held_order.append(number)
            elif was_full:
                assert isinstance(protocol, Refuser)
                refusals += 1
            else:
                assert isinstance(protocol, Inner)
        elif live:
            gone = live.pop(operation % len(live))
            if isinstance(gone.protocol, Held) and gone.protocol.inner is None:
                left_early.add(gone.number)
            gone.transport.loseConnection()

        active = cap.state.cap.active
        assert active == sum(admitted(c.protocol) for c in live)
        assert 0 <= active <= limit
        waiting = sum(isinstance(c.protocol, Held) and c.protocol.inner is None for c in live)
        assert cap.state.held == waiting
        if waiting:
            assert active == limit
        assert cap.state.paused == (queue and (active == limit or waiting > 0))
        calls = cap.ports[0].calls
        assert calls == (["stop", "start"] * len(calls))[: len(calls)]
        assert (calls[-1:] == ["stop"]) == cap.state.paused

        served = [n - 10000 for n in cap.inner.ports if n - 10000 in held_order]
        in_line = [n for n in held_order if n not in left_early]
        assert served == in_line[: len(served)]

    assert cap.counters.refused[Refusal.TOTAL_CAP] == refusals
    assert cap.counters.queued == len(held_order)


# AddressGate


def make_gate(
    limits: AddressLimits | None,
) -> tuple[AddressGate, InnerFactory, Counters, MemoryReactorClock]:
    """
    An L{AddressGate} with C{limits} in front of an L{InnerFactory}.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    inner = InnerFactory()
    gate = AddressGate(
        inner,
        limits,
        clock=clock,
        refusals=RefusalLog(clock, counters),
        responder=Responder(clock, busy_message="busy"),
    )
    return gate, inner, counters, clock


def test_gate_refuses_with_policy_reason(log_events: EventLoggingObserver) -> None:
    """
    A connection an address policy refuses gets a L{Refuser} with that
    policy's reason, counted and logged with the client's address; the
    wrapped factory is not called.
    """
    gate, inner, counters, _ = make_gate(AddressLimits([AddressCap(1)]))
    connect(gate, peer(1))
    refused, _ = connect(gate, peer(2))
    assert isinstance(refused, Refuser)
    assert refused.reason is Refusal.ADDRESS_CAP
    assert inner.ports == [10001]
    assert counters.refused[Refusal.ADDRESS_CAP] == 1
    assert counters.accepted == 1
    assert refusal_lines(log_events) == ["refused 192.0.2.1:10002: address-cap"]


def test_gate_rate_refusal_reason() -> None:
    """
    A rate policy's refusal carries L{Refusal.RATE}, and the policy reads the
    gate's clock: once a token refilled, the address is admitted again.
    """
    gate, inner, counters, clock = make_gate(AddressLimits([AddressRate(1.0, burst=1)]))
    connect(gate, peer(1))
    refused, _ = connect(gate, peer(2))
    assert isinstance(refused, Refuser)
    assert refused.reason is Refusal.RATE
    clock.advance(1.0)
    again, _ = connect(gate, peer(3))
    assert isinstance(again, Inner)
    assert counters.refused[Refusal.RATE] == 1
    assert counters.accepted == 2


def test_gate_admits_and_releases_on_close() -> None:
    """
    An admitted connection is counted as accepted, built by the wrapped
    factory, and its per-address count is released when it ends, so the
    address is admitted again; other addresses are not affected.
    """
    policy = AddressCap(1)
    gate, inner, counters, _ = make_gate(AddressLimits([policy]))
    protocol, transport = connect(gate, peer(1))
    assert isinstance(protocol, Inner)
    assert counters.accepted == 1
    assert policy.count("192.0.2.1") == 1
    other, _ = connect(gate, peer(2, host="192.0.2.2"))
    assert isinstance(other, Inner)
    transport.loseConnection()
    protocol.connectionLost(Failure(ConnectionError()))  # twice: released once
    assert policy.count("192.0.2.1") == 0
    again, _ = connect(gate, peer(3))
    assert isinstance(again, Inner)
    assert counters.accepted == 3
    assert sum(counters.refused.values()) == 0


def test_gate_limits_ipv6_by_network() -> None:
    """
    Two IPv6 clients in the same /64 share the per-address count.
    """
    gate, _, counters, _ = make_gate(AddressLimits([AddressCap(1)]))
    connect(gate, IPv6Address("TCP", "2001:db8::1", 1))
    refused, _ = connect(gate, IPv6Address("TCP", "2001:db8::2", 2))
    assert isinstance(refused, Refuser)
    other, _ = connect(gate, IPv6Address("TCP", "2001:db8:0:1::1", 3))
    assert isinstance(other, Inner)
    assert counters.refused[Refusal.ADDRESS_CAP] == 1


@pytest.mark.parametrize("name", [None, b"/run/gateway.sock"])
def test_gate_does_not_limit_unix_clients(name: bytes | None) -> None:
    """
    A UNIX socket client has no host to limit by: it is admitted past any
    per-address policy and never counted in it.
    """
    policy = AddressCap(1)
    gate, inner, counters, _ = make_gate(AddressLimits([policy]))
    for _ in range(3):
        protocol, transport = connect(gate, UNIXAddress(name))
        assert isinstance(protocol, Inner)
    assert len(policy) == 0
    transport.loseConnection()
    assert counters.accepted == 3
    assert len(inner.built) == 3


def test_gate_without_limits_counts_accepted() -> None:
    """
    Without per-address policies every connection is admitted and counted.
    """
    gate, inner, counters, _ = make_gate(None)
    for number in range(3):
        connect(gate, peer(number))
    assert counters.accepted == 3
    assert len(inner.built) == 3


def test_gate_declining_factory_releases_address() -> None:
    """
    When the wrapped factory declines, the address's count is given back and
    nothing is counted as accepted.
    """
    policy = AddressCap(1)
    gate, inner, counters, _ = make_gate(AddressLimits([policy]))
    inner.refuse = True
    assert gate.buildProtocol(peer(1)) is None
    assert policy.count("192.0.2.1") == 0
    assert counters.accepted == 0


def test_gate_behind_cap_releases_both() -> None:
    """
    In the real chain (cap, then gate), an admitted connection's end frees
    both its cap slot and its per-address count, and a connection the gate
    refuses gives its cap slot back at once (a noisy address must not use up
    the total cap of everyone else).
    """
    clock = MemoryReactorClock()
    counters = Counters()
    refusals = RefusalLog(clock, counters)
    responder = Responder(clock, busy_message=None)
    policy = AddressCap(1)
    gate = AddressGate(
        InnerFactory(),
        AddressLimits([policy]),
        clock=clock,
        refusals=refusals,
        responder=responder,
    )
    state = CapState(TotalCap(5), queue_mode=False, refusals=refusals, responder=responder)
    factory = CapFactory(state, gate)
    _, admitted_transport = connect(factory, peer(1))
    refused, refused_transport = connect(factory, peer(2))
    assert isinstance(refused, Refuser)
    assert state.cap.active == 1
    clock.advance(responder.wait)
    assert not refused_transport.connected
    assert state.cap.active == 1
    admitted_transport.loseConnection()
    assert state.cap.active == 0
    assert len(policy) == 0


# Refuser and Responder

HTTP_503_BODY = b"503 Service Unavailable: the server is busy, please retry shortly.\n"


def make_refuser(
    *, busy: str | None = "server full", retry_after: int = 7, max_lingering: int = 256
) -> tuple[Responder, MemoryReactorClock]:
    """
    A L{Responder} on a fresh clock, waiting 1 s for a refused client's first
    bytes.
    """
    clock = MemoryReactorClock()
    responder = Responder(
        clock,
        busy_message=busy,
        retry_after=retry_after,
        wait=1.0,
        max_lingering=max_lingering,
    )
    return responder, clock


def refuse(
    responder: Responder, reason: Refusal = Refusal.TOTAL_CAP
) -> tuple[Refuser, StringTransportWithDisconnection]:
    """
    Answer one refused connection with a L{Refuser}.
    """
    refuser = Refuser(responder, reason)
    transport = StringTransportWithDisconnection(peerAddress=PEER)
    transport.protocol = refuser
    refuser.makeConnection(transport)
    return refuser, transport


def test_http_client_gets_503() -> None:
    """
    A refused client whose first bytes are an HTTP request gets exactly one
    C{503 Service Unavailable} with C{Retry-After} and C{Connection: close},
    a correct C{Content-Length}, and then the connection is closed.
    """
    responder, clock = make_refuser(retry_after=7)
    refuser, transport = refuse(responder)
    refuser.dataReceived(b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n")
    assert transport.value() == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Retry-After: 7\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        + f"Content-Length: {len(HTTP_503_BODY)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + HTTP_503_BODY
    )
    assert not transport.connected
    assert responder.lingering == 0
    assert clock.getDelayedCalls() == []


def test_game_client_gets_busy_line() -> None:
    """
    A refused client whose first bytes are not HTTP gets the busy message as
    one line, then the connection is closed; more bytes are ignored.
    """
    responder, _ = make_refuser(busy="server full")
    refuser, transport = refuse(responder)
    refuser.dataReceived(b"\x00\x01hello")
    refuser.dataReceived(b"GET / HTTP/1.1\r\n")
    assert transport.value() == b"server full\r\n"
    assert not transport.connected


def test_game_client_without_busy_message_is_closed() -> None:
    """
    Without a busy message, a refused game client is closed with nothing
    written.
    """
    responder, _ = make_refuser(busy=None)
    refuser, transport = refuse(responder)
    refuser.dataReceived(b"HELLO\n")
    assert transport.value() == b""
    assert not transport.connected


def test_silent_client_gets_busy_line_after_wait() -> None:
    """
    A refused client that sends nothing (or only the start of a method) is
    answered as a game client when the responder's wait ends, not before.
    """
    responder, clock = make_refuser(busy="server full")
    refuser, transport = refuse(responder)
    refuser.dataReceived(b"GE")
    clock.advance(responder.wait - 0.01)
    assert transport.value() == b""
    assert transport.connected
    clock.advance(0.01)
    assert transport.value() == b"server full\r\n"
    assert not transport.connected
    assert responder.lingering == 0


def test_refuser_runs_close_hooks_and_cancels_timer() -> None:
    """
    A refused client that goes away before it is answered cancels the wait,
    leaves the lingering count and runs the refuser's close hooks once.
    """
    responder, clock = make_refuser()
    refuser, transport = refuse(responder)
    ran: list[str] = []
    refuser.add_close_hook(lambda: ran.append("closed"))
    assert responder.lingering == 1
    transport.loseConnection()
    refuser.connectionLost(Failure(ConnectionError()))
    assert ran == ["closed"]
    assert responder.lingering == 0
    assert clock.getDelayedCalls() == []


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    method=st.sampled_from(HTTP_METHODS),
    target=st.binary(min_size=1, max_size=20).filter(lambda b: b"\r" not in b),
)
def test_http_answer_whatever_the_split(data: st.DataObject, method: bytes, target: bytes) -> None:
    """
    However a request's first bytes are split, the refuser answers with the
    503 response, once.
    """
    responder, _ = make_refuser()
    refuser, transport = refuse(responder)
    request = method + b" /" + target + b" HTTP/1.1\r\n\r\n"
    for chunk in data.draw(splits(request)):
        refuser.dataReceived(chunk)
    assert transport.value() == responder.http_response(Refusal.TOTAL_CAP)
    assert transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert not transport.connected


@settings(max_examples=100, deadline=None)
@given(data=st.data(), message=st.binary(min_size=1, max_size=30))
def test_game_answer_whatever_the_split(data: st.DataObject, message: bytes) -> None:
    """
    However a game client's first bytes are split, the refuser answers with
    the busy line as soon as the bytes cannot begin an HTTP request, and
    never with the HTTP response.
    """
    starts = [m + b" " for m in HTTP_METHODS]
    assume(not any(message.startswith(s) or s.startswith(message[:9]) for s in starts))
    responder, clock = make_refuser(busy="server full")
    refuser, transport = refuse(responder)
    for chunk in data.draw(splits(message)):
        refuser.dataReceived(chunk)
    assert transport.value() == b"server full\r\n"
    assert not transport.connected
    assert clock.getDelayedCalls() == []


def test_refusers_past_max_lingering_close_at_once() -> None:
    """
    Past C{max_lingering} refused connections waiting at once, a new refused
    connection is closed at once without waiting for its first bytes and
    without an answer (not even the busy line: it may be an HTTP client); the
    lingering count goes back to 0 once every waiting one is closed.
    """
    responder, clock = make_refuser(busy="server full", max_lingering=2)
    waiting = [refuse(responder) for _ in range(2)]
    assert responder.lingering == 2
    extra_refuser, extra = refuse(responder)
    assert not extra.connected
    assert extra.value() == b""
    assert responder.lingering == 2
    assert len(clock.getDelayedCalls()) == 2
    extra_refuser.dataReceived(b"GET / HTTP/1.1\r\n")  # too late: ignored
    assert extra.value() == b""

    waiting[0][0].dataReceived(b"GET / HTTP/1.1\r\n")
    assert responder.lingering == 1
    clock.advance(responder.wait)
    assert not waiting[1][1].connected
    assert responder.lingering == 0
    # There is room again.
    _, transport = refuse(responder)
    assert transport.connected
    assert responder.lingering == 1


@settings(max_examples=100, deadline=None)
@given(
    max_lingering=st.integers(min_value=0, max_value=4),
    operations=st.lists(st.integers(min_value=-1, max_value=10), max_size=30),
)
def test_lingering_count_matches_waiting_refusers(
    max_lingering: int, operations: list[int]
) -> None:
    """
    After any mix of new refused connections (-1) and connections ending
    (answered, timed out or disconnected), the lingering count equals the
    refusers still waiting, never exceeds C{max_lingering}, and is 0 once
    every one has ended.
    """
    responder, clock = make_refuser(max_lingering=max_lingering)
    live: list[tuple[Refuser, StringTransportWithDisconnection]] = []
    for operation in operations:
        if operation == -1:
            live.append(refuse(responder))
        elif live:
            refuser, transport = live.pop(operation % len(live))
            match operation % 3:
                case 0:
                    refuser.dataReceived(b"GET / HTTP/1.0\r\n")
                case 1:
                    refuser.dataReceived(b"\x16\x03")
                case _:
                    transport.loseConnection()
        live = [(r, t) for r, t in live if t.connected]
        assert responder.lingering == len(live) <= max_lingering
    clock.advance(responder.wait)
    assert responder.lingering == 0
    assert clock.getDelayedCalls() == []


def test_answered_refusal_aborted_if_never_closed() -> None:
    """
    A refused connection whose close does not complete (a TLS client that
    never finishes its handshake keeps the answer unsent) is aborted
    ANSWER_GRACE seconds after its answer, so it cannot pin a lingering slot.
    """
    from twisted.internet.testing import StringTransport

    from gateway.front.admission import ANSWER_GRACE

    responder, clock = make_refuser()
    refuser = Refuser(responder, Refusal.TOTAL_CAP)
    transport = StringTransport(peerAddress=PEER)
    refuser.makeConnection(transport)
    refuser.dataReceived(b"\x16\x03\x01")
    assert transport.disconnecting
    clock.advance(ANSWER_GRACE - 0.01)
    assert not transport.disconnected
    clock.advance(0.01)
    assert transport.disconnected


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_close_hooks_run_once_in_order(count: int, log_events: EventLoggingObserver) -> None:
    """
    However many hooks a connection has (none, one kept without a list, or
    several), each runs once, in the order added, and one that fails does not
    stop the others.
    """
    ran: list[int] = []

    def hook(number: int) -> Callable[[], None]:
        def run() -> None:
            ran.append(number)
            if number == 1:
                raise RuntimeError("a failing hook")

        return run

    hooks = CloseHooks()
    for number in range(count):
        hooks.add_close_hook(hook(number))
    hooks.run_close_hooks()
    hooks.run_close_hooks()
    assert ran == list(range(count))
    failed = [e for e in log_events if e.get("log_format") == "a close hook failed"]
    assert len(failed) == (1 if count > 1 else 0)
