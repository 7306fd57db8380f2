"""
One listening front: L{FrontListener} binds (or adopts, in a hand-over) its
endpoint while the service runs, and owns its listening port; and
L{server_endpoint}, the server endpoint of a front's string (C{tls:} with the
gateway's own PEM-folder reading, anything else through Twisted's parser).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    _parse,
    serverFromString,
    wrapServerTLS,
)
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.front.admission import CapState
from gateway.front.chain import split_front
from gateway.front.door import FrontDoor
from gateway.front.pemfolder import FolderError
from gateway.front.tls import SNICertificates, is_tls_front, tls_front_endpoint
from gateway.process.errors import StartupError
from gateway.session.bareclient import BareClient

__all__ = [
    "BIND_RETRY",
    "LISTEN_BACKLOG",
    "FrontListener",
    "listen_backlog",
    "resize_queue",
    "server_endpoint",
    "with_backlog",
]

BIND_RETRY = 0.05
"""Seconds between attempts to bind an address a dying process still holds."""

LISTEN_BACKLOG = 4096
"""
The listen queue of a front whose string does not set C{backlog=}.

Twisted's default (50) overflows in a login storm, when every player comes
back at once, or while the gateway is busy: the kernel then drops the
handshake's last step, and the player waits for a retransmission (1 s, 3 s,
7 s...) or, when the server speaks first, sits connected on its side only for
as long.  The kernel caps the queue at C{net.core.somaxconn} (4096 on current
Linux); HAProxy sizes it by its connection limit, nginx asks for 511.  An
entry costs memory only while a connection waits in it.
"""

_BACKLOG_POSITION = {"tcp": 3, "tcp6": 2, "unix": 3, "ssl": 6, "tls": 3}
"""Where C{backlog} comes among the arguments of each kind that has one (its
kind counted as 0): C{tcp:PORT:INTERFACE:BACKLOG}, C{tcp6:PORT:BACKLOG}, ..."""


class FrontListener(Service):
    """
    One public front: listens on its endpoint while the service runs.

    It binds in C{privilegedStartService} (before twistd drops privileges, so
    ports below 1024 work) and a port that cannot be bound stops start-up with
    one line naming the option, instead of a traceback or a gateway that runs
    on without its port.

    @ivar description: the endpoint string, as configured.
    @ivar port: the listening port once bound, else L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        cap_state: CapState | None = None,
        option: str = "--listen",
    ) -> None:
        """
        @param cap_state: the total cap, which pauses and resumes this front's
            accepting in queue mode.
        @param option: the option the endpoint came from, for error messages.
        """
        self.option = option
        self.description = description
        self._endpoint = endpoint
        self._factory = factory
        self._cap_state = cap_state
        self.port: IListeningPort | None = None
        self.handed_over = False
        self.adopted = False
        self._patience = 0.0
        self.setName(f"{option.lstrip('-')} {description}")

    def adopt(self, reactor: Any, fd: int, family: int) -> None:
        """
        Listen on an already listening socket (taken over from the gateway
        this one replaces) instead of binding a new one.  Its listen queue is
        sized again as this front's string asks (the gateway it came from may
        have asked for another: an older one listened with Twisted's 50).
        """
        self._endpoint = _adopting(self._endpoint, reactor, fd, family)
        self.adopted = True
        backlog = listen_backlog(split_front(self.description)[1])
        if backlog is not None:
            resize_queue(fd, backlog)

    def clear_stale(self) -> None:
        """
        A UNIX front left by a gateway that died: remove its socket and lock
        file when nobody listens at its path and the lock names a process
        that is gone or a zombie, so that this front can be bound.  (Twisted
        breaks a lock only once its process is gone, and a killed gateway
        stays a zombie until its parent reaps it: a new gateway started by
        a hand-over that the death broke would otherwise lose that race.)
        """
        if not isinstance(self._endpoint, UNIXServerEndpoint):
            return
        path = self._endpoint._address
        if not isinstance(path, str) or path.startswith("\0"):
            return
        try:
            holder = int(os.readlink(path + ".lock"))
        except (OSError, ValueError):
            holder = 0
        if (holder and _running(holder)) or _answering(path):
            return
        for stale in (path + ".lock", path):
            if os.path.lexists(stale):
                os.unlink(stale)
        self._log.info("removed the stale socket {path} of process {pid}", path=path, pid=holder)

    def hand_over(self) -> None:
        """
        Another process accepts on this front's socket now: stop accepting
        here, but keep the socket open (closing it is the new process's
        business; nothing in its queue may be lost).
        """
        port = self.port
        if port is None or self.handed_over:
            return
        self.handed_over = True
        if self._cap_state is not None:
            self._cap_state.remove_port(port)
        port.stopReading()  # type: ignore[attr-defined]

    def take_back(self) -> None:
        """
        The process this front was handed over to went away before it
        finished taking over: accept here again.
        """
        port = self.port
        if port is None or not self.handed_over:
            return
        self.handed_over = False
        port.startReading()  # type: ignore[attr-defined]
        if self._cap_state is not None:
            self._cap_state.add_port(port)  # paused again if the cap is full

    @override
    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        deadline = time.monotonic() + self._patience
        while True:
            outcome: list[IListeningPort | Failure] = []
            listening: Deferred[IListeningPort] = self._endpoint.listen(self._factory)
            listening.addBoth(outcome.append)
            if not outcome:
                # An endpoint that binds later (none of Twisted's do): keep going.
                listening.addCallback(self._bound)
                return
            result = outcome[0]
            if not isinstance(result, Failure):
                self._bound(result)
                return
            if not (_in_use(result) and time.monotonic() < deadline):
                raise StartupError(
                    f"gateway: error: {self.option} {self.description}: {result.getErrorMessage()}"
                )
            # Start-up, before the reactor runs: a short blocking wait is all
            # there is, and it is bounded by the patience.  A unix: front's
            # socket and lock are cleared once their holder is gone.
            time.sleep(BIND_RETRY)
            self.clear_stale()

    def wait_for_release(self, seconds: float) -> None:
        """
        If the address is in use when this front binds, try again for up to
        C{seconds}: a gateway whose hand-over broke because it died may still
        be closing its sockets (a killed process closes them one by one, and
        its hand-over connection may be reset before its port is free).
        """
        self._patience = seconds

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if type(port) is tcp.Port:
            # A plain TCP front: each connection gets the transport it needs.
            port.transport = front_transport  # type: ignore[assignment]
        if self._cap_state is not None:
            self._cap_state.add_port(port)
        self._log.info(
            "listening on {front} ({address})", front=self.description, address=self.address
        )
        return port

    @property
    def address(self) -> str | None:
        """
        The bound address: C{HOST:PORT} (C{[HOST]:PORT} for IPv6) or a
        UNIX path; L{None} while not listening.
        """
        if self.port is None:
            return None
        host = self.port.getHost()
        if isinstance(host, IPv4Address | IPv6Address):
            name = host.host if ":" not in host.host else f"[{host.host}]"
            return f"{name}:{host.port}"
        path = getattr(host, "name", None)
        return path.decode(errors="replace") if isinstance(path, bytes) else str(path)

    @override
    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        if self.handed_over:
            # Only close our descriptor: stopListening would shut the shared
            # socket down (TCP) or remove its path (UNIX) under the new process.
            port.socket.close()  # type: ignore[attr-defined]
            return None
        if self._cap_state is not None:
            self._cap_state.remove_port(port)
        return port.stopListening()


