"""
The admin issue's settings as data (C{--admin-token}, C{--admin-token-file},
C{--access-log}), the JSON lines writer of the access log, and the start-up
warning for an open admin endpoint.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import EventLoggingObserver, MemoryReactor, MemoryReactorClock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.usage import UsageError

from gateway.config import GatewayConfig
from gateway.ops.access import (
    AccessLogFile,
    JsonLinesObserver,
    access_log_only,
    log_game_session,
    log_http_request,
)
from gateway.ops.registry import SessionRegistry
from gateway.options import GatewayOptions
from gateway.process.assemble import make_service
from gateway.process.errors import StartupError
from tests.support import FullDisk

TOKEN = "abcdefghijklmnop-0123"


def parse(argv: list[str]) -> GatewayConfig:
    """
    Parse C{argv} as the plugin would, against a memory reactor.
    """
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(["--backend", "tcp:127.0.0.1:7000", *argv])
    return options.config


def test_admin_token_and_access_log_settings(tmp_path: Path) -> None:
    """
    --admin-token and --access-log land in the config (the log as an
    absolute path); the token is not shown in the config's repr.
    """
    log = tmp_path / "access.jsonl"
    config = parse(["--admin-token", TOKEN, "--access-log", str(log)])
    assert config.admin_token == TOKEN
    assert config.access_log == str(log)
    assert TOKEN not in repr(config)
    assert parse(["--access-log", "-"]).access_log == "-"
    assert parse([]).admin_token is None and parse([]).access_log is None


def test_admin_token_file(tmp_path: Path) -> None:
    """
    --admin-token-file reads the token from the file's first line, without
    its line end.
    """
    path = tmp_path / "token"
    path.write_text(TOKEN + "\nignored\n")
    assert parse(["--admin-token-file", str(path)]).admin_token == TOKEN


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--admin-token", "short"], "--admin-token: at least 16 characters, got 5"),
        (["--admin-token", "has spaces in it, sixteen+"], "--admin-token: only visible ASCII"),
        (["--admin-token", "tökentökentökentöken"], "--admin-token: only visible ASCII"),
        (["--admin-token", TOKEN, "--admin-token-file", "/x"], "not both"),
        (["--admin-token", TOKEN, "--admin", "none"], "--admin-token: needs an --admin"),
        (["--admin-token-file", "/nonexistent/token"], "--admin-token-file: cannot read"),
        (["--access-log", "/nonexistent/dir/a.log"], "--access-log: the folder of"),
        (["--access-log", "/"], "--access-log: '/' is a directory"),
    ],
)
def test_bad_admin_settings(argv: list[str], message: str) -> None:
    """
    Each bad setting is refused with a message naming the option.
    """
    with pytest.raises(UsageError) as raised:
        parse(argv)
    assert message in str(raised.value)


def test_token_file_with_a_short_token(tmp_path: Path) -> None:
    """
    A token file whose token is too short is refused, naming the file.
    """
    path = tmp_path / "token"
    path.write_text("short\n")
    with pytest.raises(UsageError, match=r"--admin-token-file .*token: at least 16"):
        parse(["--admin-token-file", str(path)])


def test_json_lines_has_only_access_events() -> None:
    """
    The JSON lines writer writes one JSON object per access event, with the
    documented fields and a time, and ignores every other event.
    """
    stream = io.StringIO()
    observer = JsonLinesObserver(stream)
    globalLogPublisher.addObserver(observer)
    try:
        Logger(namespace="gateway.session.relay").info("not an access event")
        log_game_session(
            peer="192.0.2.1:5000",
            backend="b0",
            bytes_in=5,
            bytes_out=7,
            duration=1.5,
            reason="client-closed",
        )
        log_http_request(
            peer="192.0.2.2:6000",
            method="GET",
            path="/a b\\x00",
            status=404,
            bytes_in=0,
            bytes_out=12,
            duration=0.001,
            reason="complete",
        )
    finally:
        globalLogPublisher.removeObserver(observer)
    game, http = (json.loads(line) for line in stream.getvalue().splitlines())
    assert game.pop("time") > 0
    assert game == {
        "kind": "game",
        "peer": "192.0.2.1:5000",
        "backend": "b0",
        "bytes_in": 5,
        "bytes_out": 7,
        "duration": 1.5,
        "reason": "client-closed",
        "relay": "copy",
    }
    http.pop("time")
    assert http == {
        "kind": "http",
        "peer": "192.0.2.2:6000",
        "backend": None,
        "route": None,
        "method": "GET",
        "path": "/a b\\x00",
        "status": 404,
        "bytes_in": 0,
        "bytes_out": 12,
        "duration": 0.001,
        "reason": "complete",
    }


NO_BACKEND_SESSION: dict[str, Any] = {
    "peer": "p",
    "backend": None,
    "bytes_in": 0,
    "bytes_out": 0,
    "duration": 0.0,
    "reason": "no-backend",
}
"""The fields of a game session that never reached a backend."""


def test_access_log_file_appends_while_running(tmp_path: Path) -> None:
    """
    The --access-log service appends events to its file only while it runs,
    keeping what the file held before.
    """
    path = tmp_path / "access.jsonl"
    path.write_text('{"earlier": true}\n')
    service = AccessLogFile(str(path))
    event = NO_BACKEND_SESSION
    log_game_session(**event)
    service.startService()
    log_game_session(**event)
    service.stopService()
    log_game_session(**event)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["reason"] == "no-backend"


def test_access_log_only_keeps_access_events_out_of_the_main_log(
    tmp_path: Path, log_events: EventLoggingObserver
) -> None:
    """
    With --access-log-only, access events reach the access log file and no
    other observer (twistd's log is one of those); without it, both.
    """
    path = tmp_path / "access.jsonl"
    service = AccessLogFile(str(path))
    event = NO_BACKEND_SESSION
    service.startService()
    try:
        access_log_only(True)
        log_game_session(**event)
        assert [e for e in log_events if e.get("log_namespace") == "gateway.access"] == []
        access_log_only(False)
        log_game_session(**event)
        assert len([e for e in log_events if e.get("log_namespace") == "gateway.access"]) == 1
    finally:
        access_log_only(False)
        service.stopService()
    assert len(path.read_text().splitlines()) == 2


def test_access_log_only_needs_an_access_log() -> None:
    with pytest.raises(UsageError, match="--access-log-only: needs --access-log"):
        GatewayOptions(reactor=MemoryReactor()).parseOptions(
            ["--backend", "tcp:127.0.0.1:1", "--access-log-only"]
        )


def test_access_log_file_that_cannot_be_opened(tmp_path: Path) -> None:
    """
    A file that cannot be opened at start (its folder went away) stops
    start-up with one line naming the option.
    """
    service = AccessLogFile(str(tmp_path / "gone" / "access.jsonl"))
    with pytest.raises(StartupError, match=r"--access-log .*gone/access.jsonl: No such file"):
        service.privilegedStartService()


@pytest.mark.parametrize(
    ("admin", "warned"),
    [
        ("tcp:9090:interface=127.0.0.1", False),
        ("tcp:9090:interface=\\:\\:1", False),
        ("unix:/run/gateway-admin.sock", False),
        ("tcp:9090", True),
        ("tcp:9090:interface=0.0.0.0", True),
    ],
)
def test_open_admin_endpoint_warns(
    admin: str, warned: bool, log_events: EventLoggingObserver
) -> None:
    """
    An admin endpoint reachable from other hosts without a token is worth a
    warning at start-up; a loopback or UNIX one is not, and neither is one
    with a token.
    """
    make_service(parse(["--admin", admin]), MemoryReactorClock())

    def warnings() -> int:
        return sum("has no --admin-token" in e.get("log_format", "") for e in log_events)

    assert warnings() == (1 if warned else 0)
    make_service(parse(["--admin", admin, "--admin-token", TOKEN]), MemoryReactorClock())
    assert warnings() == (1 if warned else 0)


def test_full_disk_is_reported_once(log_events: EventLoggingObserver) -> None:
    """
    When the access log cannot be written (a full disk), the events are
    lost and counted, the failure is logged once (not per event, and not as
    a traceback), and when writing works again that is logged with the count.
    """
    stream = FullDisk()
    observer = JsonLinesObserver(stream)
    globalLogPublisher.addObserver(observer)
    event = NO_BACKEND_SESSION
    try:
        for _ in range(3):
            log_game_session(**event)
        stream.full = False
        log_game_session(**event)
    finally:
        globalLogPublisher.removeObserver(observer)
    texts = [formatEvent(e) for e in log_events if e.get("log_namespace") != "gateway.access"]
    assert texts == [
        "cannot write the access log: No space left on device; access events are lost "
        "until writing works again",
        "the access log is written again; 3 access events were lost",
    ]
    assert len(stream.getvalue().splitlines()) == 1


def test_game_session_duration(log_events: EventLoggingObserver) -> None:
    """
    A game session's access event gives its duration: from its
    classification to its end, by the gateway's clock.
    """
    from tests.test_registry import _session

    registry = SessionRegistry()
    reactor, _front, client, _backend = _session(registry)
    reactor.advance(2.5)
    client.lose()
    [event] = [e for e in log_events if e.get("log_namespace") == "gateway.access"]
    assert event["duration"] == 2.5


def _as_logger_info_makes(only: bool, log: Callable[[], None], info: dict[str, Any]) -> str:
    """
    Log an access event with C{log}, then the same with C{Logger.info} (on
    the route C{--access-log-only} chooses, with the first event's text and
    C{info} as its fields), and check that the events are equal: keys, their
    order, values; the time aside.

    @return: the event's text.
    """
    from gateway.ops import access

    seen: list[dict[str, Any]] = []
    observer = seen.append
    publisher = access.ACCESS_ONLY if only else globalLogPublisher
    publisher.addObserver(observer)  # type: ignore[arg-type]
    access.access_log_only(only)
    try:
        log()
        event = dict(seen[-1])
        text: str = event["log_text"]
        access._route[0].info("{log_text}", log_text=text, **info)
        expected = dict(seen[-1])
    finally:
        access.access_log_only(False)
        publisher.removeObserver(observer)  # type: ignore[arg-type]
    assert event.pop("log_time") <= expected.pop("log_time")
    assert list(event.items()) == list(expected.items())
    return text


@pytest.mark.parametrize("only", [False, True])
def test_http_event_is_what_logger_info_makes(only: bool) -> None:
    """
    An HTTP request's event is built without C{Logger.info}, and is the
    event C{Logger.info} makes (keys, their order, values; the time aside),
    on either route (C{--access-log-only} or not).
    """
    from gateway.ops import access

    fields: dict[str, Any] = {
        "peer": "192.0.2.2:6000",
        "method": "GET",
        "path": "/a",
        "status": 200,
        "bytes_in": 0,
        "bytes_out": 12,
        "duration": 0.001,
        "reason": "complete",
    }
    info = {"kind": "http", "peer": fields["peer"], "route": None, "backend": None}
    info |= {k: v for k, v in fields.items() if k != "peer"}
    _as_logger_info_makes(only, lambda: access.log_http_request(**fields), info)


@pytest.mark.parametrize("only", [False, True])
def test_game_event_is_what_logger_info_makes(only: bool) -> None:
    """
    A game session's end event is built without C{Logger.info} too, and is
    the event C{Logger.info} makes (keys, their order, values; the time
    aside), on either route.
    """
    from gateway.ops import access

    fields: dict[str, Any] = {
        "kind": "game",
        "peer": "192.0.2.2:6000",
        "backend": "b1",
        "bytes_in": 5,
        "bytes_out": 12,
        "duration": 0.25,
        "reason": "client-closed",
        "relay": "splice",
    }
    text = _as_logger_info_makes(only, lambda: access.log_game_session(**fields), fields)
    assert text == (
        "game session from 192.0.2.2:6000 to b1 ended (client-closed): 5 bytes in, "
        "12 bytes out, 0.250 s, splice"
    )
