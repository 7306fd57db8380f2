"""
Unit tests of L{gateway.front.pending}: a connection whose address gate asks
the cluster's shared limits (L{Pending}), on string transports.

The shared limits here are a hand-driven L{SharedAdmission}: each question
is a L{Deferred} the test answers, so every order of events (bytes, a
half-close, the client leaving) against the answer can be played; the real
shared limits, on a real Redis, are tested in C{test_shared_limits.py}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.python.failure import Failure

from gateway.front.admission import AddressGate, Refuser, Responder
from gateway.front.limits import AddressCap, AddressLimits, Refusal
from gateway.front.pending import Decision, Pending, Ticket
from gateway.front.proxyheader import ProxyHeaderFactory
from gateway.ops.registry import Counters, RefusalLog
from gateway.process.dispatch import TLSRefusals
from tests.test_admission import Inner, InnerFactory, connect, make_cap, peer
from tests.test_admission import refusal_lines as refusal_log_lines


class Shared:
    """
    Shared limits answered by hand.

    @ivar asked: each question (address key, limits) with its answer to give.
    @ivar released: the tickets released, in order.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[str, AddressLimits, Deferred[Decision]]] = []
        self.released: list[Ticket] = []

    def admit(self, key: str, limits: AddressLimits) -> Deferred[Decision]:
        """
        Record the question; the test answers it.
        """
        answer: Deferred[Decision] = Deferred()
        self.asked.append((key, limits, answer))
        return answer

    def release(self, ticket: Ticket) -> None:
        """
        Record the release.
        """
        self.released.append(ticket)

    def admit_next(self) -> Ticket:
        """
        Admit the oldest question (counting it locally, as the real one does).
        """
        key, limits, answer = self.asked.pop(0)
        ticket = Ticket(key, True, 0)
        limits.count(key, 0.0)
        answer.callback(Decision(None, ticket))
        return ticket

    def refuse_next(self, refusal: Refusal) -> None:
        """
        Refuse the oldest question.
        """
        self.asked.pop(0)[2].callback(Decision(refusal, None))


@dataclass
class Setup:
    """
    A gate with a per-address cap of 2 that asks L{Shared}.
    """

    gate: AddressGate
    shared: Shared
    cap: AddressCap
    counters: Counters
    inner: InnerFactory

    def connect(self, number: int = 1) -> tuple[Pending, StringTransportWithDisconnection]:
        """
        Accept a connection from 192.0.2.1 (port C{number}).
        """
        protocol, transport = connect(self.gate, peer(number))
        assert isinstance(protocol, Pending)
        return protocol, transport


def setup(half_close: bool = False) -> Setup:
    """
    A L{Setup}.
    """
    cap = AddressCap(2)
    clock = MemoryReactorClock()
    counters = Counters()
    inner = InnerFactory(half_close=half_close)
    shared = Shared()
    gate = AddressGate(
        inner,
        AddressLimits([cap]),
        clock=clock,
        refusals=RefusalLog(clock, counters),
        responder=Responder(clock, busy_message="busy"),
        shared=shared,
    )
    return Setup(gate, shared, cap, counters, inner)


def test_pending_holds_bytes_until_admitted() -> None:
    """
    A connection waits, paused, for the shared decision; the bytes it sent
    meanwhile reach the front door in order once admitted, and its end
    releases both counts.
    """
    s = setup()
    protocol, transport = s.connect()
    assert transport.producerState == "paused"
    assert [key for key, _, _ in s.shared.asked] == ["192.0.2.1"]
    protocol.dataReceived(b"hello ")
    protocol.dataReceived(b"world")
    assert s.inner.built == []
    ticket = s.shared.admit_next()
    assert transport.producerState == "producing"
    assert s.inner.built[0].received == b"hello world"
    protocol.dataReceived(b"!")
    assert s.inner.built[0].received == b"hello world!"
    assert s.cap.count("192.0.2.1") == 1
    assert s.counters.accepted == 1
    transport.loseConnection()
    assert s.shared.released == [ticket]
    assert s.cap.count("192.0.2.1") == 0
    assert s.inner.built[0].lost == 1


