"""
End-to-end tests of routes to files and WebSocket bridges, and of named
pools, through a real C{twistd -n gateway --config FILE}.
"""

from __future__ import annotations

import http.client
import json
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    connect,
    echo,
    recv_until_eof,
    wait_for,
)
from tests.test_e2e_websocket import open_ws, receive_bytes

# Every test with the lean static path on and off (conftest.http_path).
pytestmark = pytest.mark.usefixtures("http_path")

ADMIN = ["--admin", "tcp:0:interface=127.0.0.3"]


def recording_echo(sock: Any, backend: Backend) -> None:
    """
    Send back everything received, and keep it.
    """
    received = b""
    while data := sock.recv(1 << 16):
        received += data
        sock.sendall(data)
    backend.record(received)


def get(
    gateway: GatewayProcess, path: str, host: str = "localhost", method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """
    One request through the gateway with the given Host header: status,
    headers (lower-case names) and body.
    """
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=DEADLINE)
    try:
        connection.putrequest(method, path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def folders(tmp_path: Path) -> dict[str, Path]:
    """
    Three folders of files, each saying whose it is.
    """
    made = {}
    for name in ("main", "assets", "site-a"):
        folder = tmp_path / name
        (folder / "sub").mkdir(parents=True)
        (folder / "index.html").write_text(f"{name} index\n")
        (folder / "sub" / "f.txt").write_text(f"{name} f\n")
        made[name] = folder
    return made


def test_files_routed_by_host_and_path(tmp_path: Path) -> None:
    """
    Requests reach the folder of their route: by host (exact before a
    wildcard, both before host-less routes), then by the longest path
    prefix, the route's prefix being the folder's root; --http-root serves
    the rest; a path with dot segments is refused; access lines name the route.
    """
    made = folders(tmp_path)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
http-root = "{made["main"]}"
health-interval = 0
access-log = "{tmp_path / "access.jsonl"}"
[[backend]]
endpoint = "tcp:127.0.0.1:1"
[[route]]
name = "assets"
path = "/assets"
root = "{made["assets"]}"
[[route]]
host = "*.example.com"
root = "{made["site-a"]}"
[[route]]
name = "exact"
host = "www.example.com"
path = "/sub"
root = "{made["assets"]}"
"""
    )
    with GatewayProcess(["--config", str(config)], tmp_path) as gateway:
        assert get(gateway, "/")[2] == b"main index\n"
        assert get(gateway, "/sub/f.txt")[2] == b"main f\n"
        assert get(gateway, "/assets/sub/f.txt")[2] == b"assets f\n"
        assert get(gateway, "/assets/")[2] == b"assets index\n"
        status, headers, _ = get(gateway, "/assets")
        assert status in (301, 302) and headers["location"].endswith("/assets/")
        assert get(gateway, "/assetsx")[0] == 404
        assert get(gateway, "//assets//sub/f.txt")[2] == b"assets f\n"
        assert get(gateway, "/sub/f.txt", host="a.example.com")[2] == b"site-a f\n"
        assert get(gateway, "/sub/f.txt", host="A.Example.com:80")[2] == b"site-a f\n"
        # The host's route wins over a longer host-less one: site-a has no assets/.
        assert get(gateway, "/assets/index.html", host="a.example.com")[0] == 404
        assert get(gateway, "/sub/sub/f.txt", host="www.example.com")[2] == b"assets f\n"
        assert get(gateway, "/index.html", host="www.example.com")[2] == b"site-a index\n"
        assert get(gateway, "/", host="example.com")[2] == b"main index\n"
        assert get(gateway, "/assets/../sub/f.txt")[0] == 400
        assert get(gateway, "/x/%2e%2e/assets/index.html")[0] == 400
        wait_for(lambda: (tmp_path / "access.jsonl").exists(), "the access log")
        lines = [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]
        routes = {line["path"]: line.get("route") for line in lines}
        assert routes["/assets/sub/f.txt"] == "assets"
        assert routes["/"] is None


def status_of(gateway: GatewayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(admin_url(gateway) + "/status.json", timeout=DEADLINE) as reply:
        document: dict[str, Any] = json.load(reply)
    return document


def test_bridge_to_a_named_pool(tmp_path: Path) -> None:
    """
    A bridge route reaches its own pool's backends, not the game pool's;
    status.json and the metrics name each backend's pool; the pool's PROXY
    setting is its own.
    """
    with Backend(recording_echo) as game, Backend(recording_echo) as eu:
        config = tmp_path / "gateway.toml"
        config.write_text(
            f"""
health-interval = 0
[pool.eu]
health-interval = 0
[[backend]]
name = "g1"
endpoint = "{game.endpoint}"
[[backend]]
name = "eu-1"
pool = "eu"
endpoint = "{eu.endpoint}"
[[route]]
path = "/play-eu"
bridge = "eu"
"""
        )
        with GatewayProcess(ADMIN + ["--config", str(config)], tmp_path) as gateway:
            with open_ws(gateway, "/play-eu") as ws:
                ws.send(b"hello eu")
                assert receive_bytes(ws, 8) == b"hello eu"
                document = status_of(gateway)
                pools = {b["name"]: (b["pool"], b["active"]) for b in document["backends"]}
                assert pools == {"g1": ("game", 0), "eu-1": ("eu", 1)}
                assert [s["backend"] for s in document["sessions"]] == ["eu-1"]
            wait_for(lambda: eu.received == [b"hello eu"], "the eu backend's bytes")
            assert game.received == []
            url = admin_url(gateway) + "/metrics"
            with urllib.request.urlopen(url, timeout=DEADLINE) as reply:
                text = reply.read().decode()
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            assert samples[
                ("gateway_backend_sessions_total", (("backend", "eu-1"), ("pool", "eu")))
            ]
            assert (
                samples[("gateway_backend_sessions_total", (("backend", "g1"), ("pool", "game")))]
                == 0
            )


def test_route_rate_per_ip(tmp_path: Path) -> None:
    """
    A route's rate-per-ip refuses the requests over it with 429 and
    Retry-After (counted as route-rate); other routes are not limited.
    """
    made = folders(tmp_path)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
http-root = "{made["main"]}"
health-interval = 0
[[backend]]
endpoint = "tcp:127.0.0.1:1"
[[route]]
path = "/assets"
root = "{made["assets"]}"
rate-per-ip = 0.1
rate-burst = 3
"""
    )
    with GatewayProcess(ADMIN + ["--config", str(config)], tmp_path) as gateway:
        codes = [get(gateway, "/assets/index.html")[0] for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        status, headers, _ = get(gateway, "/assets/index.html")
        assert status == 429 and int(headers["retry-after"]) >= 1
        with connect(gateway.port) as sock:
            sock.sendall(
                b"GET /assets/index.html HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            assert recv_until_eof(sock).startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert [get(gateway, "/index.html")[0] for _ in range(5)] == [200] * 5
        assert status_of(gateway)["counters"]["refused"]["route-rate"] == 4


def test_sighup_adds_a_pool_and_a_route(tmp_path: Path) -> None:
    """
    A reload adds a named pool and a bridge route to it, while a session to
    the game pool goes on; removing them again drains the pool's backend,
    and the pool leaves with it.
    """
    with Backend(echo) as game, Backend(echo) as eu:
        config = tmp_path / "gateway.toml"
        base = 'health-interval = 0\nwebsocket = ["/play"]\n'
        base += f'[[backend]]\nname = "g1"\nendpoint = "{game.endpoint}"\n'
        added = (
            f'[pool.eu]\n[[backend]]\nname = "eu-1"\npool = "eu"\nendpoint = "{eu.endpoint}"\n'
            '[[route]]\npath = "/play-eu"\nbridge = "eu"\n'
        )
        config.write_text(base)
        with GatewayProcess(ADMIN + ["--config", str(config)], tmp_path) as gateway:
            assert gateway.process is not None
            with open_ws(gateway, "/play") as kept:
                config.write_text(base + added)
                gateway.process.send_signal(signal.SIGHUP)
                wait_for(lambda: "pool eu added" in gateway.log(), "the reload")
                with open_ws(gateway, "/play-eu") as ws:
                    ws.send(b"eu!")
                    assert receive_bytes(ws, 3) == b"eu!"
                    config.write_text(base)
                    gateway.process.send_signal(signal.SIGHUP)
                    wait_for(lambda: "pool eu removed" in gateway.log(), "the second reload")
                    ws.send(b"still")
                    assert receive_bytes(ws, 5) == b"still"
                    backends = {b["name"]: b["state"] for b in status_of(gateway)["backends"]}
                    assert backends == {"g1": "up", "eu-1": "draining"}
                wait_for(
                    lambda: [b["name"] for b in status_of(gateway)["backends"]] == ["g1"],
                    "the eu pool to leave",
                )
                kept.send(b"kept")
                assert receive_bytes(kept, 4) == b"kept"
