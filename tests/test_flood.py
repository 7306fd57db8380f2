"""
A bounded connection flood against a real C{twistd -n gateway} subprocess.

Several client processes (the flooders) open 20,000 connections in all, as
fast as they can, from nine loopback source addresses, while long game
sessions stream through the same gateway.  The test checks that the gateway
survives it: the process stays up, the long sessions keep every byte and most
of their throughput, memory and descriptors come back to their level before
the flood, and the refusal log stays sampled (a few lines per reason and
window, not one per refusal).

The flooders run in their own interpreters (C{python -c} importing
L{flooder_main} from this module), so that their work competes with the
gateway for the CPU, as a real flood's kernel work does, but not with the
long sessions' threads for this process's GIL.  Each flooder is an asyncio
loop with a fixed number of attempts in flight, stops after its share of
attempts or L{FLOOD_TIME_LIMIT}, and prints its outcome counts as JSON.

The game backend is an echo server in its own process too (L{EchoServer}),
not the threaded C{tests.support.Backend}: that one listens with a backlog of
5 and accepts in a thread of this process, behind the long sessions' threads
for the GIL, so under the flood its accept queue overflows and some of the
gateway's backend connections wait for seconds in the backend's kernel (the
gateway then rightly keeps those sessions open), which would test the
backend rather than the gateway.

While the flood runs, probe clients (L{Probe}), each from a loopback address
the flooders do not use, check that the sniff and idle timeouts still hold
under load: a game session left silent is closed by the idle timeout on time
(L{IdleProbe}); a client silent past the sniff timeout becomes a game session
(L{SniffProbe}); an HTTP request sent a byte at a time within the sniff
timeout is answered as HTTP (L{TrickleProbe}).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import override

from tests.support import (
    GatewayProcess,
    admin_url,
    connect,
    listening_ports,
    pattern,
    recv_exactly,
    rss_kib,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
"""The project folder, where a flooder's C{python -c} finds the C{tests} package."""

MIB = 1 << 20

FLOOD_ATTEMPTS = 20_000
"""Connection attempts in all, shared among the flooders."""

FLOODERS = 4
"""Flooder processes."""

IN_FLIGHT = 96
"""Attempts each flooder keeps going at once."""

FLOOD_TIME_LIMIT = 25.0
"""Seconds after which a flooder starts no new attempt."""

SOURCES = tuple(f"127.0.0.{n}" for n in range(1, 10))
"""The flooders' source addresses (the long sessions come from the first)."""

MODES = ("close", "game", "http", "close", "game", "http", "close", "silent")
"""What attempt number I{n} does after connecting: C{MODES[n % len(MODES)]}.

  - C{close}: close at once;
  - C{game}: send L{GAME_BYTES} and read the echo (or the busy line);
  - C{http}: send L{HTTP_REQUEST} and read the response to its end;
  - C{silent}: send nothing for L{SILENT_FOR} seconds, reading.
"""

GAME_BYTES = b"\x00flood game bytes\n"
HTTP_REQUEST = b"GET / HTTP/1.0\r\nHost: flood\r\n\r\n"
BUSY_LINE = b"BUSY\r\n"
"""What a refused game client gets (C{--busy-message BUSY})."""

SNIFF_TIMEOUT = 0.5
SILENT_FOR = 1.0
"""Longer than the sniff timeout, after which a refused silent client hears L{BUSY_LINE}."""

CONNECT_TIMEOUT = 4.0
"""Long enough for two SYN retransmissions (at 1 s and 3 s) when the backlog is full."""

ANSWER_TIMEOUT = 4.0
"""Seconds a game or HTTP attempt waits for the gateway's whole answer."""

CHUNK = 64 * 1024
LONG_SESSIONS = 3

IDLE_TIMEOUT = 2.0
"""The gateway's C{--idle-timeout}: the long sessions stream without a pause, so never idle."""

IDLE_CLOSE_LIMIT = 6.0
"""Seconds after its last byte by which the idle probe must be closed (generous: under load)."""

IDLE_SOURCE = "127.0.0.20"
SNIFF_SOURCE = "127.0.0.21"
TRICKLE_SOURCE = "127.0.0.22"
"""The probes' source addresses: neither in L{SOURCES} nor the after-flood clients' C{127.0.0.10}.

Each probe opens one connection, well within C{--max-per-ip} and the rate
limit's burst (L{gateway.front.limits.default_burst}: 100 at C{--rate-per-ip 50});
only the total cap (400, above the flooders' 384 attempts in flight) could
refuse one, and a refusal fails the probe with what it got.
"""

IDLE_PROBE_BYTES = b"idle probe: one echo, then silence\n"

