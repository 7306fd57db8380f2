"""
End-to-end tests of proxied routes: a real C{twistd -n gateway --config
FILE} in front of real app servers (L{tests.threadapp}).
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.support import (
    DEADLINE,
    GatewayProcess,
    admin_url,
    closed_port,
    connect,
    recv_until_eof,
    rss_kib,
    wait_for,
)
from tests.threadapp import App, WebSocketEcho, pattern

ADMIN = ["--admin", "tcp:0:interface=127.0.0.3"]
MIB = 1024 * 1024


def request(
    gateway: GatewayProcess,
    path: str,
    *,
    host: str = "localhost",
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """
    One request through the gateway: status, headers (lower-case) and body.
    """
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=DEADLINE)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        connection.close()


def seen(gateway: GatewayProcess, path: str, **options: Any) -> dict[str, Any]:
    """
    What the app that answered C{path} saw (its JSON answer), after a 200.
    """
    status, _, body = request(gateway, path, **options)
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def status_of(gateway: GatewayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(admin_url(gateway) + "/status.json", timeout=DEADLINE) as reply:
        document: dict[str, Any] = json.load(reply)
    return document


def pool(name: str, *apps: App | str, extra: str = "") -> str:
    """
    A [pool.NAME] table and its backends (an app, or an endpoint string).
    """
    text = f"[pool.{name}]\nhealth-interval = 0\n{extra}\n"
    for index, app in enumerate(apps):
        endpoint = app if isinstance(app, str) else app.endpoint
        text += f'[[backend]]\nname = "{name}-{index}"\npool = "{name}"\nendpoint = "{endpoint}"\n'
    return text


def config_file(tmp_path: Path, *parts: str) -> Path:
    """
    A configuration with a game backend nobody uses and the given tables.
    """
    path = tmp_path / "gateway.toml"
    head = f'health-interval = 0\n[[backend]]\nendpoint = "tcp:127.0.0.1:{closed_port()}"\n'
    path.write_text(head + "".join(parts))
    return path


def test_routing_by_host_and_path(tmp_path: Path) -> None:
    """
    Requests reach the pool of their route: the host's route before the
    longest host-less prefix; a stripped prefix is gone at the app, a kept
    one is there; the rest goes to --http-root.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("files\n")
    with App("api") as api, App("admin") as admin, App("v2") as v2:
        config = config_file(
            tmp_path,
            pool("api", api),
            pool("admin", admin),
            pool("v2", v2),
            '[[route]]\npath = "/api"\npool = "api"\nstrip-prefix = true\n',
            '[[route]]\npath = "/api/v2"\npool = "v2"\n',
            '[[route]]\nhost = "admin.example.com"\npool = "admin"\n',
        )
        with GatewayProcess(["--http-root", str(site), "--config", str(config)], tmp_path) as gw:
            answer = seen(gw, "/api/users?page=2", headers={"X-Forwarded-Prefix": "/evil"})
            assert (answer["app"], answer["path"]) == ("api", "/users?page=2")
            assert answer["headers"]["x-forwarded-prefix"] == "/api"
            assert "x-forwarded-prefix" not in seen(gw, "/api/v2/x")["headers"]
            assert seen(gw, "/api")["path"] == "/"
            answer = seen(gw, "/api/v2/scores")
            assert (answer["app"], answer["path"]) == ("v2", "/api/v2/scores")
            answer = seen(gw, "/api/v2/scores", host="admin.example.com")
            assert (answer["app"], answer["path"]) == ("admin", "/api/v2/scores")
            assert request(gw, "/index.html")[2] == b"files\n"
            assert request(gw, "/apix")[0] == 404
            answer = seen(gw, "/api/users", method="POST", body=b"x" * 100)
            assert (answer["method"], answer["body_length"]) == ("POST", 100)
            # An absolute-form target names the host (its Host field is ignored).
            with connect(gw.port) as sock:
                sock.sendall(
                    b"GET http://admin.example.com/api/v2/s HTTP/1.1\r\nHost: other\r\n"
                    b"Connection: close\r\n\r\n"
                )
                answer = json.loads(recv_until_eof(sock).partition(b"\r\n\r\n")[2])
            assert (answer["app"], answer["path"]) == ("admin", "/api/v2/s")
            assert answer["headers"]["host"] == "admin.example.com"


