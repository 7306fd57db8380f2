"""
Tests of the HTTP reverse proxy (L{gateway.http.proxy}) in this process, on
loopback, under pytest-twisted: an L{HTTPProxy} served by the gateway's own
L{HTTPSite} in front of real C{twisted.web} app servers (L{tests.httpapp}),
talked to by raw HTTP clients bound to 127.0.0.5 (so the client's address
differs from the gateway's).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint, clientFromString
from twisted.internet.interfaces import IListeningPort
from twisted.web import http
from twisted.web.resource import Resource
from typing_extensions import override

from gateway.http.connections import BackendConnections
from gateway.http.proxy import HTTPProxy
from gateway.http.site import HTTPSite
from gateway.pool.backends import Backend, BackendState, Pool
from tests.httpapp import (
    HOP_RESPONSE,
    App,
    Client,
    clock,
    connect,
    maybe,
    pattern,
    turns,
    wait_until,
)
from tests.support import closed_port


class _Site(HTTPSite):
    """
    The gateway's site, which notes the route and backend of each request it
    logs, and marks its channels trusted if asked (as a C{haproxy:} front).
    """

    trusted = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logged: list[tuple[str, str, int]] = []

    @override
    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.trusted_forwarded = self.trusted
        return channel

    @override
    def log(self, request: http.Request) -> None:
        self.logged.append(
            (
                getattr(request, "gateway_route", "-"),
                getattr(request, "gateway_backend", "-"),
                request.code,
            )
        )


class World:
    """
    App servers, gateways in front of them, and what to close afterwards.
    """

    def __init__(self) -> None:
        self.connections = BackendConnections(clock, idle_timeout=30)
        self.apps: list[App] = []
        self.ports: list[IListeningPort] = []
        self.clients: list[Client] = []
        self.site: _Site | None = None

    async def app(self, name: str, mode: str = "") -> App:
        """
        A new app server.
        """
        app = await App(name, mode).start()
        self.apps.append(app)
        return app

    async def gateway(
        self,
        backends: Sequence[App | str],
        *,
        timeout: float = 10.0,
        retries: int = 2,
        mount: bytes | None = None,
        strip: bool = False,
        trusted: bool = False,
        send_timeout: float = 60.0,
    ) -> tuple[int, HTTPProxy]:
        """
        A gateway site for a proxy to a pool of C{backends} (apps, or
        endpoint strings), mounted at C{/mount} if given (else at the root).

        @return: the site's port and the proxy.
        """
        pool = Pool(
            Backend(
                b.name if isinstance(b, App) else b,
                b.endpoint if isinstance(b, App) else b,
                clientFromString(clock, b.endpoint if isinstance(b, App) else b),
            )
            for b in backends
        )
        proxy = HTTPProxy(
            "api",
            pool,
            connections=self.connections,
            strip_prefix="/" + mount.decode() if strip and mount else None,
            timeout=timeout,
            connect_timeout=2.0,
            retries=retries,
        )
        root: Resource = proxy
        if mount is not None:
            root = Resource()
            root.putChild(mount, proxy)
        site = _Site(root, reactor=clock, send_timeout=send_timeout)
        site.trusted = trusted
        self.site = site
        endpoint = TCP4ServerEndpoint(clock, 0, interface="127.0.0.1")
        port = await endpoint.listen(site)
        self.ports.append(port)
        return port.getHost().port, proxy

    async def request(self, port: int, request: bytes) -> Client:
        """
        Send a whole request (it should say C{Connection: close}) and wait
        for the connection's end.
        """
        client = await connect(port)
        self.clients.append(client)
        client.send(request)
        await client.closed.addTimeout(30, clock)
        return client

    async def close(self) -> None:
        """
        Close every connection and port.
        """
        for client in self.clients:
            if client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]
        for port in self.ports:
            await maybe(port.stopListening())
        for app in self.apps:
            await app.stop()
        await self.connections.close()
        await turns()


@pytest_twisted.async_yield_fixture
async def world() -> AsyncIterator[World]:
    """
    A L{World}, closed after the test.
    """
    world = World()
    try:
        yield world
    finally:
        await world.close()


def get(target: bytes, *fields: bytes, method: bytes = b"GET", body: bytes = b"") -> bytes:
    """
    A request for C{target} with C{fields}, closing the connection after.
    """
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: api.example.com", *fields]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    if not any(field.lower().startswith(b"connection:") for field in fields):
        lines.append(b"Connection: close")
    return b"\r\n".join([*lines, b"", b""]) + body


def seen(client: Client, name: str) -> list[str]:
    """
    The values of field C{name} as the app received them.
    """
    return [value for key, value in client.json()["headers"] if key == name]


@pytest_twisted.ensureDeferred
async def test_forwarding_fields_replace_the_clients(world: World) -> None:
    """
    The app gets the client's C{Host}, the client's address in
    C{X-Forwarded-For} and C{Forwarded}, the scheme and host; what a client
    sent in those fields itself is dropped; C{Via} names the gateway.  The
    request's route and backend are on the logged request.
    """
    app = await world.app("app-1")
    port, _ = await world.gateway([app])
    client = await world.request(
        port,
        get(
            b"/who?x=1",
            b"X-Forwarded-For: 6.6.6.6",
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: evil.example",
            b"Forwarded: for=6.6.6.6",
        ),
    )
    assert client.head.startswith(b"HTTP/1.1 200 ")
    assert client.json()["uri"] == "/who?x=1"
    assert seen(client, "host") == ["api.example.com"]
    assert seen(client, "x-forwarded-for") == ["127.0.0.5"]
    assert seen(client, "x-forwarded-proto") == ["http"]
    assert seen(client, "x-forwarded-host") == ["api.example.com"]
    assert seen(client, "forwarded") == ["for=127.0.0.5;proto=http;host=api.example.com"]
    assert seen(client, "via") == ["1.1 gateway"]
    assert world.site is not None
    assert world.site.logged == [("api", "app-1", 200)]


@pytest_twisted.ensureDeferred
async def test_trusted_front_appends_to_forwarding_fields(world: World) -> None:
    """
    Behind a trusted hop (a C{haproxy:} front), the incoming forwarding
    fields are kept and our hop is appended.
    """
    app = await world.app("app-1")
    port, _ = await world.gateway([app], trusted=True)
    client = await world.request(
        port,
        get(
            b"/",
            b"X-Forwarded-For: 203.0.113.9",
            b"X-Forwarded-Proto: https",
            b"Forwarded: for=203.0.113.9;proto=https",
        ),
    )
    assert seen(client, "x-forwarded-for") == ["203.0.113.9, 127.0.0.5"]
    assert seen(client, "x-forwarded-proto") == ["https"]
    assert seen(client, "forwarded") == [
        "for=203.0.113.9;proto=https, for=127.0.0.5;proto=http;host=api.example.com"
    ]


@pytest_twisted.ensureDeferred
async def test_hop_by_hop_fields_removed_both_ways(world: World) -> None:
    """
    Neither the app nor the client gets the other side's hop-by-hop fields
    (C{Connection} and what it names, C{Keep-Alive}, C{TE}, C{Upgrade},
    C{Proxy-*}, C{Trailer}); end-to-end fields pass.
    """
    app = await world.app("app-1")
    port, _ = await world.gateway([app])
    client = await world.request(
        port,
        get(
            b"/?do=hop",
            b"Connection: X-Secret, close",
            b"X-Secret: 1",
            b"Keep-Alive: timeout=5",
            b"TE: trailers",
            b"Upgrade: h2c",
            b"Proxy-Authorization: Basic dTpw",
            b"X-End: yes",
        ),
    )
    names = {key for key, _ in client.json()["headers"]}
    assert "x-end" in names
    assert not names & {"x-secret", "keep-alive", "te", "upgrade", "proxy-authorization"}
    assert seen(client, "connection") in ([], ["close"])
    assert client.field(b"x-app") == [b"yes"]
    for name, _ in HOP_RESPONSE:
        if name != b"X-App" and name != b"Connection":
            assert client.field(name) == [], name
    assert client.field(b"connection") == [b"close"]


@pytest_twisted.ensureDeferred
async def test_strip_prefix(world: World) -> None:
    """
    A route that strips its prefix sends C{/v1/users?x=1} as C{/users?x=1}
    and C{/v1} as C{/}; one that does not sends the target as it came.
    """
    app = await world.app("app-1")
    port, _ = await world.gateway([app], mount=b"v1", strip=True)
    users = await world.request(port, get(b"/v1/users?x=1"))
    bare = await world.request(port, get(b"/v1"))
    assert users.json()["uri"] == "/users?x=1"
    assert bare.json()["uri"] == "/"
    kept_port, _ = await world.gateway([app], mount=b"v1")
    kept = await world.request(kept_port, get(b"/v1/users?x=1"))
    assert kept.json()["uri"] == "/v1/users?x=1"


@pytest_twisted.ensureDeferred
async def test_post_body_passed(world: World) -> None:
    """
    A request body reaches the app whole, with its length.
    """
    app = await world.app("app-1")
    port, _ = await world.gateway([app])
    body = bytes(range(256)) * 100
    client = await world.request(port, get(b"/upload", method=b"POST", body=body))
    answer = client.json()
    assert answer["method"] == "POST"
    assert answer["body_length"] == len(body)
    assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen(client, "content-length") == [str(len(body))]


@pytest_twisted.ensureDeferred
async def test_no_backend_up_is_502(world: World) -> None:
    """
    With no backend up the client gets a 502 with a short text body, and the
    pool counts a request it could not serve.
    """
    app = await world.app("app-1")
    port, proxy = await world.gateway([app])
    pool = proxy.pool
    assert isinstance(pool, Pool)
    pool.set_state(pool.backends[0], BackendState.DOWN, "test")
    client = await world.request(port, get(b"/"))
    assert client.head.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert client.field(b"content-type") == [b"text/plain; charset=utf-8"]
    assert b"no backend" in client.body
    assert pool.unserved == 1
    assert app.connections == 0


@pytest_twisted.ensureDeferred
async def test_all_refused_is_502_and_failover(world: World) -> None:
    """
    A refused connection goes on to the next backend (a POST too: it never
    reached the first); when every backend refuses, the client gets a 502,
    each failure counted on its backend.
    """
    dead = [f"tcp:127.0.0.1:{closed_port()}" for _ in range(2)]
    port, proxy = await world.gateway(dead)
    client = await world.request(port, get(b"/"))
    assert client.head.startswith(b"HTTP/1.1 502 ")
    assert [b.failures for b in proxy.pool.backends] == [1, 1]  # type: ignore[attr-defined]
    assert [b.total for b in proxy.pool.backends] == [0, 0]  # type: ignore[attr-defined]

    app = await world.app("app-1")
    port, proxy = await world.gateway([dead[0], app])
    client = await world.request(port, get(b"/", method=b"POST", body=b"x"))
    assert client.json()["app"] == "app-1"
    backends = proxy.pool.backends  # type: ignore[attr-defined]
    assert [(b.failures, b.total, b.active) for b in backends] == [(1, 0, 0), (0, 1, 0)]


@pytest_twisted.ensureDeferred
async def test_silent_backend_is_504_and_its_request_cancelled(world: World) -> None:
    """
    No response head within the route's timeout: a 504, and the request to
    the backend is given up (its connection closed).
    """
    app = await world.app("slow", mode="hang")
    port, proxy = await world.gateway([app], timeout=0.3)
    client = await world.request(port, get(b"/"))
    assert client.head.startswith(b"HTTP/1.1 504 Gateway Timeout")
    await wait_until(lambda: len(app.hang_ended) == 1, "the app's request ended")
    backend = proxy.pool.backends[0]  # type: ignore[attr-defined]
    # The route's timeout is not counted against the backend (passive
    # detection would take it out of service for every route).
    assert (backend.active, backend.total, backend.failures) == (0, 1, 0)


@pytest_twisted.ensureDeferred
async def test_route_timeout_longer_than_the_send_timeout(world: World) -> None:
    """
    Waiting for a backend's answer is not a stalled response: a route whose
    timeout is longer than the channel's send timeout gets its 504 at its
    own timeout, not an aborted connection at the send timeout.
    """
    app = await world.app("slow", mode="hang")
    port, _ = await world.gateway([app], timeout=1.5, send_timeout=0.4)
    client = await world.request(port, get(b"/"))
    assert client.head.startswith(b"HTTP/1.1 504 Gateway Timeout")


@pytest_twisted.ensureDeferred
async def test_idempotent_request_retried_after_a_silent_close(world: World) -> None:
    """
    A backend that closes without answering: a GET goes on to the next
    backend; a POST is not retried (it may have been acted on) and gets 502.
    """
    closer = await world.app("closer", mode="close")
    good = await world.app("good")
    port, proxy = await world.gateway([closer, good])
    client = await world.request(port, get(b"/"))
    assert client.json()["app"] == "good"
    assert (closer.requests, good.requests) == (1, 1)

    port, proxy = await world.gateway([closer, good])
    client = await world.request(port, get(b"/", method=b"POST", body=b"order=1"))
    assert client.head.startswith(b"HTTP/1.1 502 ")
    assert (closer.requests, good.requests) == (2, 1)
    assert [b.active for b in proxy.pool.backends] == [0, 0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["die", "diechunked"])
@pytest_twisted.ensureDeferred
async def test_backend_dying_mid_response_cuts_the_client_response(
    world: World, mode: str
) -> None:
    """
    A backend that dies mid-body: the client gets what came, then its
    connection closes short of the announced length, or without the last
    chunk of a chunked body: never a response that looks whole.
    """
    app = await world.app("dying", mode=mode)
    port, proxy = await world.gateway([app])
    client = await connect(port)
    world.clients.append(client)
    client.send(get(b"/", b"Connection: keep-alive"))  # closed only if cut
    await wait_until(lambda: client.closed.called, "the client's connection closed")
    assert client.head.startswith(b"HTTP/1.1 200 ")
    if mode == "die":
        assert client.field(b"content-length") == [b"1000000"]
        assert len(client.body) < 1000000
    else:
        assert client.field(b"transfer-encoding") == [b"chunked"]
        assert not client.body.endswith(b"0\r\n\r\n")
    assert b"x" * 1000 in client.body
    assert proxy.pool.backends[0].active == 0  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_keep_alive_towards_the_backend(world: World) -> None:
    """
    Sequential requests (from separate client connections) reuse one
    connection to the app.
    """
    app = await world.app("app-1")
    port, _ = await world.gateway([app])
    for _ in range(5):
        client = await world.request(port, get(b"/"))
        assert client.head.startswith(b"HTTP/1.1 200 ")
        await turns(1)
    assert (app.requests, app.connections) == (5, 1)


@pytest_twisted.ensureDeferred
async def test_head_and_no_body_statuses(world: World) -> None:
    """
    A HEAD response and a 204 or 304 carry no body.
    """
    app = await world.app("app-1")
    port, _ = await world.gateway([app])
    head = await world.request(port, get(b"/", method=b"HEAD"))
    assert head.head.startswith(b"HTTP/1.1 200 ")
    assert int(head.field(b"content-length")[0]) > 0
    assert head.body == b""
    for code in (204, 304):
        client = await world.request(port, get(b"/?do=status&code=%d" % code))
        assert client.head.startswith(b"HTTP/1.1 %d " % code)
        assert client.body == b""
        assert client.field(b"content-type") == []


SIZE = 64 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_slow_client_pauses_the_backend(world: World) -> None:
    """
    A client that stops reading a large response stops the gateway reading
    from the app (the app's writes stall well short of the body's size);
    once it reads again it gets the whole body, in order.
    """
    app = await world.app("app-1")
    port, proxy = await world.gateway([app])
    client = await connect(port)
    world.clients.append(client)
    assert client.transport is not None
    client.transport.pauseProducing()  # type: ignore[attr-defined]
    client.send(get(b"/big?do=big&n=%d" % SIZE))
    await wait_until(lambda: app.streamers, "the app started")
    streamer = app.streamers[0]
    previous = -1
    while previous != streamer.sent:  # until the app is stalled
        previous = streamer.sent
        await turns(20)
    assert streamer.paused
    assert streamer.sent < SIZE // 2
    client.transport.resumeProducing()  # type: ignore[attr-defined]
    await client.closed.addTimeout(60, clock)
    head = len(client.head) + 4
    assert client.count - head == SIZE
    assert client.received[head:] == pattern(0, len(client.received) - head)
    assert proxy.pool.backends[0].active == 0  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_body_closes_the_backend_connection(world: World) -> None:
    """
    A client that leaves during a large response: the app's connection is
    closed (not kept half-read for another request), and the backend no
    longer counts the request.
    """
    app = await world.app("app-1")
    port, proxy = await world.gateway([app])
    client = await connect(port)
    client.send(get(b"/big?do=big&n=%d" % SIZE))
    await wait_until(lambda: client.count > 1 << 20, "the body started")
    assert client.transport is not None
    client.transport.abortConnection()  # type: ignore[attr-defined]
    await wait_until(lambda: app.streamers[0].stopped, "the app's response stopped")
    await wait_until(lambda: proxy.pool.backends[0].active == 0, "the request is over")  # type: ignore[attr-defined]
    after = await world.request(port, get(b"/"))
    assert after.json()["app"] == "app-1"
    assert app.connections == 2


@pytest_twisted.ensureDeferred
async def test_reconfigure_takes_the_next_requests(world: World) -> None:
    """
    A reload's new pool and settings apply to the requests that come next:
    they go to the new pool's backends, with the new prefix rule.
    """
    old = await world.app("old")
    new = await world.app("new")
    port, proxy = await world.gateway([old], mount=b"v1")
    first = await world.request(port, get(b"/v1/a"))
    assert (first.json()["app"], first.json()["uri"]) == ("old", "/v1/a")
    pool = Pool([Backend("new", new.endpoint, clientFromString(clock, new.endpoint))])
    proxy.reconfigure(pool, strip_prefix="/v1", timeout=5.0, connect_timeout=1.0, retries=0)
    second = await world.request(port, get(b"/v1/a"))
    assert (second.json()["app"], second.json()["uri"]) == ("new", "/a")
