"""
The log written once per reactor turn (L{gateway.ops.logbuffer}): held
until the turn ends, written at a size bound, at once for a warning or an
error, and everything held written before rotation, reopening, stopping and
once the reactor has shut down; the text line byte-identical to twistd's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application, MultiService
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEvent, textFileLogObserver
from twisted.python.logfile import LogFile

from gateway.ops.access import AccessLogFile, JsonLinesObserver, log_game_session
from gateway.ops.logbuffer import (
    BufferedLogObserver,
    LineBuffer,
    SecondCache,
    buffered_observer,
    text_line,
)
from gateway.ops.twistdlog import LogRoot, rotation
from tests.support import FullDisk

SESSION: dict[str, Any] = {
    "peer": "192.0.2.1:5000",
    "backend": "b0",
    "bytes_in": 5,
    "bytes_out": 7,
    "duration": 0.25,
    "reason": "client-closed",
}
"""The fields of one game session's end."""


class Counting(io.StringIO):
    """
    A stream that counts its writes and flushes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def event(text: str, level: LogLevel = LogLevel.info, when: float = 1.5e9) -> dict[str, Any]:
    """
    A log event whose text is C{text}.
    """
    return {
        "log_format": text,
        "log_level": level,
        "log_time": when,
        "log_namespace": "gateway.test",
        "log_system": "-",
    }


def test_lines_wait_for_the_turn_to_end() -> None:
    """
    While the reactor runs, lines are held until the turn ends, then
    written in one write and one flush.
    """
    stream, clock = Counting(), MemoryReactorClock()
    lines = LineBuffer(stream)
    lines.hold(clock)
    for number in range(3):
        lines.write(f"line {number}\n")
    assert stream.getvalue() == ""
    clock.advance(0)
    assert stream.getvalue() == "line 0\nline 1\nline 2\n"
    assert (stream.writes, stream.flushes) == (1, 1)
    clock.advance(0)
    assert (stream.writes, stream.flushes) == (1, 1)


def test_lines_written_at_the_size_bound() -> None:
    """
    Once the lines held reach the size bound they are written at once,
    without waiting for the turn to end (and the turn's end writes nothing
    more).
    """
    stream, clock = Counting(), MemoryReactorClock()
    lines = LineBuffer(stream, limit=20)
    lines.hold(clock)
    lines.write("0123456789\n")
    assert stream.getvalue() == ""
    lines.write("abcdefghij\n")
    assert stream.getvalue() == "0123456789\nabcdefghij\n"
    assert clock.getDelayedCalls() == []
    lines.write("next\n")
    clock.advance(0)
    assert stream.getvalue().endswith("abcdefghij\nnext\n")
    assert stream.writes == 2


@pytest.mark.parametrize(
    ("level", "at_once"),
    [
        (LogLevel.debug, False),
        (LogLevel.info, False),
        (LogLevel.warn, True),
        (LogLevel.error, True),
        (LogLevel.critical, True),
    ],
)
def test_warnings_and_errors_written_at_once(level: LogLevel, at_once: bool) -> None:
    """
    A warning or an error is written at once, after the lines held before
    it (a crash's last words reach the file); other levels wait.
    """
    stream, clock = io.StringIO(), MemoryReactorClock()
    lines = LineBuffer(stream)
    lines.hold(clock)
    observer = BufferedLogObserver(lines, text_line)
    observer(event("before"))
    observer(event("this one", level))
    written = stream.getvalue().splitlines()
    if at_once:
        assert [line.split(" ", 2)[2] for line in written] == ["before", "this one"]
    else:
        assert written == []


def test_written_at_once_until_the_reactor_runs_and_after_shutdown() -> None:
    """
    The program's log writes each line at once until its reactor runs,
    holds them while it runs, and at its shutdown writes what it holds and
    each line at once again.
    """
    stream, reactor = io.StringIO(), MemoryReactorClock()
    observer = buffered_observer(stream, text_line, reactor)
    observer(event("starting"))
    assert stream.getvalue().count("\n") == 1
    for hook, args, kwargs in reactor.whenRunningHooks:
        hook(*args, **kwargs)
    observer(event("running"))
    assert stream.getvalue().count("\n") == 1
    [(release, args, kwargs)] = reactor.triggers["after"]["shutdown"]
    release(*args, **kwargs)
    assert stream.getvalue().count("\n") == 2
    observer(event("Main loop terminated."))
    assert stream.getvalue().count("\n") == 3
    assert reactor.getDelayedCalls() == [] or not reactor.getDelayedCalls()[0].active()


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
            st.text(max_size=30),
            st.sampled_from([LogLevel.info, LogLevel.warn]),
        ),
        max_size=12,
    )
)
def test_text_line_is_twistds_own(events: list[tuple[float, str, LogLevel]]) -> None:
    """
    The text line is byte for byte what twistd's own text observer writes,
    across seconds (the formatted second is cached) and any text.
    """
    ours, theirs = io.StringIO(), io.StringIO()
    stock = textFileLogObserver(theirs)
    lines = LineBuffer(ours)
    observer = BufferedLogObserver(lines, text_line)
    for when, text, level in events:
        for seen in (stock, observer):
            seen({"log_format": "{text}", "text": text, "log_level": level, "log_time": when})
    assert ours.getvalue() == theirs.getvalue()


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
            st.text(max_size=30),
            st.sampled_from([LogLevel.info, LogLevel.warn, None]),
            st.sampled_from([None, "gateway.access", "x\ny"]),
            st.sampled_from([None, "-", "sys tem"]),
        ),
        max_size=12,
    )
)
def test_made_text_line_is_twistds_own(
    events: list[tuple[float, str, LogLevel | None, str | None, str | None]],
) -> None:
    """
    An event whose text was made before it was logged (C{"{log_text}"}, the
    access events) gets twistd's own line too, whatever its text, level,
    namespace and system (the line is put together without the formatter).
    """
    ours, theirs = io.StringIO(), io.StringIO()
    stock = textFileLogObserver(theirs)
    lines = LineBuffer(ours)
    observer = BufferedLogObserver(lines, text_line)
    for when, text, level, namespace, system in events:
        event: dict[str, object] = {"log_format": "{log_text}", "log_text": text, "log_time": when}
        if level is not None:
            event["log_level"] = level
        if namespace is not None:
            event["log_namespace"] = namespace
        if system is not None:
            event["log_system"] = system
        for seen in (stock, observer):
            seen(dict(event))
    assert ours.getvalue() == theirs.getvalue()


def test_second_cache_changes_with_the_second() -> None:
    """
    The cached time text is the second's own, also on going back in time.
    """
    cache = SecondCache()
    assert cache(100.2) == cache(100.9)
    assert cache(101.0) != cache(100.9)
    assert cache(100.0) == cache(100.5)
    assert cache(None) == "-"


def test_rotation_writes_the_held_lines_to_the_old_file(tmp_path: Path) -> None:
    """
    On SIGUSR1 the lines held are written to the file being rotated away,
    and later lines to the new one.
    """
    log_file = LogFile.fromFullPath(str(tmp_path / "gateway.log"))
    clock = MemoryReactorClock()
    lines = LineBuffer(log_file)
    lines.hold(clock)
    observer = BufferedLogObserver(lines, text_line)
    observer(event("before rotation"))
    rotation(log_file, observer)()
    observer(event("after rotation"))
    clock.advance(0)
    log_file.close()
    assert "before rotation" in (tmp_path / "gateway.log.1").read_text()
    assert "after rotation" in (tmp_path / "gateway.log").read_text()
    assert "before rotation" not in (tmp_path / "gateway.log").read_text()


def test_twistd_root_holds_lines_while_the_reactor_runs(tmp_path: Path) -> None:
    """
    Under twistd, the root's observer writes twistd's text lines to the log
    file once per turn while the reactor runs.
    """
    path = tmp_path / "gateway.log"
    reactor = MemoryReactorClock()
    root = LogRoot(MultiService(), {"logfile": str(path)}, text_line, reactor)
    application = Application("gateway")
    root.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    for hook, args, kwargs in reactor.whenRunningHooks:
        hook(*args, **kwargs)
    observer(event("held"))
    assert path.read_text() == ""
    reactor.advance(0)
    assert path.read_text().endswith(" [-] held\n")


def test_access_log_waits_for_the_turn(tmp_path: Path) -> None:
    """
    The access log file's lines are written once the turn ends, and those
    held are written before it is stopped.
    """
    path = tmp_path / "access.jsonl"
    clock = MemoryReactorClock()
    service = AccessLogFile(str(path), clock)
    service.startService()
    try:
        log_game_session(**SESSION)
        assert path.read_text() == ""
        clock.advance(0)
        assert len(path.read_text().splitlines()) == 1
        log_game_session(**SESSION)
        log_game_session(**SESSION)
    finally:
        service.stopService()
    assert [json.loads(line)["peer"] for line in path.read_text().splitlines()] == [
        "192.0.2.1:5000"
    ] * 3


def test_access_log_reopen_writes_held_lines_to_the_old_file(tmp_path: Path) -> None:
    """
    Reopening the access log (after rotation, or a reload naming another
    file) writes the lines held to the file it had open.
    """
    old, new = tmp_path / "access.jsonl", tmp_path / "other.jsonl"
    clock = MemoryReactorClock()
    service = AccessLogFile(str(old), clock)
    service.startService()
    try:
        log_game_session(**SESSION)
        service.reopen(str(new))
        log_game_session(**SESSION)
        clock.advance(0)
    finally:
        service.stopService()
    assert len(old.read_text().splitlines()) == 1
    assert len(new.read_text().splitlines()) == 1


def test_full_disk_counts_every_held_line(log_events: EventLoggingObserver) -> None:
    """
    A write that fails loses every line of the turn: all are counted, and
    the failure is logged once.
    """
    stream, clock = FullDisk(), MemoryReactorClock()
    observer = JsonLinesObserver(stream, clock)
    for _ in range(3):
        observer({"log_namespace": "gateway.access", "log_time": 1.0, **SESSION})
    clock.advance(0)
    stream.full = False
    observer({"log_namespace": "gateway.access", "log_time": 1.0, **SESSION})
    clock.advance(0)
    texts = [formatEvent(e) for e in log_events]
    assert texts[-1] == "the access log is written again; 3 access events were lost"
    assert len(stream.getvalue().splitlines()) == 1
