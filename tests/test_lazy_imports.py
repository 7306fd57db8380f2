"""
Start-up memory (issue 18): what a configuration does not use is not
imported.  Each test builds the gateway's service the way twistd does (the
plugin's options, then its C{makeService}) in a fresh Python process, and
reads back the names of the modules that process loaded: module names, not
RSS, which depends on the machine.  The configurations that do use a part
show that it is loaded then, so an absence means the lazy import works,
not that the probe is blind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import closed_port

_PROBE = """
import sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

[maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "gateway"]
options = maker.options()
options.parseOptions(sys.argv[1:])
maker.makeService(options)
print("\\n".join(sorted(sys.modules)))
"""

HEAVY = {
    "prometheus_client": "the /metrics exposition: only with --admin",
    "gateway.ops.admin": "the admin site: only with --admin",
    "wsproto": "WebSocket frames: only at a --websocket path's first upgrade",
    "h11": "wsproto's handshake: only at a --websocket path's first upgrade",
    "gateway.front.websocket": "the WebSocket bridge: only at its first upgrade",
    "twisted.web.client": "the proxy's HTTP client: only with a proxied route",
    "gateway.http.proxy": "the reverse proxy: only with a proxied route",
    "gateway.demo": "the demo game: only with --demo",
    "txredisapi": "the Redis client: only with --cluster",
    "hypothesis": "a test dependency: never at run time",
    "importlib.metadata": "the installed version: only for --version and /metrics",
}
"""The modules a plain configuration must not load, and why."""


def _loaded(*args: str) -> set[str]:
    """
    The modules a fresh process has loaded once the plugin's C{makeService}
    has built the service for the command line C{args}.
    """
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return set(done.stdout.split())


def _plain(*more: str) -> list[str]:
    """
    A front and a backend on loopback, no admin, no health checks, and
    C{more}.
    """
    listen = "tcp:0:interface=127.0.0.1"
    return [
        *("--listen", listen, "--backend", f"tcp:127.0.0.1:{closed_port()}"),
        *("--health-interval", "0", *more),
    ]


def test_plain_configuration_loads_no_heavy_module() -> None:
    """
    A plain TCP front with no admin, WebSocket path, proxied route, demo or
    cluster loads none of the modules that serve them.
    """
    loaded = _loaded(*_plain("--admin", "none"))
    assert {name: why for name, why in HEAVY.items() if name in loaded} == {}


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        (
            ("--admin", "tcp:port=0:interface=127.0.0.1"),
            {"prometheus_client", "gateway.ops.admin"},
        ),
        (("--admin", "none", "--demo"), {"gateway.demo"}),
        # Loaded at start, not by the first browser's request (which would
        # hold the reactor while wsproto is imported).
        (("--admin", "none", "--websocket", "/play"), {"wsproto", "gateway.front.websocket"}),
    ],
)
def test_used_part_is_loaded(more: tuple[str, ...], expected: set[str]) -> None:
    """
    A configuration that uses a part loads it when the service is built
    (the probe sees what it looks for).
    """
    assert expected <= _loaded(*_plain(*more))


def test_proxied_route_loads_the_http_client(tmp_path: Path) -> None:
    """
    A configuration file with a proxied route loads the reverse proxy and
    Twisted's HTTP client.
    """
    config = tmp_path / "gateway.toml"
    config.write_text(
        "health-interval = 0\n"
        f'[[backend]]\nendpoint = "tcp:127.0.0.1:{closed_port()}"\n'
        "[pool.api]\nhealth-interval = 0\n"
        f'[[backend]]\nname = "api-0"\npool = "api"\nendpoint = "tcp:127.0.0.1:{closed_port()}"\n'
        '[[route]]\npath = "/api"\npool = "api"\n'
    )
    loaded = _loaded("--config", str(config), "--listen", "tcp:0:interface=127.0.0.1")
    assert {"gateway.http.proxy", "twisted.web.client"} <= loaded


def test_version_loads_the_package_metadata() -> None:
    """
    The installed version is read through C{importlib.metadata}, which
    L{gateway.cli} imports only when C{package_version} is called (the
    plain start above does not load it).
    """
    probe = (
        "import sys, gateway.cli\n"
        "before = 'importlib.metadata' in sys.modules\n"
        "version = gateway.cli.package_version()\n"
        "print(before, 'importlib.metadata' in sys.modules, bool(version))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert done.stdout.split() == ["False", "True", "True"]