def front_transport(
    sock: socket.socket,
    protocol: Any,
    addr: tuple[Any, ...],
    port: tcp.Port,
    sessionno: int,
    reactor: Any,
) -> BareClient | tcp.Server:
    """
    What a plain TCP front's port builds for each accepted connection, in
    place of its C{tcp.Server} (C{tcp.Port.transport}, with its arguments):
    a L{BareClient} for a connection that goes straight to the front door,
    with the TCP fast path on (it becomes a transport when something needs
    one: L{gateway.session.bareclient}); Twisted's C{tcp.Server} for
    anything else (a refused, held, pending or handed-off connection, or
    C{--no-tcp-fast-path}).
    """
    if type(protocol) is FrontDoor and protocol.factory.settings.tcp_fast_path:
        return BareClient(sock, protocol, addr, port, sessionno, reactor)
    return tcp.Server(sock, protocol, addr, port, sessionno, reactor)


def _in_use(failure: Failure) -> bool:
    """
    Whether a failed listen failed because the address is in use (a TCP
    port, or a UNIX path whose lock another process holds).
    """
    error = getattr(failure.value, "socketError", None)
    if isinstance(error, OSError):
        return error.errno == errno.EADDRINUSE
    # A unix: front whose lock file another process holds.
    return error == "Cannot acquire lock"


