"""
Telling systemd how the gateway is doing (C{Type=notify}): L{ServiceNotifier}
sends the C{sd_notify} messages to the datagram socket named by
C{$NOTIFY_SOCKET}.

The protocol (systemd's C{sd_notify(3)}) is one datagram per message, made
of C{NAME=value} lines: C{READY=1} once every front listens (systemd then
counts the service as started, and starts what waits for it),
C{RELOADING=1} with C{MONOTONIC_USEC=} as a reload begins and C{READY=1}
again once it is done, C{STOPPING=1} as a drain begins, and C{STATUS=} a
line C{systemctl status} shows.  C{$NOTIFY_SOCKET} is a path, or an abstract
socket name when it starts with C{@}.  A few lines of our own instead of a
dependency (C{sdnotify}, C{systemd-python}): sending a datagram is all
there is to it.

Only the process that owns the fronts notifies (a single process, or the
acceptor of C{--workers}); without C{$NOTIFY_SOCKET} (not run by systemd, or
not C{Type=notify}) nothing is sent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from twisted.logger import Logger

__all__ = ["ServiceNotifier"]


class ServiceNotifier:
    """
    The sending end of C{$NOTIFY_SOCKET}.

    The socket is connected when the notifier is made, before twistd drops
    privileges (C{-u}/C{-g}): a datagram socket connected once can go on
    sending whoever the process runs as later.  A message that cannot be
    sent is logged, once; the gateway runs on (systemd then gives up on it
    after C{TimeoutStartSec}, which is the failure systemd should see).
    """

    _log = Logger()

    def __init__(self, address: str) -> None:
        """
        @param address: C{$NOTIFY_SOCKET}: a path, or C{@name} for an
            abstract socket.
        """
        self.address = address
        self._socket: socket.socket | None = None
        self._failed = False
        target = "\0" + address[1:] if address.startswith("@") else address
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as error:
            self._fail(error)
            return
        try:
            sock.connect(target)
        except OSError as error:
            sock.close()
            self._fail(error)
            return
        self._socket = sock

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ServiceNotifier | None:
        """
        The notifier C{$NOTIFY_SOCKET} asks for, if any.

        @param environ: the environment (L{os.environ} if L{None}).
        """
        address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        if not address or not (address.startswith("/") or address.startswith("@")):
            return None
        return cls(address)

    def ready(self, status: str) -> None:
        """
        Every front listens (at start, or again after a reload).
        """
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        """
        A reload begins (systemd 253 and later want the monotonic time with it).
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> None:
        """
        A drain begins.
        """
        self.send(f"STOPPING=1\nSTATUS={status}")

    def send(self, message: str) -> None:
        """
        Send one message (C{NAME=value} lines).
        """
        if self._socket is None:
            return
        try:
            self._socket.send(message.encode("utf-8"))
        except OSError as error:
            self._fail(error)

    def close(self) -> None:
        """
        Close the socket (nothing is sent after).
        """
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()

    def _fail(self, error: OSError) -> None:
        if not self._failed:
            self._failed = True
            self._log.error(
                "cannot notify systemd at NOTIFY_SOCKET={address}: {error}",
                address=self.address,
                error=error.strerror or str(error),
            )