SNIFF_PROBE_SILENCE = 2.0
"""Seconds the sniff probe sends nothing: four times L{SNIFF_TIMEOUT}.  (Twice was
not enough once in CI: with the flooders on both cores the gateway process itself
got no CPU for over half a second, so its timer ran after the probe's bytes.)"""

SNIFF_PROBE_BYTES = b"GET /after-the-sniff HTTP/1.0\r\n\r\n"
"""What the sniff probe sends after its silence.  They would begin an HTTP
request: they come back unchanged only if the sniff timeout had already made the
connection a game session (an HTTP channel would answer them with a 404)."""

TRICKLE_REQUEST = b"GET / HTTP/1.0\r\n\r\n"
TRICKLE_GAP = 0.01
"""Seconds between the trickle probe's bytes: 18 bytes in 0.17 s, well within L{SNIFF_TIMEOUT}."""

FLOOD_SEEN_FDS = 50
"""Descriptors above their level before the flood that show the flood has reached the gateway."""

PROBE_TIMEOUT = 15.0
"""Seconds any probe operation may take (bounds every probe thread)."""

REFUSAL_WINDOW = 10.0
"""The refusal log's window (L{gateway.ops.registry.RefusalLog}): a summary per window."""

REFUSAL_BURST = 5
"""Refusals per reason and window that the refusal log writes one by one."""

REASONS = ("total-cap", "address-cap", "rate", "timeout", "bad-request")

_REFUSED_ONE = re.compile(r"\] refused \S+: (" + "|".join(REASONS) + r")\b")
_REFUSED_MORE = re.compile(r"\] refused (\d+) more connections \(([a-z-]+)\)")

# Outcomes of one attempt, as the client saw them: the flooders' closed vocabulary.
# Each is counted per mode ("game echoed", "http busy", ...).
CLOSED_AT_ONCE = "closed-at-once"  # we closed right after connecting
ECHOED = "echoed"  # admitted game session: the backend echoed our bytes
BUSY = "busy"  # refused game (or silent) client: the busy line, then the close
HTTP_404 = "http-404"  # admitted HTTP request (no --http-root: every path is a 404)
HTTP_503 = "http-503"  # refused HTTP request
KEPT = "kept"  # silent client still open after SILENT_FOR: admitted game session
CLOSED_QUIETLY = "closed-quietly"  # closed without a byte
RESET = "reset"
NO_ANSWER = "no-answer"
CONNECT_TIMED_OUT = "connect-timeout"
OTHER = "other"
# ... and "error:<errno name>" for a failed connect or send.

REFUSED_SEEN = (BUSY, HTTP_503)
"""Outcomes that prove the gateway refused the connection."""

ADMITTED_SEEN = (ECHOED, HTTP_404, KEPT)
"""Outcomes that prove the gateway admitted the connection."""


@dataclass(frozen=True, slots=True)
class FloodJob:
    """
    One flooder's share of the flood.

    @ivar port: the gateway's port on 127.0.0.1.
    @ivar attempts: connection attempts to make.
    @ivar offset: where this flooder starts in L{SOURCES} (so that the
        flooders do not move through the addresses in step).
    @ivar in_flight: attempts going on at once.
    @ivar time_limit: seconds after which no new attempt is started.
    """

    port: int
    attempts: int
    offset: int
    in_flight: int = IN_FLIGHT
    time_limit: float = FLOOD_TIME_LIMIT


def _error(error: OSError) -> str:
    name = errno.errorcode.get(error.errno or 0, str(error.errno))
    return f"error:{name}"


async def _read(
    sock: socket.socket, enough: Callable[[bytes], bool], timeout: float
) -> tuple[bytes, str]:
    """
    Read until C{enough(data)}, the end of stream, a reset or C{timeout}.

    @return: what was read, and how reading ended: C{"enough"}, C{"eof"},
        C{"reset"} or C{"timeout"}.
    """
    loop = asyncio.get_running_loop()
    data = b""
    end = loop.time() + timeout
    while not enough(data):
        remaining = end - loop.time()
        if remaining <= 0:
            return data, "timeout"
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), remaining)
        except TimeoutError:
            return data, "timeout"
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "enough"


def _ended(data: bytes, how: str) -> str:
    """
    The outcome of a read that got nothing the gateway meant for us.
    """
    if data:
        return OTHER
    return {"eof": CLOSED_QUIETLY, "reset": RESET, "timeout": NO_ANSWER}.get(how, OTHER)


