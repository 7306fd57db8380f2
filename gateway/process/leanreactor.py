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

Its maps of what it watches are arrays indexed by descriptor, not Twisted's
dictionary of descriptors and sets of readers and writers: a list slot (8
bytes) and a byte of flags per descriptor, where the dictionary and the sets
cost about 150 bytes for each of an idle spliced session's two sockets (the
sets are kept a quarter full; docs/performance.md).  Descriptors are small
integers that the kernel reuses from the lowest, so the arrays are as long as
the highest descriptor watched.

Everything else is Twisted's epoll reactor, unchanged (and run through
Twisted's own reactor tests in C{tests/test_leanreactor.py}).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from twisted.internet.epollreactor import EPOLLIN, EPOLLOUT, EPollReactor
from twisted.python import log

__all__ = ["NAME", "LeanEPollReactor", "install", "install_default"]

NAME = "lean-epoll"
"""Its C{twistd -r} name (the plugin in C{twisted/plugins/gateway_plugin.py})."""


_READ = EPOLLIN
_WRITE = EPOLLOUT
"""A descriptor's flags: watched for reading, for writing (the events the
kernel is asked for, so a descriptor's flags are its registration)."""


class _Watched:
    """
    The descriptors watched for reading (or writing), as Twisted's epoll
    reactor keeps them in a set (C{_reads}, C{_writes}): its C{fd in} and
    iteration, over the reactor's flags.
    """

    __slots__ = ("_flags", "bit")

    def __init__(self, flags: bytearray, bit: int) -> None:
        self._flags = flags
        self.bit = bit

    def __contains__(self, fd: object) -> bool:
        flags = self._flags
        return isinstance(fd, int) and 0 <= fd < len(flags) and bool(flags[fd] & self.bit)

    def __iter__(self) -> Iterator[int]:
        bit = self.bit
        return iter([fd for fd, each in enumerate(self._flags) if each & bit])

    def __len__(self) -> int:
        bit = self.bit
        return sum(1 for each in self._flags if each & bit)


class _Selectables(Mapping[int, Any]):
    """
    The watched descriptors by number, as Twisted's epoll reactor keeps them
    in a dictionary (C{_selectables}): a read-only view of the reactor's
    table.
    """

    __slots__ = ("_reactor",)

    def __init__(self, reactor: LeanEPollReactor) -> None:
        self._reactor = reactor

    def __getitem__(self, fd: int) -> Any:
        table = self._reactor._table
        selectable = table[fd] if 0 <= fd < len(table) else None
        if selectable is None:
            raise KeyError(fd)
        return selectable

    def __iter__(self) -> Iterator[int]:
        return iter([fd for fd, each in enumerate(self._reactor._table) if each is not None])

    def __len__(self) -> int:
        return self._reactor._count


class LeanEPollReactor(EPollReactor):
    """
    Twisted's epoll reactor, without the per-event log context, and with its
    maps as arrays indexed by descriptor.

    @ivar _table: what is watched, by descriptor (L{None} where nothing).
    @ivar _flags: how each descriptor is watched (C{_READ}, C{_WRITE}).
    @ivar _count: how many descriptors are watched.
    """

    def __init__(self) -> None:
        self._table: list[Any] = []
        self._flags = bytearray()
        self._count = 0
        super().__init__()
        # Twisted's names, over the arrays (for Twisted's own code that
        # reads them: the dispatch's "was it reading" on a hang-up).
        self._reads = _Watched(self._flags, _READ)  # type: ignore[assignment]
        self._writes = _Watched(self._flags, _WRITE)  # type: ignore[assignment]
        self._selectables = _Selectables(self)  # type: ignore[assignment]

    def _add(
        self,
        xer: Any,
        primary: object,
        other: object,
        selectables: object,
        event: int,
        antievent: int,
    ) -> None:
        """
        Watch C{xer} for C{event} too (Twisted's C{_add}, on the arrays):
        the kernel is told first, the maps follow only if it agreed.  (The
        flags are the events: C{EPOLLIN} for reading, C{EPOLLOUT}.)
        """
        fd = xer.fileno()
        flags = self._flags
        if fd < 0:
            self._poller.register(fd, event)  # raises, as Twisted's would
        try:
            have = flags[fd]
        except IndexError:
            self._make_room(fd)
            have = 0
        if have & event:
            return
        if have:
            self._poller.modify(fd, have | event)
        else:
            self._poller.register(fd, event)
            self._count += 1
        flags[fd] = have | event
        self._table[fd] = xer

    def _make_room(self, fd: int) -> None:
        grow = max(fd + 1, 2 * len(self._flags)) - len(self._flags)
        self._flags.extend(bytes(grow))
        self._table.extend([None] * grow)

    def _remove(
        self,
        xer: Any,
        primary: object,
        other: object,
        selectables: object,
        event: int,
        antievent: int,
    ) -> None:
        """
        Stop watching C{xer} for C{event} (Twisted's C{_remove}, on the
        arrays); one whose descriptor is closed already (C{-1}) is found by
        identity.  The maps forget it before the kernel is told, so a
        descriptor closed meanwhile (the kernel forgot it: C{EBADF}) is not
        left in them.
        """
        fd = xer.fileno()
        table = self._table
        if fd < 0:  # closed (-1): found by identity, never by a negative index
            for fd, each in enumerate(table):  # noqa: B007 - the loop finds fd
                if each is xer:
                    break
            else:
                return
        flags = self._flags
        try:
            have = flags[fd]
        except IndexError:
            return
        if not have & event:
            return
        rest = have ^ event
        flags[fd] = rest
        if rest:
            try:
                self._poller.modify(fd, rest)
            except OSError as error:
                if error.errno in (errno.EBADF, errno.ENOENT):
                    # Closed: the kernel forgot it for both directions.
                    flags[fd] = 0
                    table[fd] = None
                    self._count -= 1
                raise
        else:
            table[fd] = None
            self._count -= 1
            self._poller.unregister(fd)

    def removeAll(self) -> list[Any]:  # noqa: N802 - Twisted's name
        table, flags = self._table, self._flags
        readers = [table[fd] for fd, each in enumerate(flags) if each & _READ]
        writers = [table[fd] for fd, each in enumerate(flags) if each & _WRITE]
        removed: list[Any] = list(self._removeAll(readers, writers))
        return removed + list(self._continuousPolling.removeAll())

    def getReaders(self) -> list[Any]:  # noqa: N802 - Twisted's name
        table = self._table
        readers = [table[fd] for fd, each in enumerate(self._flags) if each & _READ]
        return readers + list(self._continuousPolling.getReaders())

    def getWriters(self) -> list[Any]:  # noqa: N802 - Twisted's name
        table = self._table
        writers = [table[fd] for fd, each in enumerate(self._flags) if each & _WRITE]
        return writers + list(self._continuousPolling.getWriters())

    def doPoll(self, timeout: float | None) -> None:  # noqa: N802 - Twisted's name
        """
        Poll for events and dispatch each (Twisted's C{doPoll}, but for the
        log context).
        """
        if timeout is None:
            timeout = -1  # wait until an event
        try:
            events = self._poller.poll(timeout, self._count or 1)
        except OSError as error:
            if error.errno == errno.EINTR:
                return
            raise
        table = self._table  # every polled descriptor is in it (it never shrinks)
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = table[fd]
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
            not 0 <= fd < len(self._flags)
            or fd != new.fileno()  # type: ignore[attr-defined]
            or self._flags[fd] != _READ
            or self._table[fd] is not old
        ):
            return False
        self._table[fd] = new
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
