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
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.threads import deferToThread
from websockets.sync.client import connect as websocket_connect

from gateway.ops.admin import make_admin_site
from gateway.ops.registry import Counters, SessionRegistry
from gateway.ops.status import AdminState
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.pools import Pools
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

    @ivar rows: by table id, the rows that have C{td} cells (their texts).
    @ivar body_rows: by table id, every row of its bodies, headings (C{th})
        included, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.body_rows: dict[str, list[list[str]]] = {}
        self._open_id: str | None = None
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._body_row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if tag == "table" and ident:
            self._table = ident
            self.rows[ident] = []
            self.body_rows[ident] = []
        elif ident:
            self._open_id = ident
            self.by_id[ident] = ""
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._table:
            self._row = []
            self._body_row = [] if self._in_body else None
        if tag == "td" and self._row is not None:
            self._cell = []
        if tag == "th" and self._body_row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            if tag == "td" and self._row is not None:
                self._row.append(text)
            if self._body_row is not None:
                self._body_row.append(text)
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            if self._row:
                self.rows[self._table].append(self._row)
            if self._body_row:
                self.body_rows[self._table].append(self._body_row)
            self._row = self._body_row = None
        elif tag == "tbody":
            self._in_body = False
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
        # One pool: its heading, then its backends, as status.json lists them.
        assert [row[0] for row in page.body_rows["backends"]] == [
            "pool game 1/2 up",
            first.endpoint,
            second.endpoint,
        ]
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


@pytest_twisted.async_yield_fixture
async def two_pools_admin() -> AsyncIterator[str]:
    """
    An admin endpoint on loopback (in this process) whose C{status.json}
    lists the backends of two pools: C{game-1} (up) and C{game-2} (down) in
    the game pool, C{api-1} (up), C{api-2} (draining) and C{api-3} (up) in
    pool C{api}.

    @return: its URL.
    """
    clock: IReactorTime = reactor

    def backend(name: str, port: int, pool: str) -> Backend:
        return Backend(
            name=name,
            description=f"tcp:127.0.0.1:{port}",
            endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            pool=pool,
        )

    pools = Pools(Pool([backend("game-1", 7000, "game"), backend("game-2", 7002, "game")]))
    api = [backend("api-1", 7001, "api"), backend("api-2", 7003, "api")]
    pools.add_pool(Pool([*api, backend("api-3", 7004, "api")], name="api"))
    pools.set_state(pools.backends[1], BackendState.DOWN, "health check failed 3 times: HTTP 503")
    pools.set_state(api[1], BackendState.DRAINING, "operator")
    state = AdminState(pools, SessionRegistry(), Counters(), clock=clock)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(make_admin_site(state, clock))
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    finally:
        stopping = port.stopListening()
        if stopping is not None:
            await stopping


@pytest_twisted.ensureDeferred
async def test_dashboard_groups_backends_by_pool(two_pools_admin: str, tmp_path: Path) -> None:
    """
    The backends table has a heading per pool, in status.json's order, with
    the pool's name and how many of its backends are up, and that pool's
    backends under it in status.json's order.
    """
    status = json.loads(
        await deferToThread(
            lambda: urllib.request.urlopen(two_pools_admin + "/status.json", timeout=10).read()
        )
    )
    assert [b["pool"] for b in status["backends"]] == ["game"] * 2 + ["api"] * 3

    # The browser runs in a thread: this reactor serves its requests meanwhile.
    page = await deferToThread(render, two_pools_admin + "/", tmp_path / "profile")

    assert [row[:3] for row in page.body_rows["backends"]] == [
        ["pool game 1/2 up"],
        ["game-1", "tcp:127.0.0.1:7000", "up"],
        ["game-2", "tcp:127.0.0.1:7002", "down"],
        ["pool api 2/3 up"],
        ["api-1", "tcp:127.0.0.1:7001", "up"],
        ["api-2", "tcp:127.0.0.1:7003", "draining"],
        ["api-3", "tcp:127.0.0.1:7004", "up"],
    ]
    assert page.by_id.get("error", "") == ""
