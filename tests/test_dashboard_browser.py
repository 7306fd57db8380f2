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
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from websockets.sync.client import connect as websocket_connect

from gateway import __version__ as gateway_version
from gateway.config import DEFAULT_ADMIN
from gateway.ops.admin import make_admin_site
from gateway.ops.registry import Counters, SessionRegistry
from gateway.ops.status import AdminState
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.pools import Pools
from gateway.pool.room import RoomSettings
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings
from tests.cdp import Browser
from tests.support import (
    HEADLESS_CHROMIUM,
    GatewayProcess,
    admin_url,
    connect,
    echo,
    recv_exactly,
    recv_until_eof,
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
        elif tag in ("span", "p", "strong"):
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
    cells = _Cells()
    cells.feed(dump_dom(url, profile))
    return cells


def dump_dom(url: str, profile: Path) -> str:
    """
    Load C{url} in headless chromium, let its scripts run: the DOM as HTML.
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
    return result.stdout.decode()


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
        # Which gateway, and since when.
        assert page.by_id["version"] == f"v{gateway_version}"
        assert page.by_id["host"] == socket.gethostname()
        assert re.fullmatch(r"\d+ s|\d+ min \d+ s", page.by_id["uptime"])
        # Nothing refused: one line says so.
        assert page.rows["refusals"] == [["no refusals"]]
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


@pytest_twisted.async_yield_fixture
async def waiting_room_admin() -> AsyncIterator[str]:
    """
    An admin endpoint on loopback (in this process) whose game pool's one
    backend is full (max-sessions 1) and whose waiting room (size 5) holds
    three real game sessions, entered one after the other.

    @return: its URL.
    """
    clock: IReactorTime = reactor
    backend = Backend(
        name="game-1",
        description="tcp:127.0.0.1:7000",
        endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 7000),
        max_sessions=1,
    )
    backend.active = 1  # full: nobody is admitted while the test runs
    pool = Pool([backend], clock=clock)
    pool.room.configure(RoomSettings(size=5, timeout=3600.0), clock)
    registry = SessionRegistry(clock)
    settings = SessionSettings(
        sniff_timeout=1.0, connect_timeout=5.0, idle_timeout=0.0, fin_timeout=5.0
    )
    for number in range(3):
        session = GameSession(
            StringTransport(), pool, clock, settings, peer=f"192.0.2.{number + 1}:4000"
        )
        session.start(b"hello\n")
        registry.add(session)
    state = AdminState(Pools(pool), registry, Counters(), clock=clock)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(make_admin_site(state, clock))
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
    finally:
        pool.room.turn_away()  # and its timers with it
        stopping = port.stopListening()
        if stopping is not None:
            await stopping


@pytest_twisted.ensureDeferred
async def test_dashboard_shows_the_waiting_room(waiting_room_admin: str, tmp_path: Path) -> None:
    """
    With sessions waiting, the page shows the pool's waiting room (how many
    wait of how many may, how the waits ended) and each waiting session's
    state with its place in the sessions table ("waiting #N").
    """
    page = await deferToThread(render, waiting_room_admin + "/", tmp_path / "profile")

    [room] = page.rows["queues"]
    assert room[0] == "game"
    assert room[1] == "3 / 5"
    assert re.fullmatch(r"\d+ s", room[2])
    assert room[3:] == ["0", "0", "0", "0"]
    # id, kind, peer, backend, state: the oldest first.
    assert [row[:5] for row in page.rows["sessions"]] == [
        [str(n), "game", f"192.0.2.{n}:4000", "-", f"waiting #{n}"] for n in (1, 2, 3)
    ]
    assert page.by_id.get("error", "") == ""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """
    A headless Chromium driven through the DevTools protocol, closed (and its
    processes killed) after the test.
    """
    assert BROWSER is not None, "chromium is required here (GATEWAY_REQUIRE_BROWSER=1)"
    with Browser(BROWSER, tmp_path / "profile") as running:
        yield running


def text_of(browser: Browser, ident: str) -> str:
    """
    The text of the page's element with id C{ident}.
    """
    text: str = browser.evaluate(f"document.getElementById({json.dumps(ident)}).textContent")
    return text.strip()


def peak(browser: Browser, line: str) -> float:
    """
    How high a line of the rates chart rises above its baseline, as a
    fraction of the chart's height (0: flat or not drawn).
    """
    points: str = browser.evaluate(
        f"document.getElementById({json.dumps(line)}).getAttribute('points')"
    )
    heights = [float(pair.split(",")[1]) for pair in points.split()]
    return (100 - min(heights)) / 100 if heights else 0.0


def refused(port: int) -> None:
    """
    Open a connection that the gateway refuses (it closes it at once).
    """
    sock = connect(port)
    assert recv_until_eof(sock) == b""
    sock.close()


def test_dashboard_charts_session_and_refusal_rates(tmp_path: Path, browser: Browser) -> None:
    """
    The page draws the rates of new sessions and of refusals from the
    counters it polls: flat while nothing happens; after two sessions and
    three refused connections both lines rise and the current rates show
    it; once the activity has stopped the current rates fall back to 0,
    while the chart, a rolling window kept by the page, still shows the rise.
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(
            [
                "--backend",
                backend.endpoint,
                "--admin",
                "tcp:0:interface=127.0.0.3",
                "--max-per-ip",
                "2",
                "--health-interval",
                "0",
            ],
            tmp_path,
        ) as gateway,
    ):
        browser.open(admin_url(gateway) + "/")
        wait_for(lambda: text_of(browser, "rate-sessions-now") == "0", "a first interval")
        assert text_of(browser, "rate-refusals-now") == "0"
        assert peak(browser, "rate-sessions") == peak(browser, "rate-refusals") == 0
        assert text_of(browser, "rate-scale") == "1/s"

        sessions = []
        for number in range(2):
            game = connect(gateway.port)
            game.sendall(b"%d\n" % number)
            assert recv_exactly(game, 2) == b"%d\n" % number
            sessions.append(game)
        for _ in range(3):
            refused(gateway.port)

        wait_for(
            lambda: peak(browser, "rate-sessions") > 0 and peak(browser, "rate-refusals") > 0,
            "both lines to rise",
        )
        wait_for(
            lambda: (
                text_of(browser, "rate-sessions-now") == "0"
                and text_of(browser, "rate-refusals-now") == "0"
            ),
            "the current rates to fall back to 0",
        )
        assert peak(browser, "rate-sessions") > 0
        assert peak(browser, "rate-refusals") > 0
        assert text_of(browser, "error") == ""
        for game in sessions:
            game.close()


