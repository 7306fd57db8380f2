"""
The demo page's Hi-Lo client (C{gateway/demo/site/play.js}) in a real headless
browser: a person opens the page of C{twistd -n gateway --demo}, types a name
and a guess, and plays in the same game as a player on raw TCP (C{nc}).

The browser is driven through the DevTools protocol (L{tests.cdp}): lines are
typed and sent with Enter as key events, and the page's output is read from its
DOM.  CI installs chromium and sets C{GATEWAY_REQUIRE_BROWSER=1}, so there
these tests fail rather than skip when the browser is missing.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo import SITE_DIR
from tests.cdp import Browser
from tests.pki import make_pki, spki_hash
from tests.support import Backend as ServerBackend
from tests.support import GatewayProcess, banner_then_echo, connect, echo, wait_for
from tests.test_dashboard_browser import BROWSER
from tests.test_e2e_tls import TLS_HOST, tls_args, tls_port

pytestmark = pytest.mark.skipif(
    BROWSER is None and os.environ.get("GATEWAY_REQUIRE_BROWSER") != "1",
    reason="no chromium (apt-get install chromium); CI installs it and requires this test",
)

HOST = "127.0.0.2"
"""The front's address: the demo's game servers listen on 127.0.0.1."""

_BANNER = re.compile(r"Welcome to Hi-Lo, the gateway demo game, on server (demo-[ab])!")

_OUTPUT = "Array.from(document.querySelectorAll('#play-output .line'), e => e.textContent)"
_PARTIAL = "document.querySelector('#play-output .partial')?.textContent ?? null"
_STATUS = "document.getElementById('play-status').textContent"


def site_args(backend: ServerBackend, *extra: str) -> list[str]:
    """
    Options of a gateway that serves the demo page's folder as its HTTP root
    in front of one backend (not the demo's game servers).
    """
    return [
        "--backend",
        backend.endpoint,
        "--http-root",
        SITE_DIR,
        "--health-interval",
        "0",
        *extra,
    ]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """
    A headless Chromium, closed (and its processes killed) after the test.
    """
    assert BROWSER is not None, "chromium is required here (GATEWAY_REQUIRE_BROWSER=1)"
    with Browser(BROWSER, tmp_path / "profile") as running:
        yield running


def page_lines(browser: Browser) -> list[str]:
    """
    The lines the page's output area shows, sent lines included.
    """
    lines: list[str] = browser.evaluate(_OUTPUT)
    return lines


def wait_for_line(browser: Browser, pattern: str) -> re.Match[str]:
    """
    Wait until a line of the page's output matches C{pattern} (from its start).

    @return: the match.
    """
    found: list[re.Match[str]] = []

    def shown() -> bool:
        found[:] = [m for line in page_lines(browser) if (m := re.match(pattern, line))]
        return bool(found)

    try:
        wait_for(shown, f"the page to show a line matching {pattern!r}")
    except AssertionError as error:
        status = browser.evaluate(_STATUS)
        raise AssertionError(f"{error}; the page ({status}) shows {page_lines(browser)}") from None
    return found[0]


class LinePlayer:
    """
    A player on raw TCP, as with C{nc}: reads the server's lines one by one.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._file = sock.makefile("rb")

    def read_line(self) -> str:
        """
        The server's next line, without its CRLF.
        """
        line = self._file.readline()
        assert line.endswith(b"\r\n"), f"stream ended mid-line or early: {line!r}"
        return line[:-2].decode()

    def read_until(self, pattern: str) -> re.Match[str]:
        """
        Read lines until one matches C{pattern}; at most 50 lines.
        """
        seen = []
        for _ in range(50):
            seen.append(self.read_line())
            if match := re.match(pattern, seen[-1]):
                return match
        raise AssertionError(f"no line matching {pattern!r} in {seen}")

    def send_line(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def close(self) -> None:
        self._file.close()
        self.sock.close()


def player_on(port: int, server: str) -> tuple[LinePlayer, list[LinePlayer]]:
    """
    Connect raw TCP players until one reaches C{server}: the demo balances
    round-robin over two servers, so the first or second one does.

    @return: that player, and the others (still connected, to be closed).
    """
    others: list[LinePlayer] = []
    for _ in range(4):
        player = LinePlayer(connect(port, HOST))
        # The gateway waits out the sniff timeout, then the server speaks first.
        match = _BANNER.fullmatch(player.read_line())
        assert match is not None
        assert player.read_line() == "What is your name?"
        if match.group(1) == server:
            return player, others
        others.append(player)
    raise AssertionError(f"4 connections, none on {server}")


def test_browser_and_terminal_players_share_a_game(tmp_path: Path, browser: Browser) -> None:
    """
    The demo page connects by itself and shows the banner; a name and a guess
    typed there (each sent with Enter) are answered by the game server, and a
    player on raw TCP on the same server sees the browser player join and
    guess, while the browser sees the TCP player's chat.  After C{quit} the
    page shows the goodbye and "disconnected", and its Connect button starts a
    new session.
    """
    with GatewayProcess(["--demo", "--sniff-timeout", "0.2"], tmp_path, host=HOST) as gateway:
        browser.open(f"http://{HOST}:{gateway.port}/")
        server = wait_for_line(browser, _BANNER.pattern).group(1)
        wait_for_line(browser, "What is your name\\?$")
        assert browser.evaluate(_STATUS) == "connected"
        nc, others = player_on(gateway.port, server)

        browser.type_line("#play-line", "ada")
        wait_for_line(browser, f"Hello ada! You are the only player on {server} so far\\.$")
        nc.send_line("bob")
        assert nc.read_until("Hello bob!").string == f"Hello bob! Also here on {server}: ada."
        wait_for_line(browser, "bob joined the lobby\\.$")

        browser.type_line("#play-line", "50")
        verdict = wait_for_line(browser, "ada guesses 50: (too low|too high|correct!)").group(1)
        assert nc.read_until("ada guesses").string.startswith(f"ada guesses 50: {verdict}")
        nc.send_line("say héllo from nc")
        wait_for_line(browser, "bob says: héllo from nc$")
        assert "> 50" in page_lines(browser)
        assert browser.evaluate("document.getElementById('play-line').value") == ""

        browser.type_line("#play-line", "quit")
        wait_for_line(browser, "Goodbye, ada! Thanks for playing\\.$")
        wait_for(lambda: browser.evaluate(_STATUS) == "disconnected", "the page to disconnect")
        nc.read_until("ada left the lobby\\.$")
        assert browser.evaluate("document.getElementById('play-line').disabled") is True

        browser.evaluate("document.getElementById('play-connect').click()")
        wait_for(lambda: browser.evaluate(_STATUS) == "connected", "the page to reconnect")
        wait_for(lambda: page_lines(browser)[-1] == "What is your name?", "a new banner")
        for player in (nc, *others):
            player.close()


def test_page_without_the_bridge_says_disconnected(tmp_path: Path, browser: Browser) -> None:
    """
    The demo page served by a gateway with no WebSocket bridge (its folder as
    --http-root, no --websocket): the page's client finds nothing at /play,
    says "disconnected", keeps its input disabled and offers to connect again.
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(site_args(backend), tmp_path) as gateway,
    ):
        browser.open(f"http://127.0.0.1:{gateway.port}/")
        wait_for(
            lambda: browser.evaluate(_STATUS).startswith("disconnected"),
            "the page to give up",
        )
        assert browser.evaluate("document.getElementById('play-line').disabled") is True
        assert browser.evaluate("document.getElementById('play-connect').hidden") is False
        assert page_lines(browser) == []
        assert backend.connections == 0


def split_character(sock: socket.socket, backend: ServerBackend) -> None:
    """
    Send the first byte of a two-byte character, then, once a line has come
    in (and been recorded), the second byte and that line back.
    """
    sock.sendall("café".encode()[:-1])
    line = b""
    while not line.endswith(b"\n"):
        data = sock.recv(1024)
        if not data:
            return
        line += data
    backend.record(line)
    sock.sendall("café".encode()[-1:] + b" and " + line[:-1] + b"\r\n")


def test_page_decodes_a_character_split_between_messages(tmp_path: Path, browser: Browser) -> None:
    """
    A character whose bytes arrive in two binary messages is shown once, whole
    (a streaming decoder; until its last byte, the line shows without it);
    a typed line reaches the backend as its UTF-8 bytes and one "\\n".
    """
    with (
        ServerBackend(split_character) as backend,
        GatewayProcess(site_args(backend, "--websocket", "/play"), tmp_path) as gateway,
    ):
        browser.open(f"http://127.0.0.1:{gateway.port}/")
        # The backend waits for the line below before it sends the rest, so the
        # character's two bytes cannot come in one message.
        wait_for(lambda: browser.evaluate(_PARTIAL) == "caf", "the line's first part")
        browser.type_line("#play-line", "naïve")
        wait_for_line(browser, "café and naïve$")
        assert backend.received == ["naïve\n".encode()]
        assert browser.evaluate(_PARTIAL) == ""
        assert "\ufffd" not in "".join(page_lines(browser))


def test_page_over_https_plays_over_wss(tmp_path: Path) -> None:
    """
    Served over https from a tls: front, the page connects with wss:// to the
    same host and port: the backend's banner shows, and a typed line comes back.
    """
    assert BROWSER is not None, "chromium is required here (GATEWAY_REQUIRE_BROWSER=1)"
    pki = make_pki(tmp_path / "pki")
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "localhost.pem").write_bytes(pki.bundle("key", "leaf", "intermediate"))
    trust = (
        f"--host-resolver-rules=MAP localhost {TLS_HOST}",
        f"--ignore-certificate-errors-spki-list={spki_hash(pki.leaf)}",
    )
    with (
        ServerBackend(banner_then_echo) as backend,
        GatewayProcess(
            tls_args(folder, backend, "--http-root", SITE_DIR, "--websocket", "/play"), tmp_path
        ) as gateway,
        Browser(BROWSER, tmp_path / "profile", *trust) as browser,
    ):
        browser.open(f"https://localhost:{tls_port(gateway)}/")
        wait_for_line(browser, f"HELLO from {backend.port}$")
        assert browser.evaluate("location.protocol") == "https:"
        browser.type_line("#play-line", "over wss")
        wait_for(lambda: page_lines(browser)[-1] == "over wss", "the echo")


def test_page_waits_in_the_queue(tmp_path: Path, browser: Browser) -> None:
    """
    With the demo's four seats taken (two servers of max-sessions 2), the
    page's player waits in the gateway's waiting room: the page says
    "waiting" and shows its place (a text message); a name typed while it
    waits is kept, and when a terminal player quits the page gets the seat,
    the banner, and the server's answer to that name.
    """
    with GatewayProcess(["--demo", "--sniff-timeout", "0.2"], tmp_path, host=HOST) as gateway:
        seated = []
        for _ in range(4):
            player = LinePlayer(connect(gateway.port, HOST))
            assert _BANNER.fullmatch(player.read_line()) is not None
            seated.append(player)
        browser.open(f"http://{HOST}:{gateway.port}/")
        wait_for_line(browser, "The game is full: you are number 1 in the queue of 1 ")
        assert browser.evaluate(_STATUS) == "waiting"
        assert not page_lines(browser)[-1].startswith("Welcome")
        browser.type_line("#play-line", "ada")
        seated[0].read_line()  # "What is your name?"
        seated[0].send_line("bob")
        seated[0].read_until("Hello bob!")
        seated[0].send_line("quit")
        seated[0].read_until("Goodbye, bob!")
        seated[0].close()  # as nc does once the server has closed
        wait_for_line(browser, _BANNER.pattern)
        wait_for_line(browser, "Hello ada!")
        assert browser.evaluate(_STATUS) == "connected"
        for player in seated:
            player.close()
