"""
The limits used from Python, around any Twisted factory (docs/guide.md's
example), on the real reactor and loopback.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.admission import AddressGate, CapFactory, CapState, Responder
from gateway.limits import AddressCap, AddressLimits, AddressRate, Refusal, TotalCap
from gateway.registry import Counters, RefusalLog

reactor: IReactorTCP = _reactor
clock: IReactorTime = _reactor


class Echo(Protocol):
    """
    A plain Twisted protocol, with no close hooks of its own.
    """

    @override
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Client(Protocol):
    """
    Sends one line and keeps what comes back; fires C{done} on close.
    """

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.echoed: Deferred[bytes] = Deferred()

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello\n")

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received == b"hello\n" and not self.echoed.called:
            self.echoed.callback(self.received)

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_limits_around_any_factory() -> None:
    """
    CapFactory and AddressGate around a plain Echo factory: four connections
    from one address are served, the fifth is refused with the busy line and
    counted, and closing them releases every slot.
    """
    counters = Counters()
    refusals = RefusalLog(clock, counters)
    responder = Responder(clock, busy_message="busy, try later", wait=0.2)
    limits = AddressLimits([AddressCap(4), AddressRate(rate=2, burst=5)])
    gate = AddressGate(
        Factory.forProtocol(Echo), limits, clock=clock, refusals=refusals, responder=responder
    )
    cap = CapState(TotalCap(100), queue_mode=False, refusals=refusals, responder=responder)
    port = reactor.listenTCP(0, CapFactory(cap, gate), interface="127.0.0.1")
    cap.add_port(port)
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]
        served = []
        for _ in range(4):
            client = Client()
            await connectProtocol(endpoint, client)
            assert await client.echoed == b"hello\n"
            served.append(client)
        refused = Client()
        await connectProtocol(endpoint, refused)
        assert await refused.done == b"busy, try later\r\n"
        assert counters.refused[Refusal.ADDRESS_CAP] == 1
        assert counters.accepted == 4
        for client in served:
            assert client.transport is not None
            client.transport.loseConnection()
            await client.done
        for _ in range(50):  # the server side sees the closes a moment later
            if cap.cap.active == 0:
                break
            await deferLater(clock, 0.02, lambda: None)
        assert cap.cap.active == 0
        assert len(limits.policies[0]) == 0  # type: ignore[arg-type]
    finally:
        cap.remove_port(port)
        await maybeDeferred(port.stopListening)
