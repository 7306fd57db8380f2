#!/usr/bin/env python3
"""
WebSocket bridges side by side (run by hand, never in CI): the gateway's
C{--websocket} bridge against websockify, in one run, interleaved.

Each column is a bridge from WebSocket to one TCP backend on loopback:

  - C{websockify}: C{websockify 127.0.0.1:0 127.0.0.1:BACKEND} (from PyPI; it
    forks one process per connection, so its CPU is summed over the tree);
  - C{gateway}: C{twistd -n gateway --listen tcp:0:interface=127.0.0.1
    --backend tcp:127.0.0.1:BACKEND --websocket /play --admin none
    --health-interval 0}.

The backend is one asyncio process of this same script (C{--serve}); the
client's first message picks what it does with the connection: echo, sink
(read N bytes, then answer C{done}) or source (write N bytes). The rows:

  - latency: 64-byte binary messages, each sent once the previous one came
    back, over one connection to the echo (p50 and p99 over C{--count});
  - browser to backend: C{--megabytes} in 64 KiB binary messages into the
    sink, timed from the first message to the sink's C{done};
  - backend to browser: as many bytes from the source, timed from the
    request to the last byte received;
  - the proxy's CPU (utime + stime from C{/proc}, its whole process tree)
    per round trip and per GB.

The client is the C{websockets} library on asyncio, offering the C{binary}
subprotocol (websockify's clients do) with compression off.  Client, proxy
and backend share the machine's cores; the client's own CPU is printed too,
since a client at 100% of a core caps the throughput rows for both columns.
Cells are medians over C{--rounds}; the column order rotates each round.
Every wait is bounded (C{--deadline} per cell) and every process started
here is stopped by its PID.

    .venv/bin/python bench/websocket.py [--rounds 3] [--count 10000] [--megabytes 200]
    .venv/bin/python bench/websocket.py --columns websockify --rounds 1
    GATEWAY_BASE=../main .venv/bin/python bench/websocket.py \
        --columns websockify,gateway,gateway-base

C{gateway-base} is the gateway of another checkout (C{GATEWAY_BASE}, put
first on its C{PYTHONPATH}), to measure a change against its base in one
interleaved run rather than in two runs on a machine whose load moves.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayProcess, listening_ports, wait_for  # noqa: E402

HEADER = struct.Struct(">cQ")
"""The client's first bytes: a mode (C{E}cho, C{S}ink, sou{R}ce) and a count."""

DONE = b"done"
"""What the sink writes once it has read all the bytes it was told of."""

MESSAGE = 64 * 1024
"""The size of the browser's messages in the throughput row."""

SOURCE_CHUNK = 256 * 1024
"""What the source hands its transport per write."""

PATH = "/play"
"""The WebSocket path of both bridges (websockify accepts any path)."""

COLUMNS = ("websockify", "gateway", "gateway-uvloop", "gateway-base")
"""The columns, websockify first; the ratios are each gateway's / websockify's.
C{gateway-uvloop} (C{twistd -r uvloop}) and C{gateway-base} (the checkout at
C{$GATEWAY_BASE}) run only when C{--columns} names them."""

WORKLOADS = ("latency", "up", "down")
"""Round trips to the echo, browser to sink, source to browser."""


# ----------------------------------------------------------------- the backend


class BackendProtocol(asyncio.Protocol):
    """
    One backend connection: its first L{HEADER} decides echo, sink or source.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._mode = b""
        self._left = 0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if not self._mode:
            self._head += data
            if len(self._head) < HEADER.size:
                return
            mode, self._left = HEADER.unpack_from(self._head)
            self._mode, data = mode, self._head[HEADER.size :]
            if self._mode == b"R":
                self._produce()
        if self._mode == b"E":
            self._transport.write(data)
        elif self._mode == b"S" and data:
            self._left -= len(data)
            if self._left == 0:
                self._transport.write(DONE)

    def _produce(self) -> None:
        """
        Write the source's bytes until the transport asks for a pause.
        """
        assert self._transport is not None
        chunk = bytes(range(256)) * (SOURCE_CHUNK // 256)
        while self._left > 0 and not self._paused:
            piece = chunk if self._left >= len(chunk) else chunk[: self._left]
            self._left -= len(piece)
            self._transport.write(piece)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._produce()


async def serve() -> None:
    """
    Run the backend on an ephemeral loopback port, printed on stdout, until
    stdin closes (so that it never outlives the bench).
    """
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BackendProtocol, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


# ----------------------------------------------------------------- the proxies


class WebsockifyProcess:
    """
    C{websockify} on an ephemeral loopback port, stopped by its PID.
    """

    def __init__(self, backend: int, log: Path) -> None:
        """
        @param backend: the backend's port on 127.0.0.1.
        @param log: where its output goes.
        """
        binary = os.environ.get("WEBSOCKIFY", str(Path(sys.executable).with_name("websockify")))
        self.argv = [binary, "127.0.0.1:0", f"127.0.0.1:{backend}"]
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        """
        Its process ID (the parent of one process per connection).
        """
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> WebsockifyProcess:
        with self._log.open("wb") as out:
            self._process = subprocess.Popen(
                self.argv, stdout=out, stderr=out, start_new_session=True
            )

        def listening() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"websockify exited: {self._log.read_text()[-500:]}")
            return "127.0.0.1" in listening_ports(self.pid)

        try:
            wait_for(listening, "websockify to listen")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.port = listening_ports(self.pid)["127.0.0.1"][0]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            # websockify terminates its per-connection children on SIGTERM.
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)


def _stat_fields(pid: int) -> list[str] | None:
    """
    The fields of C{/proc/PID/stat} after the command name, or C{None} if
    the process is gone.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> set[int]:
    """
    The processes whose parent is C{pid} (zombies included).
    """
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.add(int(entry))
    return found