def test_forwarding_headers(tmp_path: Path) -> None:
    """
    The app sees who the client is (X-Forwarded-For, -Proto, -Host,
    Forwarded), never what a client wrote there, and no hop-by-hop field;
    the client's Host reaches the app.
    """
    with App("api") as api:
        config = config_file(tmp_path, pool("api", api), '[[route]]\npool = "api"\n')
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            headers = seen(
                gw,
                "/x",
                host="game.example:8080",
                headers={
                    "X-Forwarded-For": "6.6.6.6",
                    "Forwarded": "for=6.6.6.6",
                    "X-Forwarded-Host": "evil.example",
                    "Connection": "keep-alive, X-Secret",
                    "X-Secret": "hop",
                    "Proxy-Authorization": "Basic eA==",
                    "X-Kept": "yes",
                },
            )["headers"]
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-forwarded-host"] == "game.example:8080"
            assert headers["forwarded"] == 'for=127.0.0.1;proto=http;host="game.example:8080"'
            assert headers["host"] == "game.example:8080"
            assert headers["x-kept"] == "yes"
            for dropped in ("x-secret", "proxy-authorization"):
                assert dropped not in headers
            assert "6.6.6.6" not in json.dumps(headers)


def test_large_download_streams_with_bounded_memory(tmp_path: Path) -> None:
    """
    A 50 MB response reaches a client that reads slowly, whole and in
    order, while the gateway's memory stays flat (flow control holds the
    app back instead of the gateway buffering the response).
    """
    size = 50 * MIB
    with App("files") as app:
        config = config_file(tmp_path, pool("files", app), '[[route]]\npool = "files"\n')
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            seen(gw, "/warm-up")
            before = rss_kib(gw.pid)
            connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=DEADLINE)
            connection.request("GET", f"/big?big={size}")
            response = connection.getresponse()
            assert response.status == 200
            time.sleep(1.0)  # a slow reader: the gateway must not take it all meanwhile
            peak = rss_kib(gw.pid)
            expected, received = pattern(MIB), 0
            while received < size:
                piece = response.read(MIB)
                assert piece, f"cut at {received}"
                assert piece == expected[: len(piece)]  # each MiB is the pattern again
                received += len(piece)
                peak = max(peak, rss_kib(gw.pid))
            connection.close()
            assert received == size
            assert peak - before < 8 * 1024, f"the gateway grew by {peak - before} KiB"


def test_request_body_limits(tmp_path: Path) -> None:
    """
    A body over the route's max-body is refused with 413 before it is read
    (by its length, or as it arrives when chunked); one under it passes.
    """
    with App("up") as app:
        config = config_file(tmp_path, pool("up", app), '[[route]]\npool = "up"\n')
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            answer = seen(gw, "/upload", method="POST", body=b"x" * (512 * 1024))
            assert answer["body_length"] == 512 * 1024
            # Refused by its length, before any of it is sent.
            with connect(gw.port) as sock:
                sock.sendall(
                    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (10 * MIB)
                )
                assert recv_until_eof(sock).startswith(b"HTTP/1.1 413 ")
            connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=DEADLINE)
            chunks = (b"y" * 65536 for _ in range(160))  # 10 MiB, chunked
            try:
                connection.request("POST", "/upload", body=chunks, encode_chunked=True)
                assert connection.getresponse().status == 413
            except (BrokenPipeError, ConnectionResetError):
                pass  # the gateway answered and closed while the client still sent
            finally:
                connection.close()
            assert [r for r in app.requests if r[0] == "POST"] == [("POST", "/upload")]


def test_backend_dying_mid_response_cuts_the_client(tmp_path: Path) -> None:
    """
    A backend that dies mid-body: the client's response is cut short (it
    can tell), never completed as if whole.
    """
    with App("dies") as app:
        config = config_file(tmp_path, pool("dies", app), '[[route]]\npool = "dies"\n')
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=DEADLINE)
            connection.request("GET", f"/x?die={4 * MIB}")
            response = connection.getresponse()
            assert response.status == 200
            with pytest.raises(http.client.IncompleteRead):
                response.read()
            connection.close()


