"""
End to end: C{twistd -n --logfile F gateway --log-format json} writes only
JSON lines to F (its own events, Twisted's, and a worker process's alike),
with the listening event, the start-up summary, and the access events
(starts too, with C{--access-log-starts}); and no C{Starting factory} line
in either format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import Backend, GatewayProcess, wait_for
from tests.test_e2e_limits import game_session


def records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """
    Every line of the gateway's log, parsed (a line that is not a JSON
    object fails the test).
    """
    parsed = []
    for line in gateway.log().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


def access(gateway: GatewayProcess) -> list[dict[str, Any]]:
    return [r for r in records(gateway) if r["namespace"] == "gateway.access"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_log_lines(tmp_path: Path, echo_backend: Backend, workers: str) -> None:
    """
    Every line of the log is a JSON object with time, level, namespace and
    message; the front's listening event gives its address, the summary
    names the backend, and a game session (served by a worker process with
    --workers 2) logs a start event and an end event with flat fields.
    """
    args = [
        "--log-format",
        "json",
        "--access-log-starts",
        "--backend",
        echo_backend.endpoint,
        "--health-interval",
        "0",
        "--workers",
        workers,
    ]
    with GatewayProcess(args, tmp_path) as gateway:
        game_session("127.0.0.1", gateway.port).close()
        wait_for(lambda: len(access(gateway)) == 2, "a start and an end event")
        lines = records(gateway)
    for record in lines:
        assert {"time", "level", "namespace", "message"} <= set(record), record
        assert record["time"].endswith("Z")
        assert not any(key.startswith("log_") for key in record)
    [listening] = [r for r in lines if r["message"].startswith("listening on")]
    assert listening["address"] == f"127.0.0.1:{gateway.port}"
    assert listening["level"] == "info"
    [summary] = [r for r in lines if r["message"].startswith("gateway started: ")]
    assert echo_backend.endpoint in summary["message"]
    assert summary["fronts"] == [f"tcp:0:interface=127.0.0.1 (127.0.0.1:{gateway.port})"]
    start, end = access(gateway)
    assert start["event"] == "start" and "event" not in end
    for event in (start, end):
        assert event["kind"] == "game" and event["peer"].startswith("127.0.0.1:")
        assert event["backend"] == echo_backend.endpoint
    assert end["bytes_in"] == 5 and end["reason"]
    if workers == "2":
        assert start["worker"] == end["worker"] in (1, 2)
    assert "Starting factory" not in gateway.log()


def test_text_log_has_no_factory_noise(tmp_path: Path, echo_backend: Backend) -> None:
    """
    The default text log has the summary line and no C{Starting factory
    <... object at 0x...>} line (the admin endpoint's site included).
    """
    args = ["--backend", echo_backend.endpoint, "--admin", "tcp:0:interface=127.0.0.3"]
    with GatewayProcess(args, tmp_path) as gateway:
        wait_for(lambda: "gateway started: " in gateway.log(), "the summary")
        log = gateway.log()
    assert "Starting factory" not in log
    assert f"fronts tcp:0:interface=127.0.0.1 (127.0.0.1:{gateway.port})" in log
    assert "admin tcp:0:interface=127.0.0.3 (127.0.0.3:" in log