async def _converse(sock: socket.socket, mode: str) -> str:
    """
    Play C{mode} on a connected socket and classify what the gateway did.
    """
    loop = asyncio.get_running_loop()
    if mode == "close":
        return CLOSED_AT_ONCE
    if mode == "silent":
        data, how = await _read(sock, bool, SILENT_FOR)
        if how == "timeout" and not data:
            return KEPT
        return BUSY if data.startswith(BUSY_LINE) else _ended(data, how)
    if mode == "game":
        await loop.sock_sendall(sock, GAME_BYTES)
        data, how = await _read(
            sock, lambda d: len(d) >= len(GAME_BYTES) or d == BUSY_LINE, ANSWER_TIMEOUT
        )
        if data == GAME_BYTES:
            return ECHOED
        return BUSY if data.startswith(BUSY_LINE) else _ended(data, how)
    await loop.sock_sendall(sock, HTTP_REQUEST)
    data, how = await _read(sock, lambda d: len(d) > 65536, ANSWER_TIMEOUT)
    status = data.split(b"\r\n", 1)[0].split(b" ")
    if how == "eof" and len(status) > 1 and status[1] in (b"404", b"503"):
        return HTTP_404 if status[1] == b"404" else HTTP_503
    # Past the Responder's cap on lingering refused connections, a refused
    # connection is closed at once without an answer (it is counted as such).
    return BUSY if data.startswith(BUSY_LINE) else _ended(data, how)


async def _attempt(port: int, source: str, mode: str) -> str:
    """
    One connection attempt from C{source}: connect, play C{mode}, close.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Pick the source port at connect time, by the whole address pair, so
        # that thousands of short connections from one address do not run out
        # of ports at bind time.
        sock.setsockopt(socket.SOL_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), CONNECT_TIMEOUT)
        except TimeoutError:
            return CONNECT_TIMED_OUT
        return await _converse(sock, mode)
    except ConnectionResetError:
        return RESET
    except OSError as error:
        return _error(error)
    finally:
        sock.close()


async def _flood(job: FloodJob) -> dict[str, int]:
    """
    Run one flooder's share: L{FloodJob.in_flight} workers take attempt
    numbers in turn until the share is done or the time is up.
    """
    loop = asyncio.get_running_loop()
    counts: Counter[str] = Counter()
    deadline = loop.time() + job.time_limit
    taken = 0

    async def work() -> None:
        nonlocal taken
        while taken < job.attempts and loop.time() < deadline:
            number = taken
            taken += 1
            source = SOURCES[(number + job.offset) % len(SOURCES)]
            mode = MODES[number % len(MODES)]
            counts[f"{mode} {await _attempt(job.port, source, mode)}"] += 1

    await asyncio.gather(*(work() for _ in range(job.in_flight)))
    return dict(counts)


def flooder_main() -> None:
    """
    A flooder process: run the L{FloodJob} given as JSON in C{sys.argv[1]},
    then print the outcome counts and the elapsed time as JSON.
    """
    job = FloodJob(**json.loads(sys.argv[1]))
    started = time.monotonic()
    counts = asyncio.run(_flood(job))
    print(json.dumps({"counts": counts, "elapsed": time.monotonic() - started}))


def start_flooder(job: FloodJob) -> subprocess.Popen[bytes]:
    """
    Start a flooder process for C{job}.
    """
    code = "from tests.test_flood import flooder_main; flooder_main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(asdict(job))],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class _Echo(asyncio.Protocol):
    """
    Sends back every byte; closes at the client's end of stream.
    """

    @override
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    @override
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


ECHO_LIFETIME = 120.0
"""Seconds after which an echo server process ends by itself, if not stopped."""


async def _serve_echo() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=1024)
    async with server:
        await asyncio.sleep(ECHO_LIFETIME)


def echo_server_main() -> None:
    """
    An echo server process: listen on an ephemeral 127.0.0.1 port for at
    most L{ECHO_LIFETIME} seconds.
    """
    asyncio.run(_serve_echo())


class EchoServer:
    """
    An echo server in its own process (see L{echo_server_main}), its port
    read back from C{/proc}.  Use as a context manager; on exit the process
    is stopped by its PID.

    @ivar port: its port on 127.0.0.1.
    """

    def __init__(self) -> None:
        code = "from tests.test_flood import echo_server_main; echo_server_main()"
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
        self.port = 0

    @property
    def endpoint(self) -> str:
        """
        Its client endpoint string, for C{--backend}.
        """
        return f"tcp:127.0.0.1:{self.port}"

    def __enter__(self) -> EchoServer:
        pid = self.process.pid
        wait_for(lambda: "127.0.0.1" in listening_ports(pid), "the echo server to listen")
        self.port = listening_ports(pid)["127.0.0.1"][0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class StreamingSession:
    """
    A long game session through the gateway to an echo backend: a thread
    sends L{CHUNK}-byte chunks and reads each back before the next, checking
    every byte, until told to stop.

    @ivar moved: bytes sent and echoed back so far (read from other threads).
    @ivar slowest: the longest round trip of one chunk, in seconds.
    @ivar mismatches: chunks that came back different.
    @ivar error: what broke the session, if anything did.
    """

    def __init__(self, port: int, seed: int) -> None:
        self.sock = connect(port)
        # Distinct chunks in turn, so that a lost or repeated chunk shows.
        data = pattern(4 * CHUNK, seed)
        self._chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        self.moved = 0
        self.slowest = 0.0
        self.mismatches = 0
        self.error: Exception | None = None
        self.sent_digest = hashlib.sha256()
        self.received_digest = hashlib.sha256()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """
        Start streaming.
        """
        self._thread.start()

    def _run(self) -> None:
        turn = 0
        try:
            while not self._stop.is_set():
                chunk = self._chunks[turn % len(self._chunks)]
                turn += 1
                started = time.monotonic()
                self.sock.sendall(chunk)
                echoed = recv_exactly(self.sock, CHUNK)
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.sent_digest.update(chunk)
                self.received_digest.update(echoed)
                if echoed != chunk:
                    self.mismatches += 1
                self.moved += CHUNK
        except Exception as error:  # reported by the test, in its own thread
            self.error = error

    def stop(self) -> None:
        """
        Stop streaming, check that the session still answers, and close it.
        """
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "a long session is stuck"
        if self.error is None:
            self.sock.sendall(b"still there?\n")
            assert recv_exactly(self.sock, 13) == b"still there?\n"
        self.sock.close()


def moved(sessions: list[StreamingSession]) -> int:
    """
    Bytes the sessions moved so far, in all.
    """
    return sum(session.moved for session in sessions)


def rate_over(sessions: list[StreamingSession], seconds: float) -> float:
    """
    The sessions' throughput over the next C{seconds}, in MiB/s.
    """
    start, started = moved(sessions), time.monotonic()
    time.sleep(seconds)
    return (moved(sessions) - start) / (time.monotonic() - started) / MIB


def fd_count(pid: int) -> int:
    """
    How many descriptors process C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


