"""
The new process's side of a hand-over (C{--handover PATH}), as it starts:
L{TakeOver} receives the listening sockets of the gateway running at PATH
(all or none; see L{gateway.process.handover}), has each front adopt its
socket or bind its own, and once everything else runs, tells the old
process it may stop accepting and takes PATH over for the next hand-over.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from gateway.process.errors import StartupError
from gateway.process.handover import (
    Handover,
    HandoverLostError,
    HandoverRefusedError,
    HandoverServer,
    take_over,
)
from gateway.process.listener import FrontListener

__all__ = ["RELEASE_WAIT", "TakeOver"]

RELEASE_WAIT = 2.0
"""Seconds a front binding fresh after a broken hand-over waits for the old
process, which may be dying, to release its address."""


class TakeOver:
    """
    Taking the listening sockets over from the gateway at C{path}, once.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        fronts: Sequence[FrontListener],
        server: HandoverServer | None,
        reactor: Any,
    ) -> None:
        """
        @param fronts: every listener of this process (public fronts and the
            admin endpoint), which adopt what is received.
        @param server: this process's own hand-over socket, which takes PATH
            once the old process has answered.
        @param reactor: adopts the received sockets.
        """
        self._path = path
        self._fronts = fronts
        self._server = server
        self._reactor = reactor
        self._handover: Handover | None = None
        self._took = False

    def take(self) -> None:
        """
        Receive the sockets and have the fronts adopt them; fronts that get
        none bind their own (once; twist never calls
        C{privilegedStartService}, so C{startService} calls this too).

        @raise StartupError: the old process refused (another process takes
            or took its sockets over), or a socket cannot be adopted.
        """
        if self._took:
            return
        self._took = True
        try:
            self._handover = take_over(self._path)
        except HandoverRefusedError as error:
            # Another process takes (or took) the sockets: bind nothing.
            raise StartupError(f"gateway: error: --handover: {error}") from None
        except HandoverLostError as error:
            # Nothing received: bind every front (if the old process still
            # holds a port, that bind fails with one line, status 2).
            self._log.warn(
                "hand-over from {path} failed ({reason}): took nothing over, binding every front",
                path=self._path,
                reason=str(error),
            )
        handover = self._handover
        for listener in self._fronts:
            taken = None if handover is None else handover.take(listener.description)
            if taken is None:
                # Bound here: a gateway that died may have left it behind,
                # or still be closing it.
                listener.clear_stale()
                if handover is None:
                    listener.wait_for_release(RELEASE_WAIT)
                continue
            try:
                listener.adopt(self._reactor, *taken)
            except ValueError as error:
                os.close(taken[0])
                raise StartupError(f"gateway: error: --handover: {error}") from None
        if handover is None:
            return
        self._log.info(
            "taking over from process {pid}: {count} listening sockets",
            pid=handover.peer_pid,
            count=sum(listener.adopted for listener in self._fronts),
        )
        for description in handover.close_unused():
            self._log.info(
                "the old process listens on {front}, which this one does not: it keeps it",
                front=description,
            )

    def hold_path(self) -> None:
        """
        Before the other services start: PATH stays the old process's until
        it has answered.
        """
        if self._handover is not None and self._server is not None:
            self._server.hold_path()

    def finish(self) -> None:
        """
        Everything else runs now: only then does the old process stop
        accepting, and this process listen at PATH.
        """
        handover, self._handover = self._handover, None
        server = self._server
        if handover is not None:
            try:
                handover.ready([f.description for f in self._fronts if f.adopted])
            except HandoverLostError as error:
                # It died or hangs: this process accepts on every front anyway.
                self._log.warn(
                    "process {pid} did not confirm the hand-over ({reason}): "
                    "accepting on every front anyway",
                    pid=handover.peer_pid,
                    reason=str(error),
                )
            else:
                self._log.info("process {pid} no longer accepts", pid=handover.peer_pid)
        try:
            if server is not None:
                server.release_path()
        finally:
            if handover is not None:
                # Only now: the old process answers other takers until PATH is ours.
                handover.close()
