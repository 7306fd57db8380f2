"""
C{--log-format json} (L{gateway.ops.jsonlog}): any log event becomes one
JSON line with flat fields; how twistd and twist are given that observer;
the access log's start events (C{--access-log-starts}); the start-up
summary; and the options and TOML keys of both.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application, MultiService
from twisted.internet.testing import EventLoggingObserver, MemoryReactor, MemoryReactorClock
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from gateway.config import GatewayConfig
from gateway.ops.access import ACCESS_NAMESPACE, JsonLinesObserver, access_log_starts
from gateway.ops.jsonlog import flat_event, json_line, json_observer, use_json_log
from gateway.ops.twistdlog import LogRoot
from gateway.options import GatewayOptions
from gateway.process.summary import describe
from tests.test_relay import PEER, Gateway


def parse(argv: list[str]) -> GatewayConfig:
    """
    Parse C{argv} as the plugin would, against a memory reactor.
    """
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(["--backend", "tcp:127.0.0.1:7000", *argv])
    return options.config


def logged(emit: Any) -> dict[str, Any]:
    """
    The one event C{emit(logger)} logs, as Twisted's logger makes it.
    """
    events = EventLoggingObserver()
    emit(Logger(namespace="gateway.test", observer=LogPublisher(events)))
    [event] = list(events)
    return event


# The record of one event


def test_flat_fields_of_an_event() -> None:
    """
    An event's line has the time in ISO 8601 UTC, the level's name, the
    namespace, the formatted message and the event's own plain fields; not
    Twisted's log_* keys, and no field of another type.
    """
    event = logged(
        lambda log: log.warn(
            "backend {backend} down: {reason}",
            backend="b1",
            reason="refused",
            tries=3,
            weight=1.5,
            extra={"nested": 1},
        )
    )
    event["log_time"] = 1_700_000_000.25
    record = json.loads(json_line(event))
    assert record == {
        "time": "2023-11-14T22:13:20.250000Z",
        "level": "warn",
        "namespace": "gateway.test",
        "message": "backend b1 down: refused",
        "backend": "b1",
        "reason": "refused",
        "tries": 3,
        "weight": 1.5,
    }


def test_failure_traceback_and_exception_fields() -> None:
    """
    An event with a failure carries its traceback in C{traceback}; an
    exception field is written as its text.
    """
    try:
        raise ValueError("bad value")
    except ValueError:
        failure = Failure()
    event = logged(
        lambda log: log.failure("probe failed", failure=failure, error=OSError("no route"))
    )
    record = flat_event(event)
    assert record["level"] == "critical"
    assert record["message"] == "probe failed"
    assert isinstance(record["traceback"], str) and "ValueError: bad value" in record["traceback"]
    assert record["error"] == "no route"


def test_own_fields_never_replace_the_flat_ones() -> None:
    """
    An event field named like a flat field (C{message}, C{time}, C{level})
    does not replace it.
    """
    event = logged(lambda log: log.info("hello {message}", message="m", time=3))
    event["level"] = "x"
    record = flat_event(event)
    assert record["message"] == "hello m"
    assert record["level"] == "info"
    assert isinstance(record["time"], str)


def test_legacy_event_keys_left_out(log_events: EventLoggingObserver) -> None:
    """
    Twisted's old-style messages (a port's "starting on") have their text in
    C{message} and none of the old log's own keys.
    """
    from twisted.python import log as legacy

    legacy.msg("Factory starting on 8080")
    [event] = [e for e in log_events if e.get("log_namespace") == "log_legacy"]
    record = flat_event(event)
    assert record["message"] == "Factory starting on 8080"
    assert set(record) == {"time", "level", "namespace", "message"}


def test_worker_event_keeps_its_number(log_events: EventLoggingObserver) -> None:
    """
    A worker's event, as the acceptor re-emits it, says which worker logged it.
    """
    from gateway.process.control import _reemit
    from gateway.process.wire import LogEvent

    _reemit(
        LogEvent(
            level="info",
            text="game session ended",
            fields={"log_namespace": ACCESS_NAMESPACE, "log_time": 5.0, "peer": PEER},
        ),
        2,
    )
    [event] = list(log_events)
    record = flat_event(event)
    assert record["worker"] == 2
    assert record["namespace"] == ACCESS_NAMESPACE
    assert record["peer"] == PEER
    assert record["message"] == "game session ended"
    assert record["time"] == "1970-01-01T00:00:05.000000Z"


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)


@given(
    fields=st.dictionaries(st.text(), _values, max_size=6),
    log_format=st.none() | st.text(),
    log_time=st.none() | st.floats() | st.integers() | st.text(),
    level=st.sampled_from([*LogLevel.iterconstants(), None, "info"]),
)
def test_any_event_is_one_json_line(
    fields: dict[str, Any], log_format: str | None, log_time: object, level: object
) -> None:
    """
    Whatever an event holds (any field names and values, a bad format, a
    bad time or level), it is written as exactly one line that parses as a
    JSON object with the flat fields, whose own fields are plain JSON.
    """
    event: dict[str, Any] = dict(fields)
    event.update(log_format=log_format, log_time=log_time, log_level=level)
    event["log_namespace"] = "gateway.test"
    line = json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert isinstance(record, dict)
    assert {"time", "level", "namespace", "message"} <= set(record)
    assert isinstance(record["message"], str)
    assert not any(key.startswith("log_") for key in record)
    for key, value in record.items():
        if key not in ("time", "level", "namespace", "message"):
            assert key in fields
            assert not isinstance(value, dict)


def test_observer_writes_lines_to_its_stream() -> None:
    """
    The observer writes each event to its stream as one JSON line.
    """
    stream = io.StringIO()
    publisher = LogPublisher(json_observer(stream))
    log = Logger(namespace="gateway.test", observer=publisher)
    log.info("one {n}", n=1)
    log.error("two")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [("info", "one 1"), ("error", "two")]


# Installing it in twistd and twist


def test_twistd_application_gets_the_observer(tmp_path: Path) -> None:
    """
    Under twistd, the root sets the application's ILogObserver once it is
    given to the application (twistd then logs to it), opening the log
    file as twistd would; the gateway's service is its child.
    """
    opened: list[MutableMapping[str, Any]] = []
    stream = io.StringIO()

    def open_log(runner: MutableMapping[str, Any]) -> io.StringIO:
        opened.append(runner)
        return stream

    gateway = MultiService()
    runner = {"logfile": str(tmp_path / "twistd.log"), "nodaemon": True}
    root = LogRoot(gateway, runner, json_line, MemoryReactorClock(), open_log)
    application = Application("gateway")
    assert application.getComponent(ILogObserver, None) is None
    root.setServiceParent(application)
    observer = application.getComponent(ILogObserver)
    assert opened == [runner]
    assert gateway.parent is root
    observer({"log_namespace": "n", "log_format": "x", "log_level": LogLevel.info})
    assert json.loads(stream.getvalue())["message"] == "x"


def test_twistd_log_file_written(tmp_path: Path) -> None:
    """
    With twistd's C{--logfile FILE}, the observer appends JSON lines to FILE.
    """
    path = tmp_path / "gateway.log"
    root = LogRoot(
        MultiService(), {"logfile": str(path), "nodaemon": True}, json_line, MemoryReactorClock()
    )
    application = Application("gateway")
    root.setServiceParent(application)
    application.getComponent(ILogObserver)(
        {"log_namespace": "n", "log_format": "hello", "log_level": LogLevel.info, "log_time": 0}
    )
    assert json.loads(path.read_text())["message"] == "hello"


@pytest.mark.parametrize("runner", [{"syslog": True}, {"logger": "some.factory"}])
def test_twistd_own_choices_stand(runner: dict[str, Any]) -> None:
    """
    twistd's C{--syslog} and C{--logger} keep their observer.
    """
    root = LogRoot(
        MultiService(),
        {"logfile": "", "nodaemon": True, **runner},
        json_line,
        MemoryReactorClock(),
    )
    application = Application("gateway")
    root.setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is None


def test_twist_gets_the_observer_factory() -> None:
    """
    Under twist, its options' file observer factory becomes the JSON one,
    and the service tree is the gateway's own.
    """
    service = MultiService()
    runner: dict[str, Any] = {"logFile": io.StringIO(), "fileLogObserverFactory": None}
    assert use_json_log(service, runner, MemoryReactorClock()) is service
    stream = io.StringIO()
    runner["fileLogObserverFactory"](stream)({"log_format": "hi", "log_time": 0.0})
    assert json.loads(stream.getvalue())["message"] == "hi"


def test_options_and_toml(tmp_path: Path) -> None:
    """
    C{--log-format} is text or json (TOML C{log-format}); anything else is
    refused naming the option; C{--access-log-starts} (TOML
    C{access-log-starts}) is off by default.
    """
    assert (parse([]).log_format, parse([]).access_log_starts) == ("text", False)
    config = parse(["--log-format", "json", "--access-log-starts"])
    assert (config.log_format, config.access_log_starts) == ("json", True)
    with pytest.raises(UsageError, match="--log-format"):
        parse(["--log-format", "yaml"])
    toml = tmp_path / "gateway.toml"
    toml.write_text('log-format = "json"\naccess-log-starts = true\n')
    config = parse(["--config", str(toml)])
    assert (config.log_format, config.access_log_starts) == ("json", True)


# Start events


@pytest.fixture
def starts() -> Iterator[None]:
    """
    Start events on, for one test.
    """
    access_log_starts(True)
    yield
    access_log_starts(False)


def _access(log_events: EventLoggingObserver) -> list[dict[str, Any]]:
    return [e for e in log_events if e.get("log_namespace") == ACCESS_NAMESPACE]


def test_start_event_when_backend_reached(starts: None, log_events: EventLoggingObserver) -> None:
    """
    With --access-log-starts, a game session logs a start event once it
    reaches its backend (not before), with the time it took; its end event
    follows as before, without an C{event} field.
    """
    gateway = Gateway()
    gateway.session.start(b"hello")
    gateway.reactor.advance(0.25)
    assert _access(log_events) == []
    gateway.accept()
    [start] = _access(log_events)
    assert {k: start[k] for k in ("event", "kind", "peer", "backend", "duration")} == {
        "event": "start",
        "kind": "game",
        "peer": PEER,
        "backend": gateway.backends[0].name,
        "duration": 0.25,
    }
    gateway.client.connection_lost()
    end = _access(log_events)[-1]
    assert "event" not in end and end["reason"]
    stream = io.StringIO()
    JsonLinesObserver(stream)(start)
    assert json.loads(stream.getvalue())["event"] == "start"


def test_no_start_event_by_default(log_events: EventLoggingObserver) -> None:
    """
    Without --access-log-starts, reaching the backend logs nothing.
    """
    Gateway().connected()
    assert _access(log_events) == []


# The start-up summary


def test_summary_names_fronts_pools_routes_limits_admin() -> None:
    """
    The summary's text and fields: every pool with its backends, the
    number of routes, the limits and the admin endpoint.
    """
    config = parse(
        [
            "--max-connections",
            "100",
            "--max-per-ip",
            "4",
            "--rate-per-ip",
            "2.5",
            "--admin",
            "none",
        ]
    )
    fields = describe(config, [], None)
    assert fields["summary"] == (
        "fronts none; pool game (roundrobin): tcp:127.0.0.1:7000; 0 routes; "
        "limits max-connections 100 (reject), max-per-ip 4, rate-per-ip 2.5/s; admin none"
    )
    assert (fields["max_connections"], fields["max_per_ip"], fields["rate_per_ip"]) == (
        100,
        4,
        2.5,
    )
    assert (fields["backends"], fields["routes"], fields["admin"]) == (1, 0, None)