class FloodWatch:
    """
    Notes when the flood reaches the gateway: its descriptors rise
    L{FLOOD_SEEN_FDS} above their level before it (the flooders take a few
    tenths of a second to start).  A thread polls C{/proc} for at most
    L{PROBE_TIMEOUT} seconds.

    @ivar seen: set once the flood is seen.
    @ivar at: when it was seen (monotonic seconds).
    """

    def __init__(self, pid: int, fds_before: int) -> None:
        self._pid = pid
        self._threshold = fds_before + FLOOD_SEEN_FDS
        self.seen = threading.Event()
        self.at = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """
        Start watching.
        """
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + PROBE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if fd_count(self._pid) >= self._threshold:
                    self.at = time.monotonic()
                    self.seen.set()
                    return
            except OSError:  # the gateway is gone: the test says so
                return
            time.sleep(0.01)

    def join(self) -> None:
        """
        Wait for the watching thread to end.
        """
        self._thread.join(timeout=PROBE_TIMEOUT + 5)


class Probe:
    """
    A client checked in a thread of its own while the flood runs, from an
    address the flooders do not use.  Subclasses implement L{check}; what
    fails in it is kept and raised by L{join}, in the test's thread.

    @ivar started: when the check started (monotonic seconds).
    @ivar ended: when it ended.
    @ivar error: what failed, if anything did.
    """

    name = "probe"

    def __init__(self, port: int, source: str, watch: FloodWatch | None = None) -> None:
        """
        @param watch: if given, the check waits until the flood is seen.
        """
        self.port = port
        self.source = source
        self.watch = watch
        self.started = self.ended = 0.0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def connect(self) -> socket.socket:
        """
        A blocking client socket from L{source} to the gateway.
        """
        sock = socket.create_connection(("127.0.0.1", self.port), PROBE_TIMEOUT, (self.source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def start(self) -> None:
        """
        Start the check in its thread.
        """
        self._thread.start()

    def _run(self) -> None:
        try:
            if self.watch is not None and not self.watch.seen.wait(PROBE_TIMEOUT):
                raise AssertionError("the flood never reached the gateway")
            self.started = time.monotonic()
            self.check()
        except BaseException as error:  # raised again by join, in the test's thread
            self.error = error
        finally:
            self.ended = time.monotonic()

    def check(self) -> None:
        """
        The probe's client side; raise if the gateway does not behave.
        """
        raise NotImplementedError

    def join(self) -> None:
        """
        Wait for the check to end.
        """
        self._thread.join(timeout=3 * PROBE_TIMEOUT)
        assert not self._thread.is_alive(), f"the {self.name} probe is stuck"

    def verify(self) -> None:
        """
        Raise what failed in the check, if anything did.
        """
        if self.error is not None:
            raise AssertionError(f"the {self.name} probe failed: {self.error!r}") from self.error


def refused(data: bytes) -> str:
    """
    A note for a probe's failure message if C{data} is a refusal.
    """
    if data.startswith(BUSY_LINE) or data.startswith(b"HTTP/1.1 503"):
        return " (refused: the total cap?)"
    return ""


class IdleProbe(Probe):
    """
    A game session opened just before the flood: one echo, then silence.
    The gateway must close it cleanly (a FIN) between L{IDLE_TIMEOUT} and
    L{IDLE_CLOSE_LIMIT} seconds after its last byte, while the flood runs.

    The echo is exchanged in L{__init__}, in the test's thread; the check
    waits for the close.

    @ivar sent: when the probe's last byte was sent: the gateway cannot
        have seen it earlier, so it may not close before C{sent + IDLE_TIMEOUT}.
    @ivar echoed: when the echo (the session's last byte) was read back.
    @ivar closed: when the gateway's end of stream was read.
    """

    name = "idle"

    def __init__(self, port: int) -> None:
        super().__init__(port, IDLE_SOURCE)
        self.sock = self.connect()
        self.sent = time.monotonic()
        self.sock.sendall(IDLE_PROBE_BYTES)
        echo = recv_exactly(self.sock, len(IDLE_PROBE_BYTES))
        self.echoed = time.monotonic()
        assert echo == IDLE_PROBE_BYTES, f"idle probe: no echo but {echo!r}{refused(echo)}"
        self.closed = 0.0

    @property
    def quiet(self) -> float:
        """
        Seconds from the echo to the gateway's close.
        """
        return self.closed - self.echoed

    @override
    def check(self) -> None:
        try:
            self.sock.settimeout(IDLE_CLOSE_LIMIT + 2.0)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError("the idle session was never closed") from None
            except ConnectionResetError:
                raise AssertionError("the idle session was reset, not closed") from None
            self.closed = time.monotonic()
            assert data == b"", f"the idle session got {data!r} instead of the end of stream"
        finally:
            self.sock.close()


class SniffProbe(Probe):
    """
    A client that, once the flood is on, sends nothing for
    L{SNIFF_PROBE_SILENCE} seconds (past the sniff timeout), and further until
    the admin endpoint lists its connection as a game session, then
    L{SNIFF_PROBE_BYTES}: it must have become a game session, kept open
    through the silence, that echoes them unchanged.

    The sniff timeout runs from the gateway's accept, which a flood can delay
    by seconds after the kernel completed the handshake (the backlog is full
    of flooders); the gateway's own status, not the client's clock, says when
    the sniff ended.

    @ivar round_trip: seconds from sending the bytes to reading their echo.
    """

    name = "sniff"

    def __init__(self, port: int, watch: FloodWatch, admin: str) -> None:
        super().__init__(port, SNIFF_SOURCE, watch)
        self.admin = admin
        self.round_trip = 0.0

    def _silent(self, sock: socket.socket, seconds: float) -> None:
        """
        Read for C{seconds}: the gateway must send nothing to a silent client.
        """
        sock.settimeout(seconds)
        try:
            early = sock.recv(4096)
        except TimeoutError:
            return
        raise AssertionError(f"silent client got {early!r}{refused(early)}")

    def _is_game(self, peer: str) -> bool:
        """
        Whether the admin endpoint lists a game session from C{peer}.
        """
        with urllib.request.urlopen(f"{self.admin}/status.json", timeout=PROBE_TIMEOUT) as reply:
            sessions = json.load(reply)["sessions"]
        return any(s["peer"] == peer and s["kind"] == "game" for s in sessions)

    @override
    def check(self) -> None:
        with self.connect() as sock:
            self._silent(sock, SNIFF_PROBE_SILENCE)
            peer = f"{SNIFF_SOURCE}:{sock.getsockname()[1]}"
            deadline = time.monotonic() + PROBE_TIMEOUT
            while not self._is_game(peer):
                assert time.monotonic() < deadline, "the silent client never became a game session"
                self._silent(sock, 0.1)
            sock.settimeout(PROBE_TIMEOUT)
            sent = time.monotonic()
            sock.sendall(SNIFF_PROBE_BYTES)
            echo = b""
            while len(echo) < len(SNIFF_PROBE_BYTES):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                echo += chunk
            self.round_trip = time.monotonic() - sent
            assert echo == SNIFF_PROBE_BYTES, f"not a game session: got {echo!r}{refused(echo)}"


class TrickleProbe(Probe):
    """
    An HTTP client that, once the flood is on, sends L{TRICKLE_REQUEST} one
    byte per L{TRICKLE_GAP} seconds (in all well within the sniff timeout),
    and must get an HTTP answer: a 404 (admitted; no C{--http-root}) or a 503
    (refused by the total cap).

    @ivar status: the answer's status code.
    @ivar trickle: seconds from the first byte sent to the last.
    @ivar answered: seconds from the last byte sent to the end of the answer.
    """

    name = "trickle"

    def __init__(self, port: int, watch: FloodWatch) -> None:
        super().__init__(port, TRICKLE_SOURCE, watch)
        self.status = 0
        self.trickle = self.answered = 0.0

    @override
    def check(self) -> None:
        with self.connect() as sock:
            first = time.monotonic()
            for index in range(len(TRICKLE_REQUEST)):
                # On a schedule, so that late wake-ups under load do not add up.
                time.sleep(max(0.0, first + index * TRICKLE_GAP - time.monotonic()))
                sock.sendall(TRICKLE_REQUEST[index : index + 1])
            last = time.monotonic()
            self.trickle = last - first
            answer = b""
            while len(answer) < 65536 and (chunk := sock.recv(4096)):
                answer += chunk
            self.answered = time.monotonic() - last
        status = answer.split(b"\r\n", 1)[0].split(b" ")
        assert len(status) > 2 and status[0].startswith(b"HTTP/"), f"no HTTP answer: {answer!r}"
        assert status[1] in (b"404", b"503"), f"unexpected answer: {answer!r}"
        self.status = int(status[1])


def refusal_lines(log: str) -> tuple[int, int, int, dict[str, int]]:
    """
    The refusal log's lines in C{log}.

    @return: lines logging one refusal, summary lines, lines mentioning
        "refused" at all, and the refusals they account for by reason.
    """
    single = summaries = mentions = 0
    by_reason: Counter[str] = Counter()
    for line in log.splitlines():
        if "refused" not in line:
            continue
        mentions += 1
        if match := _REFUSED_ONE.search(line):
            single += 1
            by_reason[match.group(1)] += 1
        elif match := _REFUSED_MORE.search(line):
            summaries += 1
            by_reason[match.group(2)] += int(match.group(1))
    return single, summaries, mentions, dict(by_reason)


@dataclass
class FloodRecord:
    """
    What was measured while the flooders ran.

    @ivar started: when the flooders were started (monotonic seconds).
    @ivar ended: when the last one exited.
    @ivar throughput: the long sessions' throughput over the flood, in MiB/s.
    @ivar slowest_second: their lowest throughput over one second of it.
    @ivar rss_peak: the gateway's highest RSS seen, in KiB.
    @ivar fds_peak: the most descriptors the gateway had open.
    @ivar results: each flooder's report (L{flooder_main}).
    """

    started: float
    ended: float
    throughput: float
    slowest_second: float
    rss_peak: int
    fds_peak: int
    results: list[dict[str, Any]]


def flood(port: int, pid: int, sessions: list[StreamingSession]) -> FloodRecord:
    """
    Run the flooders against the gateway on C{port}, sampling the gateway
    (process C{pid}) and the long C{sessions} every 0.1 s until they exit.
    """
    share = FLOOD_ATTEMPTS // FLOODERS
    flooders = [start_flooder(FloodJob(port, share, offset=n * 2)) for n in range(FLOODERS)]
    try:
        started = second = time.monotonic()
        at_start = at_second = moved(sessions)
        rss_peak, fds_peak, seconds = rss_kib(pid), fd_count(pid), []
        limit = started + FLOOD_TIME_LIMIT + 20
        while any(f.poll() is None for f in flooders) and time.monotonic() < limit:
            time.sleep(0.1)
            rss_peak = max(rss_peak, rss_kib(pid))
            fds_peak = max(fds_peak, fd_count(pid))
            now, now_moved = time.monotonic(), moved(sessions)
            if now - second >= 1.0:
                seconds.append((now_moved - at_second) / (now - second) / MIB)
                second, at_second = now, now_moved
        ended = time.monotonic()
        results = []
        for flooder in flooders:
            out, err = flooder.communicate(timeout=10)
            assert flooder.returncode == 0, err.decode(errors="replace")
            results.append(json.loads(out))
    finally:
        for flooder in flooders:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait(timeout=10)
    return FloodRecord(
        started=started,
        ended=ended,
        throughput=(moved(sessions) - at_start) / (ended - started) / MIB,
        slowest_second=min(seconds, default=0.0),
        rss_peak=rss_peak,
        fds_peak=fds_peak,
        results=results,
    )


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """
    An echo server in its own process.
    """
    with EchoServer() as server:
        yield server


def test_flood_leaves_the_gateway_and_its_sessions_standing(
    tmp_path: Path, echo_server: EchoServer
) -> None:
    """
    20,000 connection attempts from four processes and nine addresses (closed
    at once, game bytes, HTTP requests, silence) against a gateway with every
    limit on: the gateway stays up without a traceback; long game sessions
    keep every byte and at least a tenth of their throughput; the refusal log
    stays sampled (a summary line, far fewer lines than refusals); and once
    the flood is over, descriptors and memory come back near their level
    before it, and new clients are served.

    During the flood, the sniff and idle timeouts still hold: a game session
    left silent is closed cleanly between 2 and 6 s after its last byte; a
    client silent past the sniff timeout becomes a game session and is not
    dropped; an HTTP request sent a byte per 10 ms is answered as HTTP.
    """
    args = ["--backend", echo_server.endpoint, "--sniff-timeout", str(SNIFF_TIMEOUT)]
    args += ["--idle-timeout", str(IDLE_TIMEOUT)]
    args += ["--max-connections", "400", "--max-per-ip", "30", "--rate-per-ip", "50"]
    args += ["--busy-message", "BUSY", "--admin", "tcp:0:interface=127.0.0.3"]
    with GatewayProcess(args, tmp_path) as gateway:
        pid = gateway.pid
        sessions = [StreamingSession(gateway.port, seed) for seed in range(LONG_SESSIONS)]
        for session in sessions:
            session.start()
        wait_for(lambda: all(s.moved for s in sessions), "the long sessions to stream")
        time.sleep(0.5)  # warm up
        baseline = rate_over(sessions, 1.5)
        rss_before, fds_before = rss_kib(pid), fd_count(pid)

        # The probes: the idle one echoes now, just before the flood; the
        # others start once the flood has reached the gateway.
        watch = FloodWatch(pid, fds_before)
        idle = IdleProbe(gateway.port)
        sniff = SniffProbe(gateway.port, watch, admin_url(gateway))
        trickle = TrickleProbe(gateway.port, watch)
        probes: list[Probe] = [idle, sniff, trickle]
        watch.start()
        for probe in probes:
            probe.start()

        record = flood(gateway.port, pid, sessions)

        watch.join()
        for probe in probes:
            probe.join()
        assert gateway.process is not None and gateway.process.poll() is None, "gateway died"
        # Settle: descriptors back near their level; then wait out the refusal
        # log's last window, so that its summary of the flood's end is written.
        wait_for(lambda: fd_count(pid) <= fds_before + 2, "the gateway's descriptors", 20)
        fds_after, settled_in = fd_count(pid), time.monotonic() - record.ended
        after = rate_over(sessions, 1.5)
        time.sleep(max(0.0, record.ended + REFUSAL_WINDOW + 1.0 - time.monotonic()))
        rss_after = rss_kib(pid)
        for session in sessions:
            session.stop()

        # New clients, from an address the flood did not use, are served.
        fresh = socket.create_connection(("127.0.0.1", gateway.port), 10, ("127.0.0.10", 0))
        fresh.sendall(b"after the flood\n")
        assert recv_exactly(fresh, 16) == b"after the flood\n"
        fresh.close()
        web = socket.create_connection(("127.0.0.1", gateway.port), 10, ("127.0.0.10", 0))
        web.sendall(HTTP_REQUEST)
        assert recv_exactly(web, 12) in (b"HTTP/1.1 404", b"HTTP/1.0 404")
        web.close()
        log = gateway.log()

    by_mode: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for result in record.results:
        by_mode.update(result["counts"])
        for key, count in result["counts"].items():
            outcomes[key.split(" ", 1)[1]] += count
    attempts = sum(outcomes.values())
    refused_seen = sum(outcomes[o] for o in REFUSED_SEEN)
    admitted_seen = sum(outcomes[o] for o in ADMITTED_SEEN)
    single, summaries, mentions, by_reason = refusal_lines(log)
    refused_logged = sum(by_reason.values())
    elapsed = max(result["elapsed"] for result in record.results)
    ratio = record.throughput / baseline

    print()
    print(f"flood: {attempts} attempts by {FLOODERS} processes in {elapsed:.1f} s")
    print(f"  outcomes: {dict(sorted(outcomes.items()))}")
    print(f"  by mode: {dict(sorted(by_mode.items()))}")
    print(f"  seen by clients: {refused_seen} refused, {admitted_seen} admitted")
    print(f"  refusals in the gateway log: {refused_logged} {by_reason}")
    print(
        f"  log: {len(log.splitlines())} lines, {mentions} mention 'refused' "
        f"({single} single refusals, {summaries} summaries)"
    )
    print(
        f"long sessions: {baseline:.1f} MiB/s before, {record.throughput:.1f} during "
        f"(ratio {ratio:.2f}; slowest second {record.slowest_second:.1f}), "
        f"{after:.1f} after; slowest round trip "
        f"{max(s.slowest for s in sessions) * 1000:.0f} ms; "
        f"{moved(sessions) / MIB:.0f} MiB echoed"
    )
    print(
        f"gateway RSS: {rss_before / 1024:.1f} MiB before, {record.rss_peak / 1024:.1f} peak, "
        f"{rss_after / 1024:.1f} after ({(rss_after - rss_before) / 1024:+.1f} MiB)"
    )
    print(
        f"gateway fds: {fds_before} before, {record.fds_peak} peak, "
        f"{fds_after} after (settled {settled_in:.1f} s after the flood)"
    )
    flood_on = watch.at - record.started if watch.seen.is_set() else float("nan")
    print(
        f"probes (flood reached the gateway {flood_on:.2f} s after the flooders "
        f"started; flooders ran until {record.ended - record.started:.2f} s):"
    )
    if idle.closed:
        print(
            f"  idle ({IDLE_SOURCE}, --idle-timeout {IDLE_TIMEOUT:g}): closed "
            f"{idle.quiet:.2f} s after its echo ({idle.closed - idle.sent:.2f} s after "
            f"its last byte sent), at {idle.closed - record.started:.2f} s into the flood"
        )
    else:
        print(f"  idle ({IDLE_SOURCE}): not closed ({idle.error!r})")
    print(
        f"  sniff ({SNIFF_SOURCE}, --sniff-timeout {SNIFF_TIMEOUT:g}): silent "
        f"{SNIFF_PROBE_SILENCE:g} s, then echoed as a game session in "
        f"{sniff.round_trip * 1000:.0f} ms; "
        f"{sniff.started - record.started:.2f}-{sniff.ended - record.started:.2f} s into the flood"
    )
    print(
        f"  trickle ({TRICKLE_SOURCE}): {len(TRICKLE_REQUEST)} bytes in {trickle.trickle:.2f} s, "
        f"answered HTTP {trickle.status} {trickle.answered * 1000:.0f} ms later; "
        f"{trickle.started - record.started:.2f}-{trickle.ended - record.started:.2f} s "
        f"into the flood"
    )
    print(f"  idle-timeout closes in the log: {log.count('(idle-timeout); closing it')}")

    # On a busy machine the flooders may not finish their 20,000 attempts
    # within FLOOD_TIME_LIMIT; a quarter of them is still a flood.
    assert attempts >= FLOOD_ATTEMPTS // 4, f"the flood was cut short: {attempts} attempts"
    for session in sessions:
        assert session.error is None, f"a long session broke: {session.error!r}"
        assert session.mismatches == 0
        assert session.sent_digest.digest() == session.received_digest.digest()
    # The flooders take CPU from the gateway on these shared cores, hence the
    # low bound: it catches a gateway that starves its sessions, not a slow one.
    assert ratio >= 0.1, f"long sessions slowed to {ratio:.0%} of their throughput"
    # Measured: +2.3 to +2.9 MiB after the flood (README). 12 MiB still
    # catches a leak of ~600 bytes per attempt over 20,000 attempts.
    assert (rss_after - rss_before) / 1024 < 12, "the gateway kept the flood's memory"
    assert outcomes[OTHER] == 0, "the gateway sent something it should not"
    assert "Traceback" not in log
    assert "Unhandled" not in log
    # The gateway refused at least what the clients saw refused, and logged
    # them sampled: at most the burst plus a summary per reason and window.
    assert refused_logged >= refused_seen > 0
    assert summaries >= 1
    assert mentions == single + summaries
    windows = int(elapsed // REFUSAL_WINDOW) + 2
    assert mentions <= windows * len(REASONS) * (REFUSAL_BURST + 1)
    assert mentions * 20 < refused_logged

    # The sniff and idle timeouts held during the flood.
    for probe in probes:
        probe.verify()
    assert watch.seen.is_set()
    assert idle.closed - idle.sent >= IDLE_TIMEOUT, "the idle session was closed early"
    assert idle.quiet <= IDLE_CLOSE_LIMIT, f"the idle session was closed late: {idle.quiet:.2f} s"
    for probe in probes:
        assert probe.ended <= record.ended, f"the {probe.name} probe ended after the flood"
    assert watch.at <= idle.closed, "the idle session was closed before the flood was on"
    assert re.search(
        rf"session from {re.escape(IDLE_SOURCE)}:\d+ had no traffic for "
        rf"{IDLE_TIMEOUT:g} s \(idle-timeout\); closing it",
        log,
    ), "the log does not show the idle probe's idle timeout"
    assert re.search(rf"game session from {re.escape(SNIFF_SOURCE)}:\d+ to ", log), (
        "the log does not show the sniff probe's game session"
    )
