"""
A real C{redis-server} for the cluster tests, started and stopped by its PID.

L{RedisServer} runs Debian's C{redis-server} on 127.0.0.1 with an ephemeral
port, no persistence (C{--save ""}, C{--appendonly no}) and its files in the
test's tmp dir; optionally also on a UNIX socket, with a password
(C{requirepass}), an ACL user, or TLS only (a PKI made with the openssl
command line, L{tests.pki.make_pki}).  It can be stopped and started again on
the same port (Redis going away and coming back) or killed with SIGKILL.

Redis has no C{--port 0}: a free port is found by binding one, then Redis is
started on it; if another process took the port in between (Redis exits with
"Address already in use"), another port is tried.

Two ways to talk to it: L{RedisServer.command} over a small synchronous RESP2
client (typed replies, error replies raised as L{RedisError}), and
L{RedisServer.cli} through C{redis-cli} (its text output; C{redis-cli} exits 0
on an error reply, so prefer L{RedisServer.command} to check one).

The C{redis_server} fixture (tests/conftest.py) is one with no password;
tests that need options make their own C{RedisServer(tmp_path, ...)}.
Without C{redis-server} they skip, unless C{GATEWAY_REQUIRE_REDIS=1} (CI sets
it: there they fail).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

import pytest

from tests.pki import Pki, make_pki
from tests.support import DEADLINE, listening_ports

__all__ = [
    "REDIS_CLI",
    "REDIS_SERVER",
    "RedisConnection",
    "RedisError",
    "RedisServer",
    "Reply",
    "free_port",
    "require_redis",
]

REDIS_SERVER = shutil.which("redis-server")
"""The C{redis-server} program, or C{None} where it is not installed."""

REDIS_CLI = shutil.which("redis-cli")
"""The C{redis-cli} program (Debian's redis-tools, which redis-server depends on)."""

REQUIRED = os.environ.get("GATEWAY_REQUIRE_REDIS") == "1"
"""Whether a missing C{redis-server} fails the tests rather than skips them (CI)."""

Reply: TypeAlias = "None | int | bytes | list[Reply]"
"""A RESP2 reply: nil, an integer, a string (status or bulk) or an array."""

_START_ATTEMPTS = 20
"""How many fresh ports L{RedisServer.start} tries before giving up."""

_SOCKET_PATH_MAX = 100
"""Longest UNIX socket path used as is (the kernel's limit is 107 bytes)."""


def require_redis() -> None:
    """
    Skip the calling test when C{redis-server} is missing, or fail it when
    C{GATEWAY_REQUIRE_REDIS=1}.
    """
    if REDIS_SERVER is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if REQUIRED:
            pytest.fail(f"{message}; it is required here (GATEWAY_REQUIRE_REDIS=1)")
        pytest.skip(message)


def free_port() -> int:
    """
    A loopback TCP port nothing listens on at the moment of the call (the
    kernel's choice for port 0).  Someone may take it before it is used:
    L{RedisServer.start} retries with another.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisError(Exception):
    """
    Redis answered with an error reply (the message, as C{"NOAUTH ..."}).
    """


class RedisConnection:
    """
    A blocking RESP2 connection to a Redis server (test code: one command at a
    time, every read bounded by L{tests.support.DEADLINE}).
    """

    def __init__(self, sock: socket.socket) -> None:
        """
        @param sock: a connected socket (plain, UNIX or TLS).
        """
        self.sock = sock
        self._buffer = b""

    def send(self, *args: str | bytes | int) -> None:
        """
        Send one command (an array of bulk strings) without reading its reply.
        """
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        wire = [b"*%d\r\n" % len(parts)]
        for part in parts:
            wire.append(b"$%d\r\n%s\r\n" % (len(part), part))
        self.sock.sendall(b"".join(wire))

    def command(self, *args: str | bytes | int) -> Reply:
        """
        Send a command and read its reply.

        @raise RedisError: Redis answered with an error.
        """
        self.send(*args)
        return self.read_reply()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        self._buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count + 2:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count + 2 :]
        return data

    def read_reply(self) -> Reply:
        """
        Read one reply (also a pushed pub/sub message after C{SUBSCRIBE}).

        @raise RedisError: it is an error reply.
        """
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self._exactly(int(rest))
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read_reply() for _ in range(count)]
        raise ConnectionError(f"not a RESP2 reply: {line!r}")

    def close(self) -> None:
        """
        Close the connection.
        """
        self.sock.close()

    def __enter__(self) -> RedisConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer:
    """
    A C{redis-server} process on 127.0.0.1 (and optionally a UNIX socket), in
    its own folder under the test's tmp dir.  Use as a context manager: on
    exit it is stopped by its PID.

    @ivar port: its TCP port (the TLS port with C{tls}); kept across
        L{stop}/L{start}, so L{url} stays valid.
    @ivar password: the default user's password (C{requirepass}), or C{None}.
    @ivar user: an extra ACL user C{(name, password)} allowed everything, or C{None}.
    @ivar pki: with TLS, the PKI whose root signs the server's certificate
        (for C{localhost}); clients trust C{pki.root}.
    @ivar folder: its working folder (C{--dir}, its log, its socket).
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        password: str | None = None,
        user: tuple[str, str] | None = None,
        unix: bool = False,
        tls: bool = False,
        ports: Callable[[], int] = free_port,
    ) -> None:
        """
        @param tmp_path: the test's tmp dir; the server gets a fresh folder in it.
        @param password: set C{requirepass}.
        @param user: add an ACL user C{(name, password)} with C{~* &* +@all}.
        @param unix: listen on a UNIX socket too (L{unix_url}, L{socket_path}).
        @param tls: serve TLS only on L{port} (C{rediss://localhost:PORT}).
        @param ports: where fresh ports come from (tests of the retry replace it).
        """
        require_redis()
        self.folder = Path(tempfile.mkdtemp(prefix="redis-", dir=tmp_path))
        self.password = password
        self.user = user
        self.tls = tls
        self.pki: Pki | None = make_pki(self.folder / "pki") if tls else None
        self._ports = ports
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._short_folder: Path | None = None
        self.socket_path: Path | None = None
        if unix:
            self.socket_path = self.folder / "redis.sock"
            if len(str(self.socket_path)) > _SOCKET_PATH_MAX:
                # A long test name makes a tmp path the kernel refuses for a socket.
                self._short_folder = Path(tempfile.mkdtemp(prefix="gw-redis-"))
                self.socket_path = self._short_folder / "redis.sock"

    @property
    def host(self) -> str:
        """
        The host name clients use: C{localhost} with TLS (the certificate's
        name; it resolves to 127.0.0.1 here), else C{127.0.0.1}.
        """
        return "localhost" if self.tls else "127.0.0.1"

    @property
    def url(self) -> str:
        """
        C{redis://[:PASSWORD@]127.0.0.1:PORT/0}, or C{rediss://...localhost...} with TLS.
        """
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password is not None else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """
        C{unix://[:PASSWORD@]/path/redis.sock?db=0} (redis-py's form).
        """
        assert self.socket_path is not None, "started without unix=True"
        auth = f":{self.password}@" if self.password is not None else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    @property
    def pid(self) -> int:
        """
        The running server's process ID.
        """
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        """
        Whether the server process is alive.
        """
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """
        Redis's log so far (across restarts).
        """
        try:
            return (self.folder / "redis.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _argv(self, port: int) -> list[str]:
        assert REDIS_SERVER is not None
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")]
        argv += ["--daemonize", "no", "--pidfile", ""]
        if self.pki is not None:
            chain = self.folder / "chain.pem"
            chain.write_bytes(self.pki.bundle("leaf", "intermediate"))
            argv += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(chain)]
            argv += ["--tls-key-file", str(self.pki.leaf_key)]
            argv += ["--tls-ca-cert-file", str(self.pki.root), "--tls-auth-clients", "no"]
        else:
            argv += ["--port", str(port)]
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        if self.user is not None:
            name, password = self.user
            argv += ["--user", name, "on", f">{password}", "~*", "&*", "+@all"]
        return argv

    def _spawn(self, port: int) -> bool:
        """
        Start C{redis-server} on C{port} and wait until it answers PING.

        @return: C{False} if it could not bind the port (it has exited).
        @raise AssertionError: it exited for another reason, or never answered.
        """
        log_size = len(self.log())
        self.port = port
        self.process = subprocess.Popen(
            self._argv(port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + DEADLINE
        while True:
            if self.process.poll() is not None:
                news = self.log()[log_size:]
                if "Address already in use" in news:
                    return False
                raise AssertionError(f"redis-server exited ({self.process.returncode}):\n{news}")
            if self._answers(port):
                return True
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"redis-server did not answer PING within {DEADLINE} s")
            time.sleep(0.01)

    def _answers(self, port: int) -> bool:
        """
        Whether this process listens on C{port} and answers PING there.

        @raise AssertionError: it answered with an error (say, a bad AUTH).
        """
        assert self.process is not None
        # Only once this process listens (read from /proc, by its PID): a
        # PING sooner might reach whoever else holds the port.
        try:
            if port not in listening_ports(self.process.pid).get("127.0.0.1", []):
                return False
        except OSError:
            return False  # it has just exited: the caller's poll() says why
        try:
            with self.connect() as connection:
                connection.command("PING")
        except (ConnectionError, ssl.SSLError):
            return False  # listening, not serving yet
        except RedisError as e:
            self.kill()
            raise AssertionError(f"redis-server refused PING: {e}\n{self.log()}") from e
        return True

    def start(self) -> None:
        """
        Start the server: on a fresh port the first time, retrying with
        another when one is taken; afterwards on the same port, waiting (up
        to L{tests.support.DEADLINE}) while it is still in use.
        """
        assert not self.running, "already running"
        if self.port:
            deadline = time.monotonic() + DEADLINE
            while not self._spawn(self.port):
                if time.monotonic() > deadline:
                    raise AssertionError(f"port {self.port} stayed in use")
                time.sleep(0.05)
            return
        for _ in range(_START_ATTEMPTS):
            if self._spawn(self._ports()):
                return
        raise AssertionError(f"no free port after {_START_ATTEMPTS} attempts:\n{self.log()}")

    def stop(self) -> int:
        """
        Stop the server by its PID: SIGTERM (Redis shuts down cleanly; nothing
        is saved), then SIGKILL after a grace time.

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
        return self.process.returncode

    def kill(self) -> int:
        """
        Kill the server with SIGKILL by its PID (a crash: no clean shutdown).

        @return: its exit status (C{-9}).
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        return self.process.wait(timeout=10)

    def connect(self, auth: bool = True, unix: bool = False) -> RedisConnection:
        """
        A blocking connection to the server, authenticated (as L{user} if set,
        else with L{password}) unless C{auth} is false.

        @param unix: over the UNIX socket rather than TCP.
        @raise RedisError: authentication was refused.
        """
        sock: socket.socket
        if unix:
            assert self.socket_path is not None, "started without unix=True"
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(DEADLINE)
            try:
                sock.connect(str(self.socket_path))
            except OSError as e:
                sock.close()
                raise ConnectionError(str(e)) from e
        else:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE)
        if self.pki is not None and not unix:
            context = ssl.create_default_context(cafile=str(self.pki.root))
            sock = context.wrap_socket(sock, server_hostname="localhost")
        connection = RedisConnection(sock)
        try:
            if auth and self.user is not None:
                connection.command("AUTH", *self.user)
            elif auth and self.password is not None:
                connection.command("AUTH", self.password)
        except BaseException:
            connection.close()
            raise
        return connection

    def command(self, *args: str | bytes | int, auth: bool = True) -> Reply:
        """
        Run one command on a fresh connection (see L{connect}) and return its
        reply: C{b"OK"}, C{b"value"}, C{None}, an C{int} or a list.

        @raise RedisError: Redis answered with an error.
        """
        with self.connect(auth=auth) as connection:
            return connection.command(*args)

    def cli(self, *args: str, unix: bool = False) -> str:
        """
        Run C{redis-cli} against the server (authenticated like L{connect})
        and return its output without the final newline.
        """
        assert REDIS_CLI is not None, "redis-cli is missing (Debian: redis-tools)"
        argv = [REDIS_CLI, "--no-auth-warning"]
        if unix:
            assert self.socket_path is not None, "started without unix=True"
            argv += ["-s", str(self.socket_path)]
        else:
            argv += ["-h", self.host, "-p", str(self.port)]
        if self.pki is not None and not unix:
            argv += ["--tls", "--cacert", str(self.pki.root)]
        if self.user is not None:
            argv += ["--user", self.user[0], "--pass", self.user[1]]
        elif self.password is not None:
            argv += ["-a", self.password]
        done = subprocess.run(
            [*argv, *args], capture_output=True, check=True, timeout=DEADLINE, text=True
        )
        return done.stdout.removesuffix("\n")

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.stop()
        if self._short_folder is not None:
            shutil.rmtree(self._short_folder, ignore_errors=True)
