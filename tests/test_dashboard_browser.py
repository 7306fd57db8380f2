"""
The admin dashboard in a real headless browser (Debian's C{chromium}): what a
person sees on C{GET /} of a running gateway with live sessions.

The browser loads the page, runs its script (which reads C{status.json}) and
prints the resulting DOM (C{--dump-dom}); the test reads the rendered tables
and counters from it.  CI installs chromium and sets C{GATEWAY_REQUIRE_BROWSER=1},
so there the test fails rather than skips when the browser is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from websockets.sync.client import connect as websocket_connect

from tests.support import (
    HEADLESS_CHROMIUM,
    GatewayProcess,
    admin_url,
    connect,
    echo,
    recv_exactly,
    wait_for,
)
from tests.support import Backend as ServerBackend
from tests.test_workers import options as workers_options

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    BROWSER is None and os.environ.get("GATEWAY_REQUIRE_BROWSER") != "1",
    reason="no chromium (apt-get install chromium); CI installs it and requires this test",
)


class _Cells(HTMLParser):
    """
    Collects the text of elements by id, and the rows of table bodies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self._open_id: str | None = None
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if tag == "table" and ident:
            self._table = ident
            self.rows[ident] = []
        elif ident:
            self._open_id = ident
            self.by_id[ident] = ""
        if tag == "tr" and self._table:
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            if self._row:
                self.rows[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag in ("span", "p"):
            self._open_id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._open_id is not None:
            self.by_id[self._open_id] += data


def render(url: str, profile: Path) -> _Cells:
    """
    Load C{url} in headless chromium, let its scripts run, and parse the DOM.
    """
    assert BROWSER is not None, "chromium is required here (GATEWAY_REQUIRE_BROWSER=1)"
    result = subprocess.run(
        [
            BROWSER,
            *HEADLESS_CHROMIUM,
            f"--user-data-dir={profile}",
            # Virtual time runs the page's timers and waits for its fetches.
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    cells = _Cells()
    cells.feed(result.stdout.decode())
    return cells


def test_dashboard_shows_backends_and_sessions(tmp_path: Path) -> None:
    """
    With two backends (one drained), three live game sessions and a
    browser's WebSocket session, the page a browser renders shows both
    backend names with their states, the session counts by kind, and one row
    per session with its kind and backend.
    """
    with (
        ServerBackend(echo) as first,
        ServerBackend(echo) as second,
        GatewayProcess(
            [
                "--backend",
                first.endpoint,
                "--backend",
                second.endpoint,
                "--admin",
                "tcp:0:interface=127.0.0.3",
                "--sniff-timeout",
                "0.2",
                "--health-interval",
                "0",
                "--websocket",
                "/play",
            ],
            tmp_path,
        ) as gateway,
        contextlib.ExitStack() as stack,
    ):
        admin = admin_url(gateway)
        sessions = []
        for number in range(3):
            game = connect(gateway.port)
            game.sendall(b"%d\n" % number)
            assert recv_exactly(game, 2) == b"%d\n" % number
            sessions.append(game)
        name = urllib.parse.quote(second.endpoint, safe="")
        drain = urllib.request.Request(f"{admin}/backends/{name}/drain", method="POST")
        assert urllib.request.urlopen(drain, timeout=10).status == 200
        browser = stack.enter_context(
            websocket_connect(f"ws://127.0.0.1:{gateway.port}/play", open_timeout=10)
        )
        browser.send(b"from a browser")
        assert browser.recv(timeout=10) == b"from a browser"

        page = render(admin + "/", tmp_path / "profile")

        assert page.by_id["count-game"] == "3"
        assert page.by_id["count-websocket"] == "1"
        assert page.by_id["count-http"] == "0"
        backends = {row[0]: row for row in page.rows["backends"]}
        assert set(backends) == {first.endpoint, second.endpoint}
        assert backends[first.endpoint][2] == "up"
        assert backends[second.endpoint][2] == "draining"
        # The action button offers what can be done next.
        assert backends[second.endpoint][-1] == "enable"
        assert backends[first.endpoint][-1] == "drain"
        rows = page.rows["sessions"]
        assert len(rows) == 4
        assert sorted(row[1] for row in rows) == ["game", "game", "game", "websocket"]
        assert sorted(row[3] for row in rows) == sorted(
            [first.endpoint, second.endpoint, first.endpoint, first.endpoint]
        )
        assert re.fullmatch(r"updated .+", page.by_id["updated"])
        assert page.by_id.get("error", "") == ""
        for game in sessions:
            game.close()


def test_dashboard_shows_the_workers(tmp_path: Path) -> None:
    """
    With --workers 2, the page lists both worker processes (running, with
    their sessions) and which worker serves each session; without workers
    the section stays hidden (the test above).
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(workers_options(backend), tmp_path) as gateway,
    ):
        admin = admin_url(gateway)

        def both_running() -> bool:
            status = json.loads(urllib.request.urlopen(admin + "/status.json", timeout=10).read())
            return [w["state"] for w in status["workers"]] == ["running", "running"]

        wait_for(both_running, "two running workers")
        sessions = []
        for number in range(4):
            game = connect(gateway.port)
            game.sendall(b"%d\n" % number)
            assert recv_exactly(game, 2) == b"%d\n" % number
            sessions.append(game)

        page = render(admin + "/", tmp_path / "profile")

        workers = page.rows["workers"]
        assert [(row[0], row[2], row[3]) for row in workers] == [
            ("1", "running", "2"),
            ("2", "running", "2"),
        ]
        assert sorted(row[-1] for row in page.rows["sessions"]) == ["1", "1", "2", "2"]
        assert page.by_id.get("error", "") == ""
        for game in sessions:
            game.close()
