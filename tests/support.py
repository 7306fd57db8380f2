"""
Helpers for the end-to-end tests: a real C{twistd -n gateway} subprocess and
small threaded backends, all on loopback with ephemeral ports.

The gateway is started the way users start it (C{twistd -n gateway ...} from the
venv that runs the tests), on C{tcp:0}; its real port is read back from
C{/proc} (the listening sockets the process owns), never from its log text.
Every process started here is stopped by its PID.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar

__all__ = [
    "FullDisk",
    "HEADLESS_CHROMIUM",
    "Backend",
    "admin_url",
    "GatewayProcess",
    "closed_port",
    "connect",
    "listening_ports",
    "recv_exactly",
    "recv_until_eof",
    "rss_kib",
    "wait_for",
]

TWISTD = str(Path(sys.executable).with_name("twistd"))
"""The twistd of the venv that runs the tests (so the plugin under test is found)."""

HEADLESS_CHROMIUM = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Chromium's flags for the browser tests: headless, as root, and quiet on a
machine with no network (no background fetches, updates or sync)."""

DEADLINE = 20.0
"""Seconds any single wait in these helpers may take before the test fails."""


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """
    Poll C{predicate} until it is true.

    @raise AssertionError: it stayed false for C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_ports(pid: int) -> dict[str, list[int]]:
    """
    The TCP ports process C{pid} listens on.

    @return: C{{"127.0.0.1": [port, ...], "::1": [...], ...}}: local address
        to ports (IPv4 and IPv6).
    """
    inodes = _socket_inodes(pid)
    found: dict[str, list[int]] = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(path) as table:
            next(table)
            for line in table:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                hex_host, hex_port = local.split(":")
                raw = bytes.fromhex(hex_host)
                # /proc prints each 32-bit word in host (little-endian) order.
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                host = socket.inet_ntop(family, packed)
                found.setdefault(host, []).append(int(hex_port, 16))
    return found


def rss_kib(pid: int) -> int:
    """
    The resident set size of process C{pid}, in KiB.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class GatewayProcess:
    """
    A C{twistd -n gateway} subprocess listening on an ephemeral port.

    Use as a context manager; on exit it is stopped with SIGTERM (then
    SIGKILL) by its PID, and its log stays readable in L{log}.

    @ivar port: the public front's port on C{host}.
    @cvar extra_args: options every gateway started gets (the
        C{http_path} fixture's C{--no-http-fast-path}).
    """

    extra_args: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        args: list[str],
        tmp_path: Path,
        host: str = "127.0.0.1",
        reactor: str | None = None,
        twistd_args: Sequence[str] = (),
    ) -> None:
        """
        @param args: the gateway's options; C{--listen tcp:0:interface=HOST}
            is added unless C{args} has a C{--listen}, and C{--admin none}
            unless it has an C{--admin}.
        @param tmp_path: where the log goes.
        @param host: the front's address when C{--listen} is added here.
        @param reactor: twistd's C{-r} (C{uvloop}, C{asyncio}), if not the default.
        @param twistd_args: more of twistd's own options (C{-u}, C{-g}).
        """
        self.host = host
        self.log_path = tmp_path / "gateway.log"
        if not any(a == "--listen" or a.startswith("--listen=") for a in args):
            args = ["--listen", f"tcp:0:interface={host}", *args]
        if not any(a == "--admin" or a.startswith("--admin=") for a in args):
            # Not the default tcp:9090: tests run many gateways.
            args = ["--admin", "none", *args]
        self.argv = [TWISTD, "-n", "--pidfile=", "--logfile", str(self.log_path)]
        self.argv += ["-r", reactor] if reactor is not None else []
        self.argv += [*twistd_args, "gateway"]
        self.argv += [*args, *GatewayProcess.extra_args]
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> GatewayProcess:
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        pid = self.process.pid

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"gateway exited early: {self.stderr()}\n{self.log()}")
            return self.host in listening_ports(pid)

        try:
            wait_for(listening, "the gateway to listen")
        except BaseException:
            # __exit__ does not run when __enter__ fails: stop it here, or a
            # gateway that never listens (say, one that hangs) outlives the test.
            self.stop()
            raise
        ports = listening_ports(pid)[self.host]
        # The demo's game servers listen on 127.0.0.1 too: a test of --demo
        # puts its front on another loopback address (host="127.0.0.2").
        assert len(ports) == 1, f"several ports on {self.host}: {ports}; use another host"
        self.port = ports[0]
        return self

    @property
    def pid(self) -> int:
        """
        The gateway's process ID.
        """
        assert self.process is not None
        return self.process.pid

    def stderr(self) -> str:
        """
        What the process wrote to standard error (only once it has exited).
        """
        assert self.process is not None and self.process.stderr is not None
        if self.process.poll() is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")

    def log(self) -> str:
        """
        The gateway's log so far.
        """
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        """
        Stop the gateway by its PID (SIGTERM, then SIGKILL after a grace time).

        @return: its exit status.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def admin_url(gateway: GatewayProcess, host: str = "127.0.0.3") -> str:
    """
    The base URL of a gateway's admin endpoint on C{host} (started with
    C{--admin tcp:0:interface=HOST}), once it listens.
    """
    wait_for(lambda: host in listening_ports(gateway.pid), "the admin endpoint")
    return f"http://{host}:{listening_ports(gateway.pid)[host][0]}"


def connect(port: int, host: str = "127.0.0.1", timeout: float = DEADLINE) -> socket.socket:
    """
    A blocking client socket connected to C{host:port}, with a timeout on every operation.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    """
    Read exactly C{count} bytes.

    @raise AssertionError: the stream ended first.
    """
    chunks = []
    while count:
        chunk = sock.recv(min(count, 1 << 20))
        if not chunk:
            raise AssertionError(f"stream ended {count} bytes early")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket) -> bytes:
    """
    Read until the peer ends the stream.
    """
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def closed_port() -> int:
    """
    A loopback port with nothing listening on it (connections are refused).

    The socket stays bound (never listening) for the life of the process, so
    no other test can take the port meanwhile.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _keep_bound.append(sock)
    return int(sock.getsockname()[1])


_keep_bound: list[socket.socket] = []


Handler = Callable[[socket.socket, "Backend"], None]


class _BacklogServer(socketserver.ThreadingTCPServer):
    """
    A threaded TCP server with a real server's listen backlog.  The standard
    library's default (5) is a backend that cannot keep up: when the gateway
    connects hundreds of sessions at once, the kernel drops the handshakes
    that overflow it, and those sessions wait seconds for the kernel's
    retransmissions before the backend sees their bytes.
    """

    request_queue_size = 1024


class Backend:
    """
    A threaded TCP server on an ephemeral loopback port; each connection runs
    C{handler(sock, backend)} in its own thread.

    @ivar port: its port.
    @ivar connections: how many connections it accepted.
    @ivar received: per connection, what a recording handler stored.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.received: list[bytes] = []
        self.digests: list[str] = []
        self._lock = threading.Lock()
        backend = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with backend._lock:
                    backend.connections += 1
                sock = self.request
                assert isinstance(sock, socket.socket)
                sock.settimeout(DEADLINE)
                try:
                    backend.handler(sock, backend)
                except OSError:
                    pass

        self._server = _BacklogServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """
        Its client endpoint string, for C{--backend}.
        """
        return f"tcp:127.0.0.1:{self.port}"

    def record(self, data: bytes) -> None:
        """
        Keep what one connection received (thread-safe).
        """
        with self._lock:
            self.received.append(data)

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def echo(sock: socket.socket, backend: Backend) -> None:
    """
    Send back everything received; on end of stream, close.
    """
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def banner_then_echo(sock: socket.socket, backend: Backend) -> None:
    """
    Speak first (a banner naming the port), then echo.
    """
    sock.sendall(f"HELLO from {backend.port}\r\n".encode())
    echo(sock, backend)


