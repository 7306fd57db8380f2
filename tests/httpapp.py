"""
Real HTTP app servers and a raw HTTP client for the reverse proxy's tests
(L{tests.test_http_proxy}), on loopback in the test's reactor.

An L{App} is a C{twisted.web} site on an ephemeral port whose one resource
answers with what it received (method, target, fields, body) as JSON, or
behaves as asked by its C{mode} or the request's C{do} query argument:
C{hang} (never answers), C{close} (closes without answering), C{die}
(announces a long body, sends part, closes), C{diechunked} (the same,
chunked), C{big} (streams C{n} bytes under flow control), C{hop} (answers
with hop-by-hop fields), C{status} (answers with status C{code}).  It counts
the TCP connections it accepted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort, IPushProducer, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override
from zope.interface import implementer

reactor: IReactorTCP = _reactor
clock: IReactorTime = _reactor

CHUNK = 64 * 1024


def pattern(start: int, size: int) -> bytes:
    """
    The C{size} bytes at C{start} of a streamed body (a checkable pattern:
    the byte at offset M{i} is M{i mod 251}).
    """
    return bytes((start + i) % 251 for i in range(size))


@implementer(IPushProducer)
class Streamer:
    """
    Writes C{size} bytes to a response as fast as its transport takes them.

    @ivar sent: bytes written so far.
    @ivar paused: whether the transport asked it to wait.
    @ivar stopped: whether the response's connection went away.
    """

    def __init__(self, request: Request, size: int) -> None:
        self.request = request
        self.size = size
        self.sent = 0
        self.paused = False
        self.stopped = False
        self._block = pattern(0, CHUNK + 251)

    def start(self) -> None:
        """
        Register with the response and start writing.
        """
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = False
        while not self.paused and not self.stopped and self.sent < self.size:
            start = self.sent % 251
            block = self._block[start : start + min(CHUNK, self.size - self.sent)]
            self.sent += len(block)
            self.request.write(block)
        if self.sent >= self.size and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.paused = True

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.stopped = True


class _Answer(Resource):
    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, app: App) -> None:
        super().__init__()
        self._app = app

    @override
    def render(self, request: Request) -> bytes | int:
        app = self._app
        app.requests += 1
        do = app.mode or request.args.get(b"do", [b""])[0].decode()
        body = request.content.read() if request.content is not None else b""
        if do == "hang":
            app.hanging.append(request)
            request.notifyFinish().addBoth(lambda _: app.hang_ended.append(request))
            return NOT_DONE_YET
        if do == "close":
            request.channel.transport.loseConnection()  # type: ignore[union-attr]
            return NOT_DONE_YET
        if do in ("die", "diechunked"):
            if do == "die":
                request.setHeader(b"content-length", b"1000000")
            request.write(b"x" * 10000)
            request.channel.transport.loseConnection()  # type: ignore[union-attr]
            return NOT_DONE_YET
        if do == "big":
            size = int(request.args[b"n"][0])
            request.setHeader(b"content-length", b"%d" % size)
            streamer = Streamer(request, size)
            app.streamers.append(streamer)
            request.notifyFinish().addErrback(lambda _: setattr(streamer, "stopped", True))
            streamer.start()
            return NOT_DONE_YET
        if do == "hop":
            for name, value in HOP_RESPONSE:
                request.responseHeaders.addRawHeader(name, value)
        if do == "status":
            request.setResponseCode(int(request.args[b"code"][0]))
            return b""
        request.setHeader(b"content-type", b"application/json")
        seen = {
            "app": app.name,
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": [
                [name.decode().lower(), value.decode()]
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_length": len(body),
        }
        return json.dumps(seen).encode()


HOP_RESPONSE = [
    (b"Connection", b"X-Private"),
    (b"X-Private", b"secret"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Authenticate", b"Basic"),
    (b"Trailer", b"X-Checksum"),
    (b"X-App", b"yes"),
]


class _CountingSite(Site):
    def __init__(self, app: App) -> None:
        super().__init__(_Answer(app))
        self._app = app

    @override
    def buildProtocol(self, addr: Any) -> Any:
        self._app.connections += 1
        return super().buildProtocol(addr)


class App:
    """
    An HTTP app server on 127.0.0.1 (see the module's docstring).

    @ivar connections: TCP connections it accepted.
    @ivar requests: requests it received.
    """

    def __init__(self, name: str, mode: str = "") -> None:
        self.name = name
        self.mode = mode
        self.connections = 0
        self.requests = 0
        self.hanging: list[Request] = []
        self.hang_ended: list[Request] = []
        self.streamers: list[Streamer] = []
        self.port: IListeningPort | None = None

    async def start(self) -> App:
        """
        Listen on an ephemeral loopback port.
        """
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(_CountingSite(self))
        return self

    @property
    def endpoint(self) -> str:
        """
        Its client endpoint string.
        """
        assert self.port is not None
        return f"tcp:127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """
        Stop listening.
        """
        if self.port is not None:
            await maybe(self.port.stopListening())


class Client(Protocol):
    """
    A raw HTTP client connection that keeps what it receives (the first
    C{keep} bytes, and a count of all).
    """

    def __init__(self, keep: int = 1 << 20) -> None:
        self.received = b""
        self.count = 0
        self.keep = keep
        self.closed: Deferred[None] = Deferred()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        if len(self.received) < self.keep:
            self.received += data[: self.keep - len(self.received)]

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)

    def send(self, data: bytes) -> None:
        """
        Write C{data}.
        """
        assert self.transport is not None
        self.transport.write(data)

    @property
    def head(self) -> bytes:
        """
        The response's status line and fields.
        """
        return self.received.split(b"\r\n\r\n", 1)[0]

    @property
    def body(self) -> bytes:
        """
        What followed the response's head (as much as was kept).
        """
        return self.received.split(b"\r\n\r\n", 1)[1]

    def field(self, name: bytes) -> list[bytes]:
        """
        The values of the response field C{name}.
        """
        values = []
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                values.append(value.strip())
        return values

    def json(self) -> Any:
        """
        The response body as JSON.
        """
        return json.loads(self.body)


async def connect(port: int, source: str = "127.0.0.5") -> Client:
    """
    A client connection to C{port} on 127.0.0.1 from C{source}.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    client = Client()
    await connectProtocol(endpoint, client)
    return client


async def maybe(result: Deferred[None] | None) -> None:
    """
    Wait for C{result} if it is a Deferred (C{stopListening} may return none).
    """
    if result is not None:
        await result


async def wait_until(predicate: Any, what: str, polls: int = 400) -> None:
    """
    Let the reactor run until C{predicate()} holds (polled every 25 ms).

    @raise AssertionError: it did not hold after C{polls} polls.
    """
    for _ in range(polls):
        if predicate():
            return
        await deferLater(clock, 0.025, lambda: None)
    raise AssertionError(f"never happened: {what}")


async def turns(count: int = 3) -> None:
    """
    Let the reactor run a few short turns.
    """
    for _ in range(count):
        await deferLater(clock, 0.01, lambda: None)