def test_failover_and_gateway_errors(tmp_path: Path) -> None:
    """
    A backend that refuses connections is passed over for the next one
    (every request answered); a pool with none up answers 502; a backend
    slower than the route's timeout, 504.
    """
    with App("good") as good:
        config = config_file(
            tmp_path,
            pool("mixed", f"tcp:127.0.0.1:{closed_port()}", good),
            pool("dead", f"tcp:127.0.0.1:{closed_port()}", extra="retries = 0"),
            pool("slow", good),
            '[[route]]\npath = "/mixed"\npool = "mixed"\n',
            '[[route]]\npath = "/dead"\npool = "dead"\n',
            '[[route]]\npath = "/slow"\npool = "slow"\ntimeout = 0.5\n',
        )
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            assert [request(gw, "/mixed/x")[0] for _ in range(6)] == [200] * 6
            assert request(gw, "/dead/x")[0] == 502
            status, _, body = request(gw, "/slow/x?sleep=3")
            assert status == 504, body
            assert request(gw, "/slow/x")[0] == 200


def test_keep_alive_towards_the_backend(tmp_path: Path) -> None:
    """
    Requests from many client connections, one after another, share one
    kept-alive connection to the app.
    """
    with App("api") as app:
        config = config_file(tmp_path, pool("api", app), '[[route]]\npool = "api"\n')
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            for number in range(20):
                seen(gw, f"/n/{number}")
            assert len(app.requests) == 20
            assert app.connections <= 2, f"{app.connections} connections for 20 requests"


def test_http_health_checks(tmp_path: Path) -> None:
    """
    A pool with health-path checks its backends over HTTP: a backend whose
    check fails is down (its requests go to the other), and up again once
    it passes.
    """
    with App("a") as first, App("b") as second:
        config = config_file(
            tmp_path,
            pool("api", first, second, extra='health-path = "/healthz"').replace(
                "health-interval = 0", "health-interval = 0.2", 1
            ),
            '[[route]]\npool = "api"\n',
        )
        with GatewayProcess(ADMIN + ["--config", str(config)], tmp_path) as gw:

            def states() -> dict[str, str]:
                return {b["name"]: b["state"] for b in status_of(gw)["backends"]}

            first.healthy = False
            wait_for(lambda: states()["api-0"] == "down", "the sick app to be down")
            assert "HTTP 503" in gw.log()
            assert {seen(gw, "/x")["app"] for _ in range(6)} == {"b"}
            first.healthy = True
            wait_for(lambda: states()["api-0"] == "up", "the app to be up again")


def test_websocket_pass_through(tmp_path: Path) -> None:
    """
    A WebSocket upgrade on a proxied route reaches a WebSocket server in
    the pool, which answers it (the path stripped, the client's address in
    X-Forwarded-For); messages go both ways, and the session is listed.
    """
    with WebSocketEcho() as server:
        config = config_file(
            tmp_path,
            pool("ws", server.endpoint),
            '[[route]]\npath = "/ws"\npool = "ws"\nstrip-prefix = true\n',
        )
        with GatewayProcess(ADMIN + ["--config", str(config)], tmp_path) as gw:
            url = f"ws://127.0.0.1:{gw.port}/ws/chat?room=1"
            with ws_connect(url, open_timeout=DEADLINE) as ws:
                ws.send("hello")
                assert ws.recv(timeout=DEADLINE) == "hello"
                ws.send(b"\x00\x01" * 5000)
                assert ws.recv(timeout=DEADLINE) == b"\x00\x01" * 5000
                sessions = status_of(gw)["sessions"]
                assert [(s["kind"], s["backend"]) for s in sessions] == [("websocket", "ws-0")]
            assert server.paths == ["/chat?room=1"]
            assert server.forwarded == ["127.0.0.1"]


