"""
Large static file bodies by C{sendfile(2)}: L{FileSender}.

Copying a file through Python costs a read into a buffer, a bytes object, a
write into the transport's buffer and a C{send} from it, every 64 KiB: about
1.5 ms of CPU per MiB here, where nginx spends 0.3 ms with C{sendfile(2)},
which moves the page cache's bytes to the socket inside the kernel.  So a
body of at least L{SENDFILE_FROM} bytes (a whole file or one range of it),
sent on a plain TCP or UNIX connection (not TLS, not a C{haproxy:} front's
wrapped one) with the lean path on (C{--no-http-fast-path} turns both off),
goes by C{sendfile(2)}; everything else (smaller bodies, several ranges,
TLS) is copied by L{gateway.http.ranges.FileParts} as before.

The response's head is written by the request as always (its status,
headers, access-log fields); then the L{FileSender} borrows the connection's
transport from its HTTP channel (L{GatewayHTTPChannel.lend_transport}) as
the transport's pull producer: Twisted asks it for more each time the
transport's buffer has been sent, which is exactly when bytes written to the
socket directly come after everything written before.  Each time, it sends
up to L{TURN_BYTES} and, if more remains, asks the transport to tell it when
the socket takes more (C{startWriting}: the transport's next write of its
empty buffer asks the producer again).  At the end it gives the transport
back and finishes the request; the channel then reads the next request.

A file cut while it is sent (C{sendfile} returns 0 before the end) or an
error reading it fails the response: the channel logs it and aborts the
connection, as for a copied file.  A client that left ends the connection
quietly (its request is logged as the client having left).  A file system
whose files cannot be sent this way (C{EINVAL}, C{ENOSYS}: some FUSE and
network file systems) gets the copy instead, from the same offset, if
nothing was sent yet.
"""

from __future__ import annotations

import errno
import os
from typing import IO, Any, cast

from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.http.ranges import FileChangedError, FileParts, ResponseConsumer
from gateway.session.stream import nothing_queued, plain_socket

__all__ = ["SENDFILE_FROM", "STEP", "TURN_BYTES", "FileSender", "file_sender"]

SENDFILE_FROM = 64 * 1024
"""The smallest body sent by C{sendfile(2)} (a smaller one is one copy)."""

STEP = 1024 * 1024
"""The most bytes asked of one C{sendfile(2)} call."""

TURN_BYTES = 4 * 1024 * 1024
"""The most bytes one connection sends per reactor turn (then it waits for
the socket to be writable again, so other connections get their turns)."""

_CLIENT_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
"""Errors that mean the client went away."""

_NOT_SENDABLE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
"""Errors that mean this file (system) cannot be sent by C{sendfile(2)}."""


def file_sender(request: Any, file: IO[bytes], start: int, stop: int) -> FileSender | None:
    """
    A L{FileSender} for bytes C{start} to C{stop} of C{file} as the body of
    C{request}, if it should go by C{sendfile(2)}: at least
    L{SENDFILE_FROM} bytes, the site's fast path on, and a plain connection
    whose channel can lend its transport; else L{None} (copy it).
    """
    if stop - start < SENDFILE_FROM:
        return None
    if not getattr(getattr(request, "site", None), "fast_path", False):
        return None
    channel: Any = getattr(request, "channel", None)
    if not hasattr(channel, "lend_transport") or not plain_socket(channel.transport):
        return None
    return FileSender(request, channel, file, start, stop)


@implementer(IPullProducer)
class FileSender:
    """
    Sends bytes C{start} to C{stop} of an open file as a response's body by
    C{sendfile(2)}, as its connection's transport's pull producer, then
    finishes the response.  See the module's text.
    """

    __slots__ = ("_request", "_channel", "_file", "_position", "_stop", "_socket")

    def __init__(self, request: Any, channel: Any, file: IO[bytes], start: int, stop: int) -> None:
        """
        @param request: the request (a twisted.web C{Request}) whose body this is.
        @param channel: its L{GatewayHTTPChannel}.
        @param file: the file, open for reading; closed when done.
        """
        self._request: Any = request
        self._channel = channel
        self._file: IO[bytes] | None = file
        self._position = start
        self._stop = stop
        self._socket = channel.transport.socket.fileno()

    def start(self) -> None:
        """
        Write the response's head, and borrow the transport for the body.
        """
        request = self._request
        request.write(b"")  # the head
        request.notifyFinish().addErrback(self._gone)
        self._channel.lend_transport(self)

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        """
        The transport's buffer has been sent (or it was just lent): send more
        of the file while the socket takes it.
        """
        file = self._file
        if self._request is None or file is None:
            return
        transport = self._channel.transport
        if not nothing_queued(transport):
            if transport is None or not transport.connected:
                return  # lost: the transport stops its producer
            if (
                transport.disconnecting
                or transport._writeDisconnecting
                or transport._writeDisconnected
            ):
                # Closed (loseConnection) while the body was being sent: as
                # for a copied body, the connection closes once its buffer
                # is sent, the rest unsent; the transport closes only once
                # its producer is the channel again.
                self._channel.take_back_transport()
                self.stopProducing()
            # The head (or an earlier response's tail) is still queued:
            # wait for the transport's next turn.
            transport.startWriting()
            return
        budget = TURN_BYTES
        while True:
            asked = min(self._stop - self._position, STEP)
            try:
                sent = os.sendfile(self._socket, file.fileno(), self._position, asked)
            except BlockingIOError:
                break
            except OSError as error:
                self._failed(error)
                return
            if sent == 0:
                self._failed(
                    FileChangedError(f"file ended at byte {self._position} of {self._stop}")
                )
                return
            self._position += sent
            self._request.sentLength += sent
            self._channel.response_progress()
            if self._position == self._stop:
                self._done()
                return
            budget -= sent
            if sent < asked or budget <= 0:
                break
        transport.startWriting()

    def _done(self) -> None:
        request = self._request
        self._channel.take_back_transport()
        self.stopProducing()
        request.finish()

    def _failed(self, error: Exception) -> None:
        request = self._request
        channel = self._channel
        started = request.sentLength > 0
        if isinstance(error, OSError) and error.errno in _NOT_SENDABLE and not started:
            # This file system's files cannot be sent so: copy it.
            file, self._file = self._file, None
            self._request = None
            channel.take_back_transport()
            assert file is not None
            spans = [(self._position, self._stop)]
            FileParts(cast(ResponseConsumer, request), file, spans).start()
            return
        self.stopProducing()
        if isinstance(error, OSError) and error.errno in _CLIENT_GONE:
            channel.transport.abortConnection()
            return
        channel.response_failed(Failure(error))

    def _gone(self, reason: Failure) -> None:
        # The connection was lost before the body was sent.
        self.stopProducing()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        """
        Stop: close the file and forget the request.
        """
        self._request = None
        if self._file is not None:
            self._file.close()
            self._file = None