def refuse_health_checks(sock: socket.socket, backend: ServerBackend) -> None:
    """
    A backend that answers a health check's line with C{ERR busy}, then closes.
    """
    received = b""
    while not received.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            return
        received += chunk
    sock.sendall(b"ERR busy\n")
    sock.shutdown(socket.SHUT_WR)


def test_dashboard_shows_failure_reasons_as_text(tmp_path: Path) -> None:
    """
    A backend that fails its health checks is shown down with the reason in
    readable text: the expected and received bytes quoted as text, not as
    Python bytes (C{b'PONG'}).
    """
    with (
        ServerBackend(refuse_health_checks) as backend,
        GatewayProcess(
            [
                "--backend",
                backend.endpoint,
                "--admin",
                "tcp:0:interface=127.0.0.3",
                "--health-interval",
                "0.2",
                "--health-send",
                "PING\\n",
                "--health-expect",
                "PONG",
            ],
            tmp_path,
        ) as gateway,
    ):
        admin = admin_url(gateway)

        def down() -> bool:
            status = json.loads(urllib.request.urlopen(admin + "/status.json", timeout=10).read())
            return bool(status["backends"][0]["state"] == "down")

        wait_for(down, "the backend to be down")

        page = render(admin + "/", tmp_path / "profile")

        [row] = page.rows["backends"]
        assert row[2] == "down"
        assert row[7] == (
            'health check failed 3 times: connection closed before "PONG" arrived'
            ' (received 9 bytes: "ERR busy\\n")'
        )


def test_dashboard_fits_a_phone(tmp_path: Path, browser: Browser) -> None:
    """
    On a phone-sized screen (375 CSS pixels wide), with backends, sessions
    and refusals listed, nothing is wider than the screen: the page does not
    scroll sideways and no element reaches past its right edge.
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
                "--max-per-ip",
                "3",
                "--health-interval",
                "0",
            ],
            tmp_path,
        ) as gateway,
    ):
        sessions = []
        for number in range(3):
            game = connect(gateway.port)
            game.sendall(b"%d\n" % number)
            assert recv_exactly(game, 2) == b"%d\n" % number
            sessions.append(game)
        refused(gateway.port)

        browser.open(admin_url(gateway) + "/")
        # A page's metrics, so after it is open (the layout follows at once).
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 375, "height": 740, "deviceScaleFactor": 2, "mobile": True},
        )
        rows = "document.querySelectorAll('#sessions tbody tr').length"
        wait_for(lambda: browser.evaluate(rows) == 3, "the sessions to be listed")
        # A phone widens its layout viewport to fit a page that is too wide.
        assert browser.evaluate("window.innerWidth") == 375
        assert browser.evaluate("document.documentElement.scrollWidth") <= 375
        too_wide = browser.evaluate(
            "[...document.body.querySelectorAll('*')]"
            ".filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)"
            ".map((e) => e.tagName + (e.id ? '#' + e.id : ''))"
        )
        assert too_wide == []
        # Still readable there: each cell says which column it is.
        cells = "[...document.querySelectorAll('#refusals td')].map((c) => c.textContent)"
        assert browser.evaluate(cells) == ["address-cap", "1"]
        label = "document.querySelector('#backends tbody tr:nth-child(2) td').dataset.label"
        assert browser.evaluate(label) == "name"
        for game in sessions:
            game.close()


def test_startup_log_links_the_dashboard(tmp_path: Path) -> None:
    """
    Once the admin endpoint listens, the log gives the dashboard's URL on a
    line of its own, and a browser opening it gets the dashboard.
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(
            ["--backend", backend.endpoint, "--admin", "tcp:0:interface=127.0.0.3"], tmp_path
        ) as gateway,
    ):
        admin = admin_url(gateway)
        found: list[str] = []

        def logged() -> bool:
            found[:] = re.findall(r"dashboard: (\S+)", gateway.log())
            return bool(found)

        wait_for(logged, "the dashboard's URL in the log")
        assert found == [admin + "/"]

        page = render(found[0], tmp_path / "profile")

        assert page.by_id["host"] == socket.gethostname()
        assert page.by_id.get("error", "") == ""


def test_demo_page_links_the_dashboard(tmp_path: Path, browser: Browser) -> None:
    """
    The demo page links to the dashboard at the default admin endpoint
    (the demo is what a newcomer runs, with the default --admin).
    """
    port = re.fullmatch(r"tcp:(\d+):interface=([\d.]+)", DEFAULT_ADMIN)
    assert port is not None
    with GatewayProcess(["--demo"], tmp_path, host="127.0.0.2") as gateway:
        browser.open(f"http://127.0.0.2:{gateway.port}/")
        href = browser.evaluate("document.getElementById('dashboard-link').href")
        assert href == f"http://{port[2]}:{port[1]}/"