def _running(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            state = stat_file.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _answering(path: str) -> bool:
    """
    Whether something listens at the UNIX socket C{path} (a missing path
    or a refused connection count as not; any other error as yes).
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as error:
        return not isinstance(error, (ConnectionRefusedError, FileNotFoundError))
    finally:
        probe.close()
    return True


def resize_queue(fd: int, backlog: int) -> None:
    """
    Set the listen queue of the listening socket C{fd} (C{listen(2)} again:
    Linux resizes the queue of a socket that listens already); the
    descriptor stays open.
    """
    sock = socket.socket(fileno=fd)
    try:
        sock.listen(backlog)
    finally:
        sock.detach()


def _adopting(endpoint: IStreamServerEndpoint, reactor: Any, fd: int, family: int) -> Any:
    """
    C{endpoint}, listening on the socket C{fd} instead of binding: the
    socket itself for TCP and UNIX endpoints; for Twisted's C{tls:} endpoint
    (TLS over a TCP endpoint, with public C{endpoint} and
    C{connectionCreator} attributes) the same TLS over the socket.

    @raise ValueError: another kind of endpoint (C{ssl:}, a plugin's), whose
        protocol on top of the socket cannot be rebuilt here.
    """
    adopted = AdoptedStreamServerEndpoint(reactor, fd, family)
    if isinstance(
        endpoint,
        (TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint, AdoptedStreamServerEndpoint),
    ):
        return adopted
    creator = getattr(endpoint, "connectionCreator", None)
    if creator is not None and isinstance(
        getattr(endpoint, "endpoint", None), (TCP4ServerEndpoint, TCP6ServerEndpoint)
    ):
        return wrapServerTLS(creator, adopted, getattr(endpoint, "clock", None))
    raise ValueError(
        f"cannot take over a front of type {type(endpoint).__name__}: "
        "only tcp:, tcp6:, unix:, tls: and haproxy: fronts (use tls: instead of ssl:)"
    )


def server_endpoint(
    reactor: Any, description: str, option: str, certificates: list[SNICertificates]
) -> IStreamServerEndpoint:
    """
    The server endpoint of C{description}: a C{tls:} one with the gateway's
    own PEM folder reading (its connection creator added to
    C{certificates}), any other through L{serverFromString}.

    @raise StartupError: a C{tls:} folder cannot be served (it was checked
        with the options, but may have changed since).
    """
    if not is_tls_front(description):
        plain: IStreamServerEndpoint = serverFromString(reactor, with_backlog(description))
        return plain
    try:
        endpoint, creator = tls_front_endpoint(
            reactor, description, reactor, backlog=LISTEN_BACKLOG
        )
    except (ValueError, FolderError) as error:
        raise StartupError(f"gateway: error: {option} {description}: {error}") from None
    certificates.append(creator)
    return endpoint


def _backlog_argument(text: str) -> tuple[bool, str | None]:
    """
    Whether the front string C{text} (without C{haproxy:}) is of a kind with
    a listen queue, and the queue it gives (by name or by position), if any.
    """
    try:
        args, kwargs = _parse(text)
    except (ValueError, RuntimeError):  # RuntimeError: a trailing backslash
        return False, None  # the parser's own error says why, elsewhere
    position = _BACKLOG_POSITION.get(str(args[0]).lower()) if args else None
    if position is None:
        return False, None
    given = kwargs.get("backlog", args[position] if len(args) > position else None)
    return True, None if given is None else str(given)


def with_backlog(description: str) -> str:
    """
    C{description} with C{backlog=}L{LISTEN_BACKLOG} added, if it is a kind
    with a listen queue (C{tcp}, C{tcp6}, C{unix}, C{ssl}, the gateway's
    C{tls}) and does not set one itself (by name or by position); any other
    string (C{systemd:}, which adopts a socket already listening, or one that
    does not parse) unchanged.  For the endpoint only: messages and log
    lines name the front as configured.
    """
    queued, given = _backlog_argument(description)
    if not queued or given is not None:
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


def listen_backlog(text: str) -> int | None:
    """
    The listen queue the front string C{text} (without C{haproxy:}) asks
    for: its own, else L{LISTEN_BACKLOG}; L{None} for a kind without one
    (C{systemd:}) or a string that does not parse.
    """
    queued, given = _backlog_argument(text)
    if not queued:
        return None
    if given is None:
        return LISTEN_BACKLOG
    try:
        return int(given)
    except ValueError:
        return None
