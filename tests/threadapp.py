"""
Real HTTP app servers (and a WebSocket echo server) in threads, for the
end-to-end tests of proxied routes through a gateway subprocess.

An L{App} is the standard library's C{ThreadingHTTPServer} speaking
HTTP/1.1 with keep-alive on an ephemeral loopback port.  It answers every
request with JSON saying which app it is and what it received (method, path,
headers, body length), except when the query asks otherwise: C{big=N}
streams N bytes of a known pattern, C{die=N} announces N bytes, sends half
and closes, C{status=N} answers with that status, C{sleep=S} waits S seconds
first.  C{/healthz} answers 200
while the app is C{healthy}.  It counts the TCP connections it accepted.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.sync.server import Server, ServerConnection, serve

__all__ = ["App", "WebSocketEcho", "pattern"]


def pattern(size: int) -> bytes:
    """
    C{size} bytes of a pattern a client can check.
    """
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    app: App

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self.app.lock:
            self.app.connections += 1
        return sock, address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def _answer(self) -> None:
        app = self.server.app
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        query = parse_qs(urlsplit(self.path).query)
        with app.lock:
            app.requests.append((self.command, self.path))
        if "sleep" in query:
            time.sleep(float(query["sleep"][0]))
        if urlsplit(self.path).path == "/healthz":
            self._send(200 if app.healthy else 503, b"ok\n" if app.healthy else b"sick\n")
        elif "big" in query:
            self._stream(int(query["big"][0]))
        elif "die" in query:
            size = int(query["die"][0])
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.end_headers()
            self.wfile.write(pattern(size // 2))
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            document = {
                "app": app.name,
                "method": self.command,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "all_headers": [[name.lower(), value] for name, value in self.headers.items()],
                "body_length": len(body),
            }
            status = int(query["status"][0]) if "status" in query else 200
            self._send(status, json.dumps(document).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, size: int) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(size))
        self.end_headers()
        data, sent = pattern(1 << 20), 0
        while sent < size:
            piece = data[: min(len(data), size - sent)]
            self.wfile.write(piece)
            sent += len(piece)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer  # noqa: N815


class App:
    """
    One app server on 127.0.0.1 (see the module's docstring).

    @ivar connections: TCP connections accepted so far.
    @ivar requests: (method, target) of each request so far.
    @ivar healthy: whether C{/healthz} answers 200.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self.healthy = True
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.app = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def __enter__(self) -> App:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


class WebSocketEcho:
    """
    A WebSocket server (the C{websockets} library) that echoes every
    message, prefixed with what it saw of the request, in a thread.

    @ivar paths: the request paths of the connections it accepted.
    @ivar forwarded: their C{X-Forwarded-For} fields.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.forwarded: list[str | None] = []
        self._server: Server = serve(self._echo, "127.0.0.1", 0)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _echo(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        self.paths.append(request.path)
        self.forwarded.append(request.headers.get("x-forwarded-for"))
        for message in connection:
            connection.send(message)

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self._server.socket.getsockname()[1]}"

    def __enter__(self) -> WebSocketEcho:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