def test_sighup_adds_a_route_and_a_pool_while_requests_flow(tmp_path: Path) -> None:
    """
    A reload adds a pool and a route to it while a client keeps sending
    requests on another route: none of them fails, and the new route works.
    """
    with App("api") as api, App("new") as new:
        config = config_file(
            tmp_path, pool("api", api), '[[route]]\npath = "/api"\npool = "api"\n'
        )
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            failures: list[str] = []
            stop = threading.Event()
            done = [0]

            def flow() -> None:
                while not stop.is_set() and done[0] < 5000:
                    try:
                        status, _, _ = request(gw, "/api/x")
                        if status != 200:
                            failures.append(str(status))
                    except OSError as error:
                        failures.append(repr(error))
                    done[0] += 1

            worker = threading.Thread(target=flow)
            worker.start()
            try:
                wait_for(lambda: done[0] > 20, "requests to flow")
                config.write_text(
                    config.read_text()
                    + pool("new", new)
                    + '[[route]]\npath = "/new"\npool = "new"\n'
                )
                assert gw.process is not None
                gw.process.send_signal(signal.SIGHUP)
                wait_for(lambda: "route /new added" in gw.log(), "the reload")
                assert seen(gw, "/new/y")["app"] == "new"
                count = done[0]
                wait_for(lambda: done[0] > count + 20, "more requests after the reload")
            finally:
                stop.set()
                worker.join(DEADLINE)
            assert failures == []


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) is not installed")
def test_ab_against_a_proxied_route_has_no_failed_request(tmp_path: Path) -> None:
    """
    ApacheBench, keep-alive, 20 at a time, 2,000 requests: none fails.
    """
    with App("api") as app:
        config = config_file(tmp_path, pool("api", app), '[[route]]\npool = "api"\n')
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            result = subprocess.run(
                [
                    "ab",
                    "-q",
                    "-k",
                    "-n",
                    "2000",
                    "-c",
                    "20",
                    "-s",
                    "20",
                    f"http://127.0.0.1:{gw.port}/x",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            assert "Failed requests:        0" in result.stdout, result.stdout
            assert "Non-2xx responses" not in result.stdout, result.stdout
            assert "Complete requests:      2000" in result.stdout


def test_behind_a_balancer_the_forwarding_fields_are_kept(tmp_path: Path) -> None:
    """
    On a haproxy: front the client's address is the PROXY header's, and the
    balancer's forwarding fields are trusted: our hop is appended to them.
    """
    with App("api") as api:
        config = config_file(tmp_path, pool("api", api), '[[route]]\npool = "api"\n')
        front = ["--listen", "haproxy:tcp:0:interface=127.0.0.1"]
        with GatewayProcess(front + ["--config", str(config)], tmp_path) as gw:
            with connect(gw.port) as sock:
                sock.sendall(
                    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
                    b"GET /x HTTP/1.1\r\nHost: game.example\r\nX-Forwarded-For: 198.51.100.1\r\n"
                    b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
                )
                answer = recv_until_eof(sock)
            headers = json.loads(answer.partition(b"\r\n\r\n")[2])["headers"]
            assert headers["x-forwarded-for"] == "198.51.100.1, 192.0.2.7"
            assert headers["x-forwarded-proto"] == "https"


def test_routes_in_worker_processes(tmp_path: Path) -> None:
    """
    With --workers 2 the workers serve proxied routes (requests spread over
    both reach the app), and the access log names the route and backend.
    """
    log = tmp_path / "access.jsonl"
    with App("api") as api:
        config = config_file(
            tmp_path, pool("api", api), '[[route]]\nname = "api"\npath = "/api"\npool = "api"\n'
        )
        args = ["--workers", "2", "--access-log", str(log), "--config", str(config)]
        with GatewayProcess(args, tmp_path) as gw:
            for number in range(10):
                assert seen(gw, f"/api/{number}")["app"] == "api"
            wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 10, "the log")
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            assert {(line["route"], line["backend"], line["status"]) for line in lines} == {
                ("api", "api-0", 200)
            }


@pytest.mark.parametrize(
    "attempt",
    [
        # Both a length and chunked (the classic CL.TE desync).
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        # Two different lengths.
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n"
        b"abcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        # A bad chunk size.
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        # A transfer coding the gateway does not know.
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ],
)
def test_request_smuggling_is_refused(tmp_path: Path, attempt: bytes) -> None:
    """
    A request whose body's end is ambiguous is refused (400 and closed);
    nothing reaches the app, and the gateway goes on serving.
    """
    with App("api") as app:
        config = config_file(tmp_path, pool("api", app), '[[route]]\npool = "api"\n')
        with GatewayProcess(["--config", str(config)], tmp_path) as gw:
            with connect(gw.port) as sock:
                sock.sendall(attempt)
                answer = recv_until_eof(sock)
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert app.requests == []
            assert seen(gw, "/after")["path"] == "/after"
            assert [target for _, target in app.requests] == ["/after"]