def test_pending_refused(log_events: EventLoggingObserver) -> None:
    """
    A shared refusal is answered by a L{Refuser} with its reason, counted and
    logged like a local one; nothing is counted or released.
    """
    s = setup()
    protocol, transport = s.connect()
    protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    s.shared.refuse_next(Refusal.ADDRESS_CAP)
    assert isinstance(protocol.inner, Refuser)
    assert transport.value().startswith(b"HTTP/1.1 503 ")
    assert s.counters.refused[Refusal.ADDRESS_CAP] == 1
    assert s.counters.accepted == 0
    assert refusal_log_lines(log_events) == ["refused 192.0.2.1:10001: address-cap"]
    transport.loseConnection()
    assert s.shared.released == []
    assert s.inner.built == []


def test_client_leaving_before_the_answer_is_released() -> None:
    """
    A client that left while its admission was asked is released when the
    answer admits it: no count is left behind, no protocol built.
    """
    s = setup()
    protocol, transport = s.connect()
    protocol.connectionLost(Failure(ConnectionError()))
    ticket = s.shared.admit_next()
    assert s.shared.released == [ticket]
    assert s.cap.count("192.0.2.1") == 0
    assert s.inner.built == []
    assert s.counters.accepted == 0


def test_client_leaving_before_a_refusal() -> None:
    """
    A client that left before its refusal: nothing to answer or release.
    """
    s = setup()
    protocol, transport = s.connect()
    protocol.connectionLost(Failure(ConnectionError()))
    s.shared.refuse_next(Refusal.RATE)
    assert s.shared.released == []
    assert transport.value() == b""


def test_half_close_before_the_answer_closes() -> None:
    """
    A client that half-closes before the decision is closed (as a held
    connection is); its admission, when it comes, is given back.
    """
    s = setup(half_close=True)
    protocol, transport = s.connect()
    protocol.readConnectionLost()
    assert not transport.connected
    protocol.connectionLost(Failure(ConnectionError()))
    ticket = s.shared.admit_next()
    assert s.shared.released == [ticket]


def test_half_close_after_admission_is_passed_on() -> None:
    """
    Once admitted, a half-close reaches the front door.
    """
    s = setup(half_close=True)
    protocol, transport = s.connect()
    s.shared.admit_next()
    protocol.readConnectionLost()
    assert s.inner.built[0].read_closed == 1  # type: ignore[attr-defined]
    assert transport.connected


def test_declining_factory_releases() -> None:
    """
    A front door that declines an admitted connection: it is closed and
    released.
    """
    s = setup()
    s.inner.refuse = True
    protocol, transport = s.connect()
    ticket = s.shared.admit_next()
    assert not transport.connected
    assert s.shared.released == [ticket]
    assert s.cap.count("192.0.2.1") == 0


def test_unlimited_gate_never_asks() -> None:
    """
    Without per-address limits the shared ones are not asked: nothing waits.
    """
    s = setup()
    s.gate.reconfigure(None)
    protocol, _ = connect(s.gate, peer(1))
    assert isinstance(protocol, Inner)
    assert s.shared.asked == []


def test_answers_in_any_order() -> None:
    """
    Answers coming back in another order than asked each reach their own
    connection.
    """
    s = setup()
    first, _ = s.connect(1)
    second, _ = s.connect(2)
    first.dataReceived(b"one")
    second.dataReceived(b"two")
    _, limits, answer = s.shared.asked.pop(1)
    limits.count("192.0.2.1", 0.0)
    answer.callback(Decision(None, Ticket("192.0.2.1", True, 0)))
    assert [p.received for p in s.inner.built] == [b"two"]
    s.shared.admit_next()
    assert [p.received for p in s.inner.built] == [b"two", b"one"]


