"""
What every protocol of the gateway shares: how a peer is named in logs, close
hooks (callables run once when a connection is lost), the one-shot factory
that hands a protocol built beforehand to an outgoing connection, and the
moment an outgoing connection becomes usable (made for a plain transport, its
TLS handshake done for a TLS one).

A module of its own, below the others, so that the front door, the relay,
the health checks, the admission layer and the PROXY reader can all use it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IAddress, INegotiated
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from typing_extensions import override

__all__ = ["CloseHooks", "OneShotFactory", "ReadinessMixin", "describe_peer"]

_P = TypeVar("_P", bound=Protocol)


def describe_peer(address: IAddress) -> str:
    """
    A short text for a peer address: C{host:port} for IP, the path for UNIX.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if hasattr(address, "name"):
        # A UNIX socket peer: usually unnamed (the client did not bind).
        name = address.name
        if name:
            return "unix:" + (name.decode(errors="replace") if isinstance(name, bytes) else name)
        return "unix"
    return str(address)


class CloseHooks:
    """
    Mixin for protocols: callables run once when the connection is lost (the
    admission layer releases a connection's slots this way, without wrapping
    the protocol, so nothing is added to the data path).
    """

    # A slot: a subclass with slots of its own (SessionEnd) has no dict.
    __slots__ = ("_close_hooks",)

    _hooks_log = Logger()

    def __init__(self) -> None:
        # None, one hook, or a list of them: most connections have one hook
        # (the cap's), and a list each would be 56 bytes more per idle
        # connection (docs/performance.md).
        self._close_hooks: Callable[[], None] | list[Callable[[], None]] | None = None

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """
        Run C{hook} when the connection is lost.
        """
        hooks = self._close_hooks
        if hooks is None:
            self._close_hooks = hook
        elif isinstance(hooks, list):
            hooks.append(hook)
        else:
            self._close_hooks = [hooks, hook]

    def run_close_hooks(self) -> None:
        """
        Run the hooks, once, in the order they were added; one that fails is
        logged and the others still run.
        """
        hooks, self._close_hooks = self._close_hooks, None
        if hooks is None:
            return
        for hook in hooks if isinstance(hooks, list) else (hooks,):
            try:
                hook()
            except Exception:
                self._hooks_log.failure("a close hook failed")


class OneShotFactory(Factory[_P], Generic[_P]):
    """
    A factory whose C{buildProtocol} returns the protocol it was given: hands
    one protocol, built beforehand, to one connection attempt (an endpoint's
    C{connect}), quietly (Twisted's own factories log two lines per attempt,
    too many for a session or a health probe each).
    """

    noisy = False

    def __init__(self, protocol: _P) -> None:
        """
        @param protocol: the protocol every C{buildProtocol} returns.
        """
        self._protocol = protocol

    @override
    def buildProtocol(self, addr: IAddress | None) -> _P:
        return self._protocol


class ReadinessMixin(Protocol):
    """
    Mixin for the protocol of an outgoing connection that may be TLS: calls
    L{transport_ready} once the transport is usable, that is at
    C{connectionMade} for a plain transport, and at C{handshakeCompleted} (the
    certificate and host name verified) for a TLS one.

    A subclass that wants the handshake's news declares L{IHandshakeListener}
    itself (Twisted's client endpoints copy only some of a protocol's
    interfaces onto their wrapper, so each class says which it needs).
    """

    @override
    def connectionMade(self) -> None:
        tls = INegotiated.providedBy(self.transport)
        self.transport_connected(tls)
        if not tls:
            self.transport_ready()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake succeeded (the certificate and host name verified).
        """
        if getattr(self.transport, "disconnecting", False):
            # Twisted before 25 reports the handshake done even when the host
            # name check failed and aborted the connection: connectionLost
            # follows with the reason, and that is a failed attempt.
            return
        self.transport_ready()

    def transport_connected(self, tls: bool) -> None:
        """
        The connection is made (for TLS, the handshake is still to come).
        Nothing by default.

        @param tls: whether the transport is TLS (then L{transport_ready}
            waits for the handshake).
        """

    def transport_ready(self) -> None:
        """
        The transport is usable.  Subclasses say what follows.
        """
        raise NotImplementedError
