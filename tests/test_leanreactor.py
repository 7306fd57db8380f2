"""
The gateway's default reactor (L{gateway.process.leanreactor}): Twisted's
own reactor tests (descriptors, system events, time, TCP and UNIX sockets)
run against it, and what it changes (the per-event log context) and how it
is chosen are checked here.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from unittest import SkipTest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.abstract import FileDescriptor
from twisted.internet.test.test_core import SystemEventTestsBuilder
from twisted.internet.test.test_fdset import ReactorFDSetTestsBuilder
from twisted.internet.test.test_tcp import (
    AbortConnectionTests,
    AdoptStreamConnectionTestsBuilder,
    TCP4ClientTestsBuilder,
    TCP6ClientTestsBuilder,
    TCPConnectionTestsBuilder,
    TCPPortTestsBuilder,
    TCPTransportTestsBuilder,
)
from twisted.internet.test.test_time import TimeTestsBuilder
from twisted.internet.test.test_unix import UNIXTestsBuilder
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python import context, log

from gateway.process.leanreactor import LeanEPollReactor
from tests.support import GatewayProcess, wait_for

LEAN = "gateway.process.leanreactor.LeanEPollReactor"


def _skip(reason: str) -> Callable[[Any], None]:
    def skipped(self: Any) -> None:
        raise SkipTest(reason)

    return skipped


_NO_CONTEXT = _skip(
    "by design: no per-event log context (test_events_run_without_the_log_context below)"
)
_DIFFERENCES: dict[str, Callable[[Any], None]] = {
    # Twisted skips it for its own EPollReactor by class name.
    "test_lostFileDescriptor": _skip("epoll cannot detect lost file descriptors"),
    "test_logPrefix": _NO_CONTEXT,
}

for _builder in (
    ReactorFDSetTestsBuilder,
    SystemEventTestsBuilder,
    TimeTestsBuilder,
    TCP4ClientTestsBuilder,
    TCP6ClientTestsBuilder,
    TCPConnectionTestsBuilder,
    TCPPortTestsBuilder,
    TCPTransportTestsBuilder,
    AdoptStreamConnectionTestsBuilder,
    AbortConnectionTests,
    UNIXTestsBuilder,
):
    _overrides = {name: test for name, test in _DIFFERENCES.items() if hasattr(_builder, name)}
    _lean: Any = type(_builder.__name__, (_builder,), {"_reactors": [LEAN], **_overrides})
    globals().update(_lean.makeTestCaseClasses())


class _Reader(FileDescriptor):
    """
    A descriptor for one end of a socket pair that runs C{on_read} on each
    read event.
    """

    def __init__(self, reactor: Any, sock: socket.socket, on_read: Callable[[], None]) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.on_read = on_read

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self.on_read()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "the reader"


def _pair() -> tuple[socket.socket, socket.socket]:
    one, two = socket.socketpair()
    one.setblocking(False)
    two.setblocking(False)
    return one, two


def test_events_run_without_the_log_context() -> None:
    """
    A read event runs with the log context it was polled in (Twisted's epoll
    reactor pushes one naming the descriptor's prefix as C{system}).
    """
    reactor = LeanEPollReactor()
    one, two = _pair()
    seen: list[str] = []

    def on_read() -> None:
        seen.append(context.get(log.ILogContext)["system"])
        one.recv(10)
        reactor.stop()

    reader = _Reader(reactor, one, on_read)
    reactor.addReader(reader)
    two.send(b"x")
    reactor.callLater(10, reactor.stop)
    reactor.run()
    one.close()
    two.close()
    assert seen == ["-"]


def test_an_error_out_of_the_dispatch_is_logged_and_the_poll_goes_on() -> None:
    """
    An exception that escapes the dispatch itself (a C{connectionLost} that
    raises, after a C{doRead} that said the connection is lost) is logged
    with the descriptor's prefix, and the other events of the same poll are
    still dispatched.
    """
    reactor = LeanEPollReactor()
    (one, two), (three, four) = _pair(), _pair()
    read: list[str] = []

    class Broken(_Reader):
        def doRead(self) -> Any:  # noqa: N802 - Twisted's name
            read.append("broken")
            return ConnectionError("gone")

        def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
            raise RuntimeError("connectionLost failed")

    def other() -> None:
        read.append("other")
        three.recv(10)

    reactor.addReader(Broken(reactor, one, lambda: None))
    reactor.addReader(_Reader(reactor, three, other))
    two.send(b"x")
    four.send(b"y")
    errors: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    try:
        reactor.callLater(0.2, reactor.stop)
        reactor.run()
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, observe))
        for sock in (one, two, three, four):
            sock.close()
    assert sorted(read) == ["broken", "other"]
    [error] = errors
    assert error["system"] == "the reader"
    assert error["failure"].check(RuntimeError)


def test_install_default_in_a_fresh_process() -> None:
    """
    In a process with no reactor yet, L{install_default} installs the lean
    reactor; with one installed already, it leaves it.
    """
    code = (
        "from gateway.process.leanreactor import install_default as i\n"
        "first = i()\n"
        "from twisted.internet import reactor\n"
        "print(first, i(), type(reactor).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["True", "False", "LeanEPollReactor"]


def _reactor_line(log: str) -> str:
    return next(line for line in log.splitlines() if "reactor class:" in line)


@pytest.mark.parametrize(
    ("twistd_args", "expected"),
    [
        ((), "gateway.process.leanreactor.LeanEPollReactor"),
        (("-r", "epoll"), "twisted.internet.epollreactor.EPollReactor"),
        (("-r", "lean-epoll"), "gateway.process.leanreactor.LeanEPollReactor"),
    ],
)
def test_twistd_runs_the_gateway_on_it_unless_told(
    tmp_path: Path, twistd_args: tuple[str, ...], expected: str
) -> None:
    """
    C{twistd gateway} runs on the lean reactor; C{-r epoll} still gives
    Twisted's own.
    """
    reactor = twistd_args[1] if twistd_args else None
    with GatewayProcess(["--backend", "tcp:127.0.0.1:9"], tmp_path, reactor=reactor) as gateway:
        wait_for(lambda: "reactor class:" in gateway.log(), "twistd's reactor line")
        assert _reactor_line(gateway.log()).endswith(f"reactor class: {expected}.")


class _End:
    """
    One end of a socket pair as a descriptor that notes its events.
    """

    def __init__(self, sock: socket.socket, seen: list[tuple[str, int]]) -> None:
        self.sock = sock
        self.seen = seen

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self.sock.recv(10)
        self.seen.append(("read", self.fileno()))

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        self.seen.append(("write", self.fileno()))

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self.seen.append(("lost", self.fileno()))

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "end"


def _kernel_watches(reactor: LeanEPollReactor) -> dict[int, int]:
    """
    What the kernel's epoll set holds: descriptor to events (from
    C{/proc/self/fdinfo}).
    """
    watched = {}
    with open(f"/proc/self/fdinfo/{reactor._poller.fileno()}") as info:
        for line in info:
            if line.startswith("tfd:"):
                words = line.split()
                watched[int(words[1])] = int(words[3], 16) & (select.EPOLLIN | select.EPOLLOUT)
    return watched


_OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["addReader", "addWriter", "removeReader", "removeWriter"]),
        st.integers(0, 4),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations=_OPERATIONS)
def test_the_maps_follow_what_is_watched(operations: list[tuple[str, int]]) -> None:
    """
    Any sequence of adding and removing readers and writers leaves the
    reactor's arrays, Twisted's views of them (C{_reads}, C{_writes},
    C{_selectables}, C{getReaders}, C{getWriters}), the kernel's epoll set
    and the events dispatched all saying the same as a model: each
    descriptor is watched for what was last added and not removed.
    """
    reactor = LeanEPollReactor()
    pairs = [_pair() for _ in range(5)]
    seen: list[tuple[str, int]] = []
    ends = [_End(one, seen) for one, _two in pairs]
    model: dict[int, set[str]] = {end.fileno(): set() for end in ends}
    try:
        for operation, index in operations:
            end = ends[index]
            getattr(reactor, operation)(end)
            kind = "read" if operation.endswith("Reader") else "write"
            if operation.startswith("add"):
                model[end.fileno()].add(kind)
            else:
                model[end.fileno()].discard(kind)
        readers = {fd for fd, kinds in model.items() if "read" in kinds}
        writers = {fd for fd, kinds in model.items() if "write" in kinds}
        waker = reactor.waker.fileno()
        assert {each.fileno() for each in reactor.getReaders()} == readers | {waker}
        assert {each.fileno() for each in reactor.getWriters()} == writers
        assert set(reactor._reads) == readers | {waker} and set(reactor._writes) == writers
        assert all((fd in reactor._reads) == (fd in readers) for fd in model)
        assert set(reactor._selectables) == readers | writers | {waker}
        assert len(reactor._selectables) == len(readers | writers) + 1
        expected = {fd: select.EPOLLIN for fd in readers} | {waker: select.EPOLLIN}
        for fd in writers:
            expected[fd] = expected.get(fd, 0) | select.EPOLLOUT
        assert _kernel_watches(reactor) == expected
        for _one, two in pairs:
            two.send(b"x")
        reactor.doPoll(0)  # a pair's byte is there at once
        events = {(kind, fd) for fd in readers for kind in ["read"]}
        events |= {("write", fd) for fd in writers}
        assert set(seen) == events and len(seen) == len(events)
    finally:
        reactor._poller.close()
        reactor.waker.connectionLost(None)
        for one, two in pairs:
            one.close()
            two.close()


@pytest.mark.parametrize("both_ways", [False, True])
def test_a_closed_descriptor_is_forgotten_and_its_number_watched_again(both_ways: bool) -> None:
    """
    A reader (or a reader and writer) whose socket was closed while watched
    (the kernel forgot it) is forgotten by the maps at its first removal,
    though the kernel says it has no such descriptor (Twisted's disconnect
    removes the reader first, and stops at the error); a new socket given
    the same number is then watched and dispatched as any other (Twisted's
    sets kept the number, and a new reader of it was never registered).
    """
    reactor = LeanEPollReactor()
    seen: list[tuple[str, int]] = []
    one, two = _pair()
    fd = one.fileno()
    first = _End(one, seen)
    reactor.addReader(first)
    if both_ways:
        reactor.addWriter(first)
    one.close()
    with pytest.raises(OSError):
        reactor.removeReader(first)  # found by identity: its fileno is -1
    assert fd not in reactor._reads and fd not in reactor._writes
    assert first not in reactor.getReaders() and reactor.getWriters() == []
    assert len(reactor._selectables) == 1  # the waker
    three, four = _pair()
    if three.fileno() != fd:  # the lowest free number is reused
        three, four = four, three
    assert three.fileno() == fd
    try:
        reactor.addReader(_End(three, seen))
        assert _kernel_watches(reactor)[fd] == select.EPOLLIN
        four.send(b"x")
        reactor.doPoll(0.5)
        assert seen == [("read", fd)]
    finally:
        reactor._poller.close()
        reactor.waker.connectionLost(None)
        for sock in (two, three, four):
            sock.close()


def test_a_descriptor_below_minus_one_touches_no_other_entry() -> None:
    """
    A reader whose descriptor reads as a negative number other than -1 is
    looked for by identity (never as a negative index, which would be
    another descriptor's entry).
    """
    reactor = LeanEPollReactor()
    seen: list[tuple[str, int]] = []
    one, two = _pair()
    kept = _End(one, seen)
    reactor.addReader(kept)

    # The number that, as a negative index, would be the kept reader's entry.
    odd = one.fileno() - len(reactor._flags)
    assert odd < -1

    class Odd(_End):
        def fileno(self) -> int:
            return odd

    try:
        reactor.removeReader(Odd(one, seen))
        assert kept in reactor.getReaders() and one.fileno() in reactor._reads
        two.send(b"x")
        reactor.doPoll(0.5)
        assert seen == [("read", one.fileno())]
    finally:
        reactor._poller.close()
        reactor.waker.connectionLost(None)
        one.close()
        two.close()