def test_pending_behind_the_cap_holds_a_slot_until_it_ends() -> None:
    """
    Behind the total cap, a pending connection holds its slot while it
    waits, and once admitted as long as it lives (given back once).
    """
    cap = make_cap(2, queue=False)
    s = setup()
    cap.factory.wrapped = s.gate
    protocol, transport = connect(cap.factory, peer(1))
    assert cap.state.cap.active == 1
    s.shared.admit_next()
    assert cap.state.cap.active == 1
    transport.loseConnection()
    assert cap.state.cap.active == 0
    protocol.connectionLost(Failure(ConnectionError()))
    assert cap.state.cap.active == 0


# Found in review (issue 17)


def test_held_then_pending_stays_paused_until_the_decision() -> None:
    """
    Queue mode at the cap: a connection held, then given its slot, asks the
    shared limits; it must stay paused until they decide (a L{Held} resuming
    after handing over must not undo the L{Pending}'s pause).
    """
    cap = make_cap(1, queue=True)
    s = setup()
    cap.factory.wrapped = s.gate
    first, first_transport = connect(cap.factory, peer(1))
    s.shared.admit_next()
    second, second_transport = connect(cap.factory, peer(2))
    assert second_transport.producerState == "paused"  # held
    first_transport.loseConnection()  # its slot goes to the held one
    assert len(s.shared.asked) == 1  # now asking the shared limits
    assert second_transport.producerState == "paused", "reading before the decision"
    s.shared.admit_next()
    assert second_transport.producerState == "producing"


def test_a_shared_refusal_gives_back_its_total_cap_slot_at_once() -> None:
    """
    As with the local limits (L{CapFactory.admit}, the PROXY header reader),
    a connection refused by a per-address policy must not hold a total-cap
    slot that another address's client could use, while its refusal is
    answered.
    """
    local = make_cap(1, queue=False)
    alone = setup()
    alone.gate.shared = None
    alone.cap.limit = 0  # every connection over the per-address cap
    local.factory.wrapped = alone.gate
    _, transport = connect(local.factory, peer(1))
    assert transport.connected and local.state.cap.active == 0  # the local rule
    cap = make_cap(1, queue=False)
    s = setup()
    cap.factory.wrapped = s.gate
    _, transport = connect(cap.factory, peer(1))
    s.shared.refuse_next(Refusal.ADDRESS_CAP)
    assert transport.connected  # the refusal waits for the client's first bytes
    assert cap.state.cap.active == 0, "a refused connection holds a total-cap slot"


def test_a_shared_refusal_on_a_tls_front_of_the_acceptor_is_not_in_clear() -> None:
    """
    In an acceptor (C{--workers}), a C{tls:} front's refusals are answered
    over TLS (L{TLSRefusals}: the worker speaks TLS, the acceptor only to
    refuse).  A shared refusal comes after L{TLSRefusals} has passed the
    pending connection on untouched: its answer must not go out in clear
    to a client that speaks TLS.
    """
    s = setup()
    front = TLSRefusals(s.gate, CertificateOptions())
    protocol, transport = connect(front, peer(1))
    assert isinstance(protocol, Pending)
    s.shared.refuse_next(Refusal.ADDRESS_CAP)
    protocol.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello
    assert b"busy" not in transport.value(), "the busy line sent in clear to a TLS client"


def test_shared_refusal_behind_a_proxy_header_gives_back_the_slot() -> None:
    """
    On a C{haproxy:} front the shared limits are asked about the address in
    the PROXY header; a refusal gives the total cap's slot (held by the
    header reader) back at once.
    """
    cap = make_cap(1, queue=False)
    s = setup()
    clock = MemoryReactorClock()
    cap.factory.wrapped = ProxyHeaderFactory(
        s.gate, clock=clock, timeout=5.0, refusals=RefusalLog(clock, Counters())
    )
    protocol, _ = connect(cap.factory, peer(1))
    protocol.dataReceived(b"PROXY TCP4 198.51.100.7 192.0.2.1 5000 7777\r\n")
    assert [key for key, _, _ in s.shared.asked] == ["198.51.100.7"]
    assert cap.state.cap.active == 1
    s.shared.refuse_next(Refusal.ADDRESS_CAP)
    assert cap.state.cap.active == 0
