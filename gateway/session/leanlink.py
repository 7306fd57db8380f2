"""
The TCP fast path's backend connection: a bare socket from connect to splice.

A game session that will splice (a plain client socket, the C{auto} or
C{splice} relay mode) to a plain backend (C{tcp:} with an IP address, or
C{unix:}, with no other endpoint argument: L{bare_address}) needs nothing of
a Twisted transport while the kernel moves its bytes: the transport's buffers,
producer and half-close logic sit unused until splicing ends.  A L{LeanLink}
connects a bare non-blocking socket instead (no endpoint, connector, Deferred
or wrapping protocol), watched by the reactor for writability until the
connect completes, and gives its descriptor to
L{gateway.session.splice.SpliceRelay} as it is.

It is a link like L{gateway.session.backendlink.BackendLink}, and reports to
the same places: its success to the session (C{link_ready}), its failure to
the dialer (the errback of a Deferred attempt), so that counting, logging,
the local-shortage rule and the retries stay in the dialer.  The dialer
cancels it as it cancels a Deferred (L{LeanLink.cancel}).

When the relay hands the sockets back (an error, an end of stream with bytes
still in flight, the session closing), the session calls L{LeanLink.adopt}:
the socket becomes an ordinary Twisted transport whose protocol is a ready
L{BackendLink}, and the session goes on as any other, so every uncommon
ending has one implementation.  The common ending, both sides ending their
streams, needs no transport: the relay passes each end on, and the session
closes the link (L{LeanLink.loseConnection}), which tells it the backend
connection is gone as a transport would.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import _parse
from twisted.internet.error import ConnectError, getConnectError
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection import OneShotFactory
from gateway.session.backendlink import BackendLink
from gateway.session.bareclient import Parkable

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.pool.backends import Backend
    from gateway.session.backendlink import LinkOwner

__all__ = ["BareAddress", "LeanLink", "bare_address"]

_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
"""C{SOCK_NONBLOCK} (Linux), or 0 where C{socket()} cannot take it."""

BareAddress = tuple[int, Any]
"""An address family and the address C{connect()} takes for it."""


def _ip_family(host: str) -> int | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def bare_address(description: str) -> BareAddress | None:
    """
    Where a backend's endpoint string connects, if a bare socket can do it
    exactly as the endpoint would: C{tcp:} to an IP address (v4 or v6) and a
    port, or C{unix:} to a path, with no other argument (C{timeout},
    C{bindAddress}, C{checkPID}: those take the endpoint).  L{None} for
    anything else (host names, C{tls:}, other endpoint types).
    """
    try:
        args, kwargs = _parse(description)
    except (ValueError, IndexError, TypeError, RuntimeError):  # a trailing "\\": RuntimeError
        return None
    if not args:
        return None
    kind, rest = args[0], args[1:]
    names = ("host", "port") if kind == "tcp" else ("path",) if kind == "unix" else ()
    if not names or len(rest) > len(names) or not set(kwargs) <= set(names[len(rest) :]):
        return None
    values = dict(zip(names, rest, strict=False)) | kwargs
    if set(values) != set(names):
        return None
    if kind == "unix":
        return (socket.AF_UNIX, values["path"]) if values["path"] else None
    family = _ip_family(values["host"])
    port = values["port"]
    if family is None or not port.isdecimal() or not 0 < int(port) < 65536:
        return None
    return family, (values["host"], int(port))


class _AdoptedLink(BackendLink):
    """
    The protocol of an adopted lean socket: its session took it already.
    """

    def transport_ready(self) -> None:
        """
        Nothing to tell: the session took the link when the socket connected.
        """


@implementer(IReadWriteDescriptor)
class LeanLink(Parkable):
    """
    One backend connection as a bare socket, until it is closed or adopted.

    It is its own transport (C{transport} is itself once connected) for what
    the dialer and the relay ask of one: C{fileno}, C{socket},
    C{stopReading}, C{stopWriting}, C{loseConnection}, C{abortConnection}.

    @ivar backend: the backend it connects to.
    @ivar ready: whether the session took it (connected).
    @ivar failure_reason: unused (a bare connect has no handshake); there
        for the dialer, which reads it of any link.
    @ivar transport: itself once connected, else L{None}.
    """

    # Slots: one per live session on the fast path.
    __slots__ = (
        "_on_failed",
        "_reactor",
        "_watched",
        "backend",
        "failure_reason",
        "ready",
        "session",
        "transport",
    )

    def __init__(
        self,
        session: LinkOwner,
        backend: Backend,
        reactor: Any,
        on_failed: Callable[[Failure, LeanLink], object],
    ) -> None:
        """
        @param session: told when the link is connected (C{link_ready}) and,
            once taken, when it is closed (C{link_lost}).
        @param reactor: watches the socket while it connects.
        @param on_failed: called with the failure when the connect fails or
            is cancelled (the dialer's errback).
        """
        self.session = session
        self.backend = backend
        self._reactor = reactor
        self._on_failed: Callable[[Failure, LeanLink], object] | None = on_failed
        self.ready = False
        self.failure_reason: str | None = None
        self.transport: LeanLink | None = None
        self._watched = False
        self._sock = None

    @property
    def socket(self) -> socket.socket | None:
        """
        The socket (rebuilt if it was parked), or L{None} before it is made
        and once closed.
        """
        return self._socket_object()

    def connect(self, address: BareAddress) -> None:
        """
        Start connecting to C{address} (from L{bare_address}).
        """
        family, target = address
        try:
            # Non-blocking from the start where the platform can say so (no
            # ioctl after: one system call less per session).
            sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
        except OSError as error:
            # As Twisted reports it: a shortage of descriptors is recognised
            # by gateway.session.backendlink.local_shortage.
            self._fail(getConnectError((error.errno, error.strerror)))
            return
        self._sock = sock
        if not _NONBLOCK:
            sock.setblocking(False)
        try:
            code = sock.connect_ex(target)
        except (OSError, ValueError) as error:
            # An address connect() does not take (a UNIX path too long for
            # it, which the configuration accepts): a failed attempt.
            self._fail(ConnectError(string=str(error)))
            return
        # EAGAIN is no connect under way: a UNIX listener's backlog is full
        # (Twisted's endpoint would call connect() again; this fails the
        # attempt, and the dialer tries the next backend).
        if code in (0, errno.EINPROGRESS):
            self._watched = True
            self._reactor.addWriter(self)
            return
        self._fail(getConnectError((code, os.strerror(code))))

    def _fail(self, error: Exception) -> None:
        self._close()
        on_failed, self._on_failed = self._on_failed, None
        if on_failed is not None:
            on_failed(Failure(error), self)

    def _close(self) -> None:
        if self._watched:
            self._watched = False
            self._reactor.removeWriter(self)
        self._close_socket()

    def cancel(self) -> None:
        """
        Give up connecting (the connect timed out, or the attempt was
        abandoned): the attempt fails with L{CancelledError}.
        """
        if self._sock is not None and self.transport is None:
            self._fail(CancelledError())

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        """
        The connect completed: connected, or failed (C{SO_ERROR}).
        """
        self._watched = False
        self._reactor.removeWriter(self)
        sock = self._sock
        assert isinstance(sock, socket.socket)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(getConnectError((code, os.strerror(code))))
            return
        self.transport = self
        # Only a connect can fail through the dialer: let it go (a live
        # session keeps no dialer; docs/performance.md).
        self._on_failed = None
        self.session.link_ready(self)

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        """
        Never watched for reading (the relay reads the socket).
        """

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        """
        The reactor saw an error or a hang-up while connecting (a refused
        connect comes here, not to L{doWrite}), or is shutting down.
        """
        self._watched = False  # the reactor no longer watches it
        sock = self._sock
        if not isinstance(sock, socket.socket) or self.transport is not None:
            return
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        error = (
            getConnectError((code, os.strerror(code)))
            if code
            else ConnectError(string=reason.getErrorMessage())
        )
        self._fail(error)

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "LeanLink"

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        """
        Nothing: never read but by the relay.
        """

    def stopWriting(self) -> None:  # noqa: N802 - Twisted's name
        """
        Nothing: never written but by the relay.
        """

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        """
        Close the socket; a taken link tells its session the connection is
        gone, as a transport's protocol would.
        """
        if self._sock is None:
            return
        self._close()
        if self.ready:
            self.session.link_lost(self, connectionDone)  # Twisted's one clean-close failure

    abortConnection = loseConnection

    def adopt(self) -> Any:
        """
        Hand the socket to an ordinary Twisted transport, whose protocol is a
        ready L{BackendLink} of the same session and backend; this link's
        own socket is closed (the transport has a duplicate).

        @return: the transport.
        @raise OSError: the socket cannot be adopted: its connection is gone
            (reset: it has no peer address any more), or no descriptor is
            left for the duplicate.  The link keeps its socket then.
        """
        sock = self.socket  # rebuilt if parked
        assert sock is not None
        link = _AdoptedLink(self.session, self.backend)
        link.ready = True
        transport = self._reactor.adoptStreamConnection(
            sock.fileno(), sock.family, OneShotFactory(link)
        )
        self._close_socket()
        return transport
