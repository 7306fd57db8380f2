"""
The backend side of a game session: its connection, and why an attempt failed.

A L{BackendLink} is the protocol of one connection attempt to a backend, and,
once that succeeds, of the session's backend connection: it passes every event
to its session (L{LinkOwner}).  It is ready when its transport is usable (for a
C{tls:} backend, once the handshake verified the certificate and host name).

A failed attempt is described for the log by L{describe_failure} (readable for
TLS errors too), and L{local_shortage} tells an attempt that failed for want
of the gateway's own resources (L{LOCAL_ERRNOS}) from one the backend is to
blame for.  The health checks (L{gateway.pool.probe}) use both as well.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any
from typing import Protocol as Structural

from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import alsoProvides, implementer

from gateway.connection import ReadinessMixin

if TYPE_CHECKING:
    from gateway.pool.backends import Backend

__all__ = [
    "LOCAL_ERRNOS",
    "BackendLink",
    "Link",
    "LinkOwner",
    "describe_failure",
    "local_shortage",
]


class Link(Structural):
    """
    One backend connection of a session, as the session and the dialer see
    it: a L{BackendLink} (through a Twisted transport) or a
    L{gateway.session.leanlink.LeanLink} (a bare socket).
    """

    backend: Backend
    ready: bool
    failure_reason: str | None

    @property
    def transport(self) -> Any:
        """
        Its transport once connected (a lean link is its own), else L{None}.
        """


class LinkOwner(Structural):
    """
    What a L{BackendLink} tells its session (L{gateway.session.relay.GameSession}).
    """

    def link_ready(self, link: Link) -> None:
        """
        The link's connection is usable.
        """

    def link_lost(self, link: Link, reason: Failure) -> None:
        """
        The link's connection is gone, before it was ready or after.
        """

    def backend_data(self, data: bytes) -> None:
        """
        Bytes from the backend.
        """

    def backend_eof(self) -> None:
        """
        The backend ended its sending side.
        """


def _restore_half_close(transport: object) -> None:
    """
    Make sure the protocol that C{transport} calls hears of half-closes.

    Twisted's client endpoints put our protocol inside their own wrapper
    (C{endpoints._WrappingProtocol}), which copies our interfaces with
    C{directlyProvides} in a loop, so only the last one survives: a protocol
    that is both an L{IHalfCloseableProtocol} and an L{IHandshakeListener}
    loses its half-close notifications, and an end of stream from the backend
    becomes a full close.  The wrapper does forward C{readConnectionLost} and
    C{writeConnectionLost}, so declaring the interface on it again is enough.
    """
    outer = getattr(transport, "protocol", None)
    if (
        outer is not None
        and not IHalfCloseableProtocol.providedBy(outer)
        and hasattr(outer, "readConnectionLost")
        and hasattr(outer, "writeConnectionLost")
    ):
        alsoProvides(outer, IHalfCloseableProtocol)


def describe_failure(failure: Failure) -> str:
    """
    A one-line reason for a failed backend connection, readable for TLS errors
    too (OpenSSL reports a list of (library, function, reason) tuples).
    """
    value = failure.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][0], tuple):
        reasons = [str(item[-1]) for item in args[0] if item and item[-1]]
        return "TLS error: " + ", ".join(reasons or [repr(args[0])])
    if type(value).__name__ == "VerificationError":
        wanted = []
        for error in getattr(value, "errors", None) or []:
            ident = getattr(error, "mismatched_id", None)
            name = getattr(ident, "hostname", None) or getattr(ident, "ip", None) or ident
            wanted.append(name.decode() if isinstance(name, bytes) else str(name))
        if wanted:
            return "TLS certificate does not match the host name " + ", ".join(wanted)
        return f"TLS certificate does not match the host name: {value}"
    return failure.getErrorMessage()


LOCAL_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EADDRNOTAVAIL,
        errno.EADDRINUSE,
    }
)
"""Errors of a connection attempt that are the gateway's own shortage (file
descriptors of the process or the system, socket buffers, memory, local
ports), whatever the backend's health."""


def _local_errno(error: object, depth: int = 0) -> bool:
    """
    Whether C{error} (an exception, or a failure or text inside one) carries
    an errno of L{LOCAL_ERRNOS}.
    """
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, OSError):
        return error.errno in LOCAL_ERRNOS
    if not isinstance(error, ConnectError) or depth > 3:
        return False
    # Twisted puts the errno in osError (ConnectBindError(24, "Too many open
    # files") when socket() fails; getConnectError(...) when connect() does),
    # or wraps what it got (a Failure, an exception, or only its text).
    code = error.osError
    if isinstance(code, int) and not isinstance(code, bool):
        return code in LOCAL_ERRNOS
    for nested in (code, *error.args):
        if isinstance(nested, (Failure, BaseException)) and _local_errno(nested, depth + 1):
            return True
    text = str(error)
    return any(os.strerror(number) in text for number in LOCAL_ERRNOS)


def local_shortage(failure: Failure) -> bool:
    """
    Whether a failed connection attempt failed for the gateway's own want of
    resources (L{LOCAL_ERRNOS}) rather than because of the backend.

    Twisted reports a C{socket()} that fails for want of descriptors as
    C{ConnectBindError} ("Couldn't bind: 24: Too many open files."), and a
    C{connect()} that finds no free local port as a C{ConnectError} with
    C{EADDRNOTAVAIL}.
    """
    return _local_errno(failure)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class BackendLink(ReadinessMixin):
    """
    The backend side of one game session: passes every event to the session.

    @ivar session: the session it belongs to.
    @ivar backend: the backend this connection goes to.
    @ivar ready: whether the session took the connection as usable
        (connected, and for TLS, the handshake done).
    @ivar failure_reason: set when the session gives up on this connection
        before it was ready (a handshake timeout), for the log.
    """

    def __init__(self, session: LinkOwner, backend: Backend) -> None:
        self.session = session
        self.backend = backend
        self.ready = False
        self.failure_reason: str | None = None

    @override
    def transport_connected(self, tls: bool) -> None:
        if not tls:
            # TLS transports cannot half-close, so the workaround is for
            # plain ones only.
            _restore_half_close(self.transport)

    @override
    def transport_ready(self) -> None:
        self.session.link_ready(self)

    @override
    def dataReceived(self, data: bytes) -> None:
        self.session.backend_data(data)

    def readConnectionLost(self) -> None:
        """
        The backend ended its sending side.
        """
        self.session.backend_eof()

    def writeConnectionLost(self) -> None:
        """
        Our half-close towards the backend completed; nothing to do.
        """

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.session.link_lost(self, reason)
