"""
The gateway's default reactor on Linux: Twisted's epoll reactor, dispatching
each event without Twisted's per-event log context (C{twistd -r lean-epoll};
C{twistd -r epoll} for Twisted's own).

Twisted's epoll reactor calls every event's C{doRead} or C{doWrite} through
C{log.callWithLogger}: it asks the descriptor for its log prefix and pushes a
copy of the legacy log context with it as C{system}, for whatever the call
logs through C{twisted.python.log}.  A game session's bytes are one event per
message each way, and a short session is half a dozen events: on this
machine that context was about a tenth of the gateway's samples per session
(docs/performance.md, "the lean dispatch": churn 1.12×, the latency a
session adds 0.72×).  The gateway logs through
C{twisted.logger}, whose events do not read that context; what changes is
the C{system} of a legacy log line written during an event (Twisted's own
"Unhandled Error" when a protocol raises): C{-} instead of the connection's
prefix.  An exception that escapes the dispatch itself is still logged, with
the descriptor's prefix, and the loop goes on, as Twisted's does.

Everything else is Twisted's epoll reactor, unchanged (and run through
Twisted's own reactor tests in C{tests/test_leanreactor.py}).
"""

from __future__ import annotations

import errno
import sys

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

__all__ = ["NAME", "LeanEPollReactor", "install", "install_default"]

NAME = "lean-epoll"
"""Its C{twistd -r} name (the plugin in C{twisted/plugins/gateway_plugin.py})."""


class LeanEPollReactor(EPollReactor):
    """
    Twisted's epoll reactor, without the per-event log context.
    """

    def doPoll(self, timeout: float | None) -> None:  # noqa: N802 - Twisted's name
        """
        Poll for events and dispatch each (Twisted's C{doPoll}, but for the
        log context).
        """
        if timeout is None:
            timeout = -1  # wait until an event
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue  # removed by an earlier event of this poll
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                # What callWithLogger does: log it, with the descriptor's
                # prefix, and go on with the other events.
                log.err(system=_prefix(selectable))

    doIteration = doPoll  # noqa: N815 - Twisted's name

    def replace_reader(self, old: object, new: object) -> bool:
        """
        Watch C{new} for reading instead of C{old}, on the same socket,
        without telling the kernel: C{epoll} watches the descriptor, not the
        object, so only the reactor's own map changes.  Removing C{old} and
        adding C{new} would be two C{epoll_ctl} calls for nothing, once per
        session when the splice relay takes a client's socket
        (L{gateway.session.bareclient.pass_reader}).

        @return: whether C{new} replaced C{old}; L{False} (nothing done) if
            C{old} is not this descriptor's reader alone (not watched, also
            watched for writing, or another descriptor).
        """
        fd = old.fileno()  # type: ignore[attr-defined]
        if (
            fd < 0
            or fd != new.fileno()  # type: ignore[attr-defined]
            or fd not in self._reads
            or fd in self._writes
            or self._selectables.get(fd) is not old
        ):
            return False
        self._selectables[fd] = new
        return True


def _prefix(selectable: object) -> str:
    try:
        return str(selectable.logPrefix())  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        raise
    except BaseException:  # as callWithLogger
        return "(buggy logPrefix method)"


def install() -> None:
    """
    Install L{LeanEPollReactor} (C{twistd -r lean-epoll}).
    """
    from twisted.internet.main import installReactor

    installReactor(LeanEPollReactor())


def install_default() -> bool:
    """
    Install L{LeanEPollReactor} unless a reactor is installed already
    (twistd's C{-r}, a test runner's) or the platform has no epoll.

    @return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules or not sys.platform.startswith("linux"):
        return False
    install()
    return True
