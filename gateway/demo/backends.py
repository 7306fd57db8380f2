"""
The demo's game servers as backends: C{--demo} runs two L{HiLoFactory}
servers in-process, on ephemeral loopback ports, and puts each into the pool.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.logger import Logger
from typing_extensions import override

from gateway.demo.game import HiLoFactory
from gateway.pool.backends import Backend, Pool

__all__ = ["DEMO_BACKENDS", "DemoBackends"]

DEMO_BACKENDS = ("demo-a", "demo-b")
"""Names of the demo game servers that C{--demo} runs in-process."""


class DemoBackends(Service):
    """
    The built-in demo game servers: listen on ephemeral loopback ports and put
    each into the pool as a backend.
    """

    _log = Logger()

    def __init__(
        self, pool: Pool, reactor: IReactorTCP, names: tuple[str, ...], max_sessions: int = 0
    ) -> None:
        """
        @param max_sessions: each server's session limit (0: none).
        """
        self._pool = pool
        self._max_sessions = max_sessions
        self._reactor = reactor
        self._names = names
        self._ports: list[IListeningPort] = []
        self._backends: list[Backend] = []

    @override
    def startService(self) -> None:
        super().startService()
        for name in self._names:
            factory = HiLoFactory(name)
            port = self._reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
            self._ports.append(port)
            number = port.getHost().port  # type: ignore[attr-defined]
            description = f"tcp:127.0.0.1:{number}"
            backend = Backend(
                name=name,
                description=description,
                endpoint=TCP4ClientEndpoint(self._reactor, "127.0.0.1", number),
                max_sessions=self._max_sessions,
                address=(socket.AF_INET, ("127.0.0.1", number)),
            )
            self._pool.add(backend)
            self._backends.append(backend)
            self._log.info(
                "demo game server {name} listening on {endpoint}", name=name, endpoint=description
            )

    @override
    def stopService(self) -> Any:
        super().stopService()
        backends, self._backends = self._backends, []
        for backend in backends:
            self._pool.remove(backend)
        ports, self._ports = self._ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports])
