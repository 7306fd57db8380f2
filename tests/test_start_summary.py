"""
The dashboard's URL that the start-up log gives once the admin endpoint
listens (L{gateway.process.summary.dashboard_url}), on listening ports in
memory (L{MemoryReactor}).
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

from gateway.process.listener import FrontListener
from gateway.process.summary import dashboard_url


def listening(description: str) -> FrontListener:
    """
    An admin listener for C{description}, started on a memory reactor.
    """
    reactor = MemoryReactor()
    listener = FrontListener(
        description,
        serverFromString(reactor, description),
        Factory.forProtocol(Protocol),
        option="--admin",
    )
    listener.startService()
    return listener


@pytest.mark.parametrize(
    ("admin", "url"),
    [
        ("tcp6:8443:interface=\\:\\:1", "http://[::1]:8443/"),
        ("tcp:9090", f"http://{socket.gethostname()}:9090/"),
    ],
)
def test_url_of_a_tcp_admin_endpoint(admin: str, url: str) -> None:
    """
    The URL names the bound address and port (in brackets for IPv6), or the
    machine's name when the endpoint listens on every interface.  (The
    memory reactor binds every IPv4 endpoint to every interface; the
    browser test of the start-up log checks one bound to 127.0.0.3.)
    """
    assert dashboard_url(listening(admin)) == url


def test_not_listening_nor_tcp() -> None:
    """
    No URL before the endpoint listens, nor for a UNIX socket (a browser
    cannot open one).
    """
    reactor = MemoryReactor()
    idle = FrontListener(
        "tcp:9090", serverFromString(reactor, "tcp:9090"), Factory.forProtocol(Protocol)
    )
    assert dashboard_url(idle) is None
    assert dashboard_url(listening("unix:/run/gateway-admin.sock")) is None
