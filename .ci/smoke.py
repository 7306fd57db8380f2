"""
Start the installed gateway (the venv running this script) with --demo, as a
user would, and check that its front serves the demo page and a game session.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayProcess, recv_exactly  # noqa: E402


def main() -> None:
    """
    Run the smoke test; raise on any failure.
    """
    with (
        tempfile.TemporaryDirectory() as tmp,
        GatewayProcess(
            ["--demo", "--sniff-timeout", "0.5"], Path(tmp), host="127.0.0.2"
        ) as gateway,
    ):
        page = urllib.request.urlopen(f"http://127.0.0.2:{gateway.port}/", timeout=10).read()
        assert b"Hi-Lo" in page, page[:200]
        # The page's in-browser client, a package data file like the page.
        script = urllib.request.urlopen(f"http://127.0.0.2:{gateway.port}/play.js", timeout=10)
        assert script.headers.get_content_type() == "text/javascript", script.headers
        assert b"new WebSocket(" in script.read()
        game = socket.create_connection(("127.0.0.2", gateway.port), timeout=10)
        banner = recv_exactly(game, len(b"Welcome to Hi-Lo"))
        assert banner == b"Welcome to Hi-Lo", banner
        game.close()
        print(f"smoke: installed gateway served the demo page and a game on port {gateway.port}")


if __name__ == "__main__":
    main()
