"""
What every protocol of the gateway shares: how a peer is named in logs, and
close hooks (callables run once when a connection is lost).

A module of its own, below the others, so that the front door, the relay,
the admission layer and the PROXY reader can all use it without importing
each other.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

__all__ = ["CloseHooks", "describe_peer"]


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

    _hooks_log = Logger()

    def __init__(self) -> None:
        self._close_hooks: list[Callable[[], None]] = []

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """
        Run C{hook} when the connection is lost.
        """
        self._close_hooks.append(hook)

    def run_close_hooks(self) -> None:
        """
        Run the hooks, once; one that fails is logged and the others still run.
        """
        hooks, self._close_hooks = self._close_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                self._hooks_log.failure("a close hook failed")
