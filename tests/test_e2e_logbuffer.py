"""
End to end: the log written once per reactor turn loses nothing on a clean
stop.  C{twistd -n --logfile F gateway --access-log A} with game sessions
open is sent SIGTERM: every session's end is in F (twistd's text log) and
in A (the JSON lines), written while the gateway drains and shuts down.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import Backend, GatewayProcess, wait_for
from tests.test_e2e_limits import game_session

SESSIONS = 20
"""Game sessions open when SIGTERM arrives."""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sigterm_writes_every_session_end(
    tmp_path: Path, echo_backend: Backend, log_format: str
) -> None:
    """
    Sessions closed by the drain at SIGTERM (C{--drain-timeout 0}: at once)
    each have their end line in the gateway's log and in the access log
    once the process has exited, and the log ends with twistd's own last
    line.
    """
    access = tmp_path / "access.jsonl"
    args = [
        "--backend",
        echo_backend.endpoint,
        "--health-interval",
        "0",
        "--access-log",
        str(access),
        "--drain-timeout",
        "0",
        "--log-format",
        log_format,
    ]
    with GatewayProcess(args, tmp_path) as gateway:
        clients = [game_session("127.0.0.1", gateway.port) for _ in range(SESSIONS)]
        wait_for(lambda: echo_backend.connections == SESSIONS, "every session's backend")
        try:
            assert gateway.stop() == 0
        finally:
            for client in clients:
                client.close()
        log = gateway.log()
    ends = [line for line in log.splitlines() if "game session from" in line]
    assert len(ends) == SESSIONS, log
    assert "Server Shut Down." in log.splitlines()[-1]
    records = [json.loads(line) for line in access.read_text().splitlines()]
    assert len([r for r in records if r["kind"] == "game"]) == SESSIONS