def sink(sock: socket.socket, backend: Backend) -> None:
    """
    Read to the end of stream, then answer with the byte count and the SHA-256
    of what was read, and record it.
    """
    digest = hashlib.sha256()
    count = 0
    while data := sock.recv(1 << 20):
        digest.update(data)
        count += len(data)
    sock.sendall(f"{count} {digest.hexdigest()}\n".encode())
    with backend._lock:
        backend.digests.append(digest.hexdigest())


def pattern(size: int, seed: int = 0) -> bytes:
    """
    C{size} pseudo-random bytes, so that a lost, duplicated or reordered block
    changes the digest.
    """
    return random.Random(seed).randbytes(size)


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    """
    C{data} in pieces of C{size} bytes.
    """
    for start in range(0, len(data), size):
        yield data[start : start + size]


def start_gateway(
    tmp_path: Path, *args: str, logfile: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd -n gateway} with C{args} (no admin endpoint, a front on
    an ephemeral loopback port) to its end: for a start expected to stop
    (exit status 2 and one line on standard error).

    @param logfile: twistd's log file; by default its standard output.
    """
    log = ("--logfile", str(logfile)) if logfile is not None else ()
    return subprocess.run(
        [
            *(TWISTD, "-n", "--pidfile=", *log, "gateway"),
            *("--admin", "none", "--listen", "tcp:0:interface=127.0.0.1", *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


class FullDisk(io.StringIO):
    """
    A text stream that fails like a full disk until told otherwise
    (C{full = False}): for the access log's and twistd's log's handling of
    a write that fails.
    """

    full = True

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        return super().write(text)