def settle(pid: int, baseline: set[int], timeout: float = 5.0) -> None:
    """
    Wait (at most C{timeout} seconds) until C{pid} has reaped every child
    that is not in C{baseline}: websockify's per-connection process has then
    ended and its CPU is in its parent's cutime + cstime, not in a process
    that could be reaped between two reads of L{tree_cpu_seconds} (and lost),
    or still be exiting when the next workload starts (and be counted there).
    """
    deadline = time.monotonic() + timeout
    while children(pid) - baseline and time.monotonic() < deadline:
        time.sleep(0.01)


def tree_cpu_seconds(root: int) -> float:
    """
    CPU seconds used by C{root} and its descendants so far: utime + stime of
    each, plus cutime + cstime (the children each has already reaped).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        fields = _stat_fields(pid)
        if fields is not None:
            # stat's fields 14-17 (utime, stime, cutime, cstime), counted from
            # 3 (the state) here.
            total += sum(int(value) for value in fields[11:15])
        todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------- the workloads


@dataclass
class Sample:
    """
    What one workload measured through one column, once.

    @ivar values: row key to value (µs, MB/s, ...).
    @ivar proxy_cpu: the proxy tree's CPU seconds during the workload.
    @ivar client_cpu: this process's CPU seconds during the workload.
    """

    values: dict[str, float]
    proxy_cpu: float = 0.0
    client_cpu: float = 0.0


def _open(port: int) -> Awaitable[ClientConnection]:
    """
    Connect a WebSocket client the way the throughput and latency rows need:
    the C{binary} subprotocol, no compression, no size limit, no pings.
    """
    return connect(
        f"ws://127.0.0.1:{port}{PATH}",
        origin=Origin(f"http://127.0.0.1:{port}"),
        subprotocols=[Subprotocol("binary")],
        compression=None,
        max_size=None,
        ping_interval=None,
    )


async def _receive(ws: ClientConnection, count: int) -> bytes:
    """
    Receive at least C{count} bytes, in as many messages as the bridge sends.
    """
    got = bytearray()
    while len(got) < count:
        message = await ws.recv()
        got += message.encode() if isinstance(message, str) else message
    return bytes(got)


async def latency(port: int, count: int, warmup: int) -> dict[str, float]:
    """
    64-byte round trips to the echo, one at a time.

    @return: p50 and p99 in µs.
    """
    message = bytes(range(64))
    rtts: list[int] = []
    async with await _open(port) as ws:
        await ws.send(HEADER.pack(b"E", 0))
        for index in range(warmup + count):
            began = time.perf_counter_ns()
            await ws.send(message)
            back = await _receive(ws, len(message))
            ended = time.perf_counter_ns()
            if back != message:
                raise RuntimeError(f"echo mismatch at round trip {index}")
            if index >= warmup:
                rtts.append(ended - began)
    rtts.sort()
    return {
        "p50": rtts[len(rtts) // 2] / 1000,
        "p99": rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)] / 1000,
    }


async def upload(port: int, total: int) -> dict[str, float]:
    """
    C{total} bytes in L{MESSAGE}-byte messages into the sink.

    @return: MB/s (10^6 bytes), from the first message to the sink's C{done}.
    """
    payload = bytes(range(256)) * (MESSAGE // 256)
    async with await _open(port) as ws:
        await ws.send(HEADER.pack(b"S", total))
        began = time.perf_counter()
        left = total
        while left > 0:
            piece = payload if left >= len(payload) else payload[:left]
            await ws.send(piece)
            left -= len(piece)
        if await _receive(ws, len(DONE)) != DONE:
            raise RuntimeError("the sink did not answer done")
        return {"up": total / (time.perf_counter() - began) / 1e6}


async def download(port: int, total: int) -> dict[str, float]:
    """
    C{total} bytes from the source.

    @return: MB/s, from the request to the last byte.
    """
    async with await _open(port) as ws:
        began = time.perf_counter()
        await ws.send(HEADER.pack(b"R", total))
        got = 0
        while got < total:
            message = await ws.recv()
            got += len(message)
        if got != total:
            raise RuntimeError(f"{got} bytes from the source, not {total}")
        return {"down": total / (time.perf_counter() - began) / 1e6}


# ------------------------------------------------------------------ the runner


@dataclass
class Results:
    """
    Every sample of the run, by column and workload, and the errors.
    """

    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def add(self, column: str, workload: str, sample: Sample) -> None:
        self.samples.setdefault(column, {}).setdefault(workload, []).append(sample)

    def median(self, column: str, workload: str, pick: Callable[[Sample], float]) -> float | None:
        found = self.samples.get(column, {}).get(workload, [])
        return statistics.median(pick(s) for s in found) if found else None


def _measure(
    pid: int,
    baseline: set[int],
    workload: Callable[[], Awaitable[dict[str, float]]],
    deadline: float,
) -> Sample:
    """
    Run one workload against a proxy, with its CPU and the client's around
    it; the proxy's connection processes (websockify's) have ended before
    each reading of its CPU.

    @param baseline: the proxy's long-lived child processes.
    """
    settle(pid, baseline)
    proxy_before, client_before = tree_cpu_seconds(pid), time.process_time()
    values = asyncio.run(asyncio.wait_for(workload(), deadline))
    client = time.process_time() - client_before
    settle(pid, baseline)
    return Sample(values, tree_cpu_seconds(pid) - proxy_before, client)


def _workloads(
    port: int, args: argparse.Namespace
) -> Iterator[tuple[str, Callable[[], Awaitable[dict[str, float]]]]]:
    """
    The workloads C{--only} names, in their order, each ready to run.
    """
    total = args.megabytes * 10**6
    jobs: dict[str, Callable[[], Awaitable[dict[str, float]]]] = {
        "latency": lambda: latency(port, args.count, args.warmup),
        "up": lambda: upload(port, total),
        "down": lambda: download(port, total),
    }
    for name in args.only:
        yield name, jobs[name]


def run(proxies: dict[str, tuple[int, int]], args: argparse.Namespace) -> Results:
    """
    Every workload through every column, C{args.rounds} times, rotating the
    column order each round.

    @param proxies: column name to (port, PID).
    """
    results = Results()
    names = list(proxies)
    # Children a proxy has before any connection (a gateway's workers) stay.
    baselines = {name: children(pid) for name, (port, pid) in proxies.items()}
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            port, pid = proxies[name]
            for workload, job in _workloads(port, args):
                try:
                    sample = _measure(pid, baselines[name], job, args.deadline)
                except Exception as error:  # noqa: BLE001 - the cell shows it
                    reason = f"{workload}: {type(error).__name__}: {error}"[:200]
                    results.errors.setdefault(name, []).append(reason)
                    print(f"round {round_ + 1} {name} {reason}", file=sys.stderr)
                    continue
                results.add(name, workload, sample)
                shown = ", ".join(f"{k} {v:.1f}" for k, v in sample.values.items())
                print(
                    f"round {round_ + 1} {name:10} {shown}; proxy CPU "
                    f"{sample.proxy_cpu:.2f} s, client CPU {sample.client_cpu:.2f} s",
                    file=sys.stderr,
                )
    return results


# ------------------------------------------------------------------ the report


def _rows(args: argparse.Namespace) -> list[tuple[str, str, Callable[[Sample], float], str]]:
    """
    The table's rows: label, workload, what to take from a sample, format.
    """
    gigabytes = args.megabytes / 1000
    size = f"{args.megabytes} MB in 64 KiB messages"
    return [
        (f"latency p50, 64 B binary × {args.count} (µs)", "latency", lambda s: s.values["p50"],
         ".0f"),
        (f"latency p99, 64 B binary × {args.count} (µs)", "latency", lambda s: s.values["p99"],
         ".0f"),
        (f"browser→backend, {size} (MB/s)", "up", lambda s: s.values["up"], ".0f"),
        (f"backend→browser, {args.megabytes} MB (MB/s)", "down", lambda s: s.values["down"],
         ".0f"),
        ("latency: proxy CPU per round trip (µs)", "latency",
         lambda s: s.proxy_cpu / (args.count + args.warmup) * 1e6, ".0f"),
        ("browser→backend: proxy CPU (s per GB)", "up", lambda s: s.proxy_cpu / gigabytes, ".2f"),
        ("backend→browser: proxy CPU (s per GB)", "down", lambda s: s.proxy_cpu / gigabytes,
         ".2f"),
        ("browser→backend: client CPU (s per GB)", "up", lambda s: s.client_cpu / gigabytes,
         ".2f"),
        ("backend→browser: client CPU (s per GB)", "down", lambda s: s.client_cpu / gigabytes,
         ".2f"),
    ]  # fmt: skip


def report(results: Results, columns: list[str], args: argparse.Namespace) -> str:
    """
    The markdown table: one column per bridge, and gateway / websockify.
    """
    gateways = [c for c in columns if c != "websockify"] if "websockify" in columns else []
    head = ["workload", *columns] + [f"{c} / websockify" for c in gateways]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, workload, pick, form in _rows(args):
        if workload not in args.only:
            continue
        medians = {c: results.median(c, workload, pick) for c in columns}
        cells = [label] + [format(m, form) if m is not None else "error" for m in medians.values()]
        websockify = medians.get("websockify")
        for column in gateways:
            gateway = medians[column]
            cells.append(f"{gateway / websockify:.2f}×" if gateway and websockify else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for column, reasons in results.errors.items():
        lines.append(f"\n{column}: {len(reasons)} failure(s), first: {reasons[0]}")
    return "\n".join(lines)


def _machine(rounds: int, seconds: float) -> str:
    """
    The line above the table: machine, date, rounds and the run's length.
    """
    return (
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"{datetime.date.today().isoformat()}; {rounds} round(s), medians, the column order "
        f"rotating; {seconds:.0f} s"
    )


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """
    Set environment variables (for the processes started meanwhile).
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start(column: str, backend: int, stack: ExitStack, tmp: Path) -> tuple[int, int]:
    """
    Start one column's proxy in front of the backend.

    @return: its port and PID.
    """
    if column == "websockify":
        websockify = stack.enter_context(WebsockifyProcess(backend, tmp / "websockify.log"))
        return websockify.port, websockify.pid
    extra = os.environ.get("GATEWAY_ARGS", "").split()
    logs = tmp / column  # GatewayProcess names its log gateway.log: one folder per column
    logs.mkdir()
    # twistd's sys.path starts with its own folder, then PYTHONPATH, then
    # this venv's site-packages (where the editable install points here).
    base = os.environ.get("GATEWAY_BASE", "") if column == "gateway-base" else None
    with _environment(PYTHONPATH=str(Path(base).resolve())) if base is not None else nullcontext():
        gateway = stack.enter_context(
            GatewayProcess(
                [
                    "--backend",
                    f"tcp:127.0.0.1:{backend}",
                    "--websocket",
                    PATH,
                    "--health-interval",
                    "0",
                    *extra,
                ],
                logs,
                reactor="uvloop" if column == "gateway-uvloop" else None,
            )
        )
    return gateway.port, gateway.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=10000, help="timed round trips")
    parser.add_argument("--warmup", type=int, default=200, help="untimed round trips first")
    parser.add_argument("--megabytes", type=int, default=200, help="each way (10^6 bytes)")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds per cell")
    parser.add_argument("--columns", default="websockify,gateway", help=", ".join(COLUMNS))
    parser.add_argument("--only", default=",".join(WORKLOADS), help="latency,up,down")
    parser.add_argument("--json", type=Path, help="write every sample here too")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    columns = [c for c in args.columns.split(",") if c]
    if unknown := set(columns) - set(COLUMNS):
        parser.error(f"unknown columns {sorted(unknown)}: choose from {COLUMNS}")
    if "gateway-base" in columns and not os.environ.get("GATEWAY_BASE"):
        parser.error("the gateway-base column needs GATEWAY_BASE, a checkout's folder")
    args.only = [w for w in args.only.split(",") if w]
    if unknown := set(args.only) - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(unknown)}: choose from {WORKLOADS}")
    began = time.monotonic()
    # The folder outlives the stack: the proxies log there until they stop.
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        backend = stack.enter_context(
            subprocess.Popen(
                [sys.executable, __file__, "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
        )
        assert backend.stdout is not None and backend.stdin is not None
        stack.callback(backend.stdin.close)  # the backend exits when its stdin closes
        backend_port = int(backend.stdout.readline())
        proxies: dict[str, tuple[int, int]] = {}
        failed: dict[str, list[str]] = {}
        for column in columns:
            try:
                proxies[column] = _start(column, backend_port, stack, Path(tmp))
            except Exception as error:  # noqa: BLE001 - the table says so
                failed[column] = [f"did not start: {str(error)[-300:]}"]
                print(f"{column} {failed[column][0]}", file=sys.stderr)
        results = run(proxies, args)
        results.errors.update(failed)
    print(_machine(args.rounds, time.monotonic() - began))
    print()
    print(report(results, columns, args))
    if args.json:
        raw = {
            c: {w: [vars(s) for s in ss] for w, ss in ws.items()}
            for c, ws in results.samples.items()
        }
        args.json.write_text(json.dumps({"samples": raw, "errors": results.errors}, indent=1))


if __name__ == "__main__":
    main()
