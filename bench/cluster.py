#!/usr/bin/env python3
"""
What the cluster's shared limits cost an admission (run by hand, never in
CI): the gateway with C{--max-per-ip} and C{--rate-per-ip} decided in its
own process, the same limits held in Redis (C{--cluster}), and no limits at
all, in one run, interleaved.

The columns, each a C{twistd -n gateway --listen tcp:0:interface=127.0.0.1
--backend tcp:127.0.0.1:BACKEND --admin none --health-interval 0}:

  - C{gateway-nolimits}: nothing else (the floor);
  - C{gateway}: C{--max-per-ip 1000 --rate-per-ip 100000}, decided in the
    gateway's process;
  - C{gateway-cluster}: the same limits with C{--cluster
    redis://127.0.0.1:PORT/0}: each admission is one Lua script in that
    Redis, which the connection waits for (paused), and each connection's
    end one more;
  - C{direct} (only when C{--columns} names it): the backend itself.

The bench starts its own servers, each in a temporary folder, on 127.0.0.1
and a free port, without persistence: the cluster's Redis, and the backend,
another C{redis-server} (C-written, one event loop, no thread or process per
connection, so what the columns differ by is the gateway).  The rows:

  - admission latency: C{--connects} sequential new connections, each timed
    from before C{connect()} to the backend's first byte.  The client sends
    a RESP C{PING} at once (C{*} cannot begin an HTTP method, so the front
    door classifies the connection without waiting for its sniff timeout)
    and Redis answers C{+PONG}: admission, the backend's connect and one
    round trip through the relay.  p50 and p99 in µs;
  - churn: C{redis-benchmark -t ping -k 0 -c 20 -n N} (a new connection per
    request; its two tests, inline and bulk, together: 2N sessions), in new
    sessions/s;
  - the gateway's CPU per session (utime + stime from C{/proc}, over the
    churn run), and for C{gateway-cluster} the cluster Redis' scripts
    (C{EVAL} and C{EVALSHA} in its C{INFO commandstats}: round trips; the
    commands the scripts run are counted there too, so not the total) and
    CPU per session over the same run.  Two scripts a session is also the
    check that the cluster path was taken; the notes add how often the
    gateway logged that it decided admissions without Redis.

Cells are medians over C{--rounds} (3; C{--quick}: 1 round, fewer
connections); the column order rotates each round.  The table goes to
stdout and to C{bench/results/<stamp>-cluster-<mode>.md}, every sample to
the C{.json} beside it.  Every wait is bounded and every process started
here is stopped by its PID.

    .venv/bin/python bench/cluster.py [--quick] [--rounds 3] [--connects 2000] [--churn 10000]
    .venv/bin/python bench/cluster.py --columns direct,gateway-nolimits,gateway,gateway-cluster
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_proxy import Server, free_port, tree_cpu_seconds  # noqa: E402
from tests.support import GatewayProcess  # noqa: E402

COLUMNS = ("direct", "gateway-nolimits", "gateway", "gateway-cluster")
"""Every column; C{direct} runs only when C{--columns} names it."""

LIMITS = ["--max-per-ip", "1000", "--rate-per-ip", "100000"]
"""The limits of C{gateway} and C{gateway-cluster}: high enough that nothing
here is refused (20 connections at once at most, a few thousand a second),
so that every admission is checked and admitted."""

MODES = {
    "full": {"rounds": 3, "connects": 2000, "churn": 10000},
    "quick": {"rounds": 1, "connects": 500, "churn": 4000},
}
"""Each mode's defaults (C{--quick} picks the second)."""

PING = b"*1\r\n$4\r\nPING\r\n"
"""The latency client's first bytes: a RESP C{PING}."""

REDIS = os.environ.get("REDIS_SERVER", "redis-server")
BENCHMARK = os.environ.get("REDIS_BENCHMARK", "redis-benchmark")
RESULTS = Path(__file__).resolve().parent / "results"
CELL_DEADLINE = 120.0
"""Seconds one latency cell may take in all."""


# ----------------------------------------------------------------- processes


@dataclass
class Target:
    """
    One column: its port, its process' PID (none for C{direct}), the
    cluster Redis' port and PID when it uses one, and the gateway's log.
    """

    port: int
    pid: int | None
    cluster: int | None = None
    cluster_pid: int | None = None
    log: Path | None = None


def redis_server(tmp: Path, name: str) -> Server:
    """
    A C{redis-server} on a free loopback port, in its own folder, without
    persistence.
    """
    folder = tmp / name
    folder.mkdir()
    port = free_port()
    argv = [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
    argv += ["--daemonize", "no", "--maxclients", "10000", "--loglevel", "warning"]
    return Server(argv, port, tmp / f"{name}.log")


def gateway(column: str, tmp: Path, backend: int, cluster: int, stack: ExitStack) -> Target:
    """
    Start one gateway column in front of the backend.

    @param cluster: the cluster Redis' port (used by C{gateway-cluster}).
    """
    folder = tmp / column
    folder.mkdir()
    args = ["--backend", f"tcp:127.0.0.1:{backend}", "--health-interval", "0"]
    if column != "gateway-nolimits":
        args += LIMITS
    if column == "gateway-cluster":
        args += ["--cluster", f"redis://127.0.0.1:{cluster}/0", "--node-name", "bench"]
    args += os.environ.get("GATEWAY_ARGS", "").split()
    process = stack.enter_context(GatewayProcess(args, folder))
    return Target(process.port, process.pid, log=process.log_path)


def redis_calls(port: int) -> dict[str, int]:
    """
    Calls per command so far in a Redis (C{INFO commandstats}), read with a
    RESP request of our own (no client library for one command).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        data = b""
        while b"\r\n" not in data:
            data += _recv(sock)
        header, _, data = data.partition(b"\r\n")
        if not header.startswith(b"$"):
            raise RuntimeError(f"INFO answered {header[:80]!r}")
        while len(data) < int(header[1:]):
            data += _recv(sock)
    found = re.findall(rb"^cmdstat_([a-z|]+):calls=(\d+)", data, re.M)
    return {name.decode(): int(calls) for name, calls in found}


def _recv(sock: socket.socket) -> bytes:
    """
    What C{sock} has to read (blocking, within its timeout).

    @raise RuntimeError: Redis closed the connection.
    """
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("Redis closed the connection")
    return data


# ------------------------------------------------------------------ the rows


def connect_latencies(port: int, count: int) -> list[float]:
    """
    C{count} sequential new connections to 127.0.0.1:C{port}, each sending
    L{PING} at once: µs from before C{connect()} to the first byte back.

    @raise RuntimeError: a connection closed with no answer, or the cell
        took longer than L{CELL_DEADLINE}.
    """
    latencies: list[float] = []
    stop = time.monotonic() + CELL_DEADLINE
    for _ in range(count):
        if time.monotonic() > stop:
            raise RuntimeError(f"{len(latencies)} connections in {CELL_DEADLINE:g} s")
        began = time.perf_counter_ns()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(PING)
            first = sock.recv(64)
            ended = time.perf_counter_ns()
            if not first.startswith(b"+"):
                raise RuntimeError(f"the backend answered {first!r}")
        latencies.append((ended - began) / 1e3)
    return latencies


def percentile(values: list[float], share: float) -> float:
    """
    The value below which C{share} of C{values} fall (nearest rank).
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def churn(port: int, requests: int) -> float:
    """
    C{redis-benchmark -t ping -k 0 -c 20 -n requests} at 127.0.0.1:C{port},
    bounded in time: new sessions/s over its two tests together (their
    harmonic mean, as C{bench/run.sh}'s churn row).
    """
    argv = [BENCHMARK, "-h", "127.0.0.1", "-p", str(port), "-t", "ping", "-k", "0"]
    argv += ["-c", "20", "-n", str(requests), "-q"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    text = done.stdout.replace("\r", "\n")
    found = re.findall(r"^\s*(PING_[A-Z]+): ([\d.]+) requests per second", text, re.M)
    rates = [float(rate) for _, rate in found]
    if done.returncode != 0 or len(rates) != 2:
        raise RuntimeError(f"redis-benchmark rc={done.returncode}: {(text + done.stderr)[-300:]}")
    return len(rates) / sum(1 / rate for rate in rates)


# ------------------------------------------------------------------ the runs


@dataclass
class Results:
    """
    Every sample (a row's figures of one round), by column, and the errors.
    """

    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def add(self, column: str, sample: dict[str, float]) -> None:
        """
        Keep one sample of C{column}.
        """
        self.samples.setdefault(column, []).append(sample)

    def median(self, column: str, key: str) -> float | None:
        """
        The median of C{key} over C{column}'s samples that have it, or C{None}.
        """
        found = [s[key] for s in self.samples.get(column, []) if key in s]
        return statistics.median(found) if found else None


def measure_latency(target: Target, count: int) -> dict[str, float]:
    """
    The latency row of one column, once.
    """
    values = connect_latencies(target.port, count)
    return {
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values),
    }


def measure_churn(target: Target, requests: int) -> dict[str, float]:
    """
    The churn row of one column, once, with the gateway's CPU and the
    cluster Redis' commands and CPU around it.
    """
    sessions = 2 * requests
    cpu = tree_cpu_seconds(target.pid) if target.pid is not None else 0.0
    calls: dict[str, int] = {}
    redis_cpu = 0.0
    if target.cluster is not None and target.cluster_pid is not None:
        calls = redis_calls(target.cluster)
        redis_cpu = tree_cpu_seconds(target.cluster_pid)
    sample = {"rate": churn(target.port, requests)}
    if target.pid is not None:
        sample["cpu_us"] = (tree_cpu_seconds(target.pid) - cpu) / sessions * 1e6
    if target.cluster is not None and target.cluster_pid is not None:
        after = redis_calls(target.cluster)
        scripts = ("eval", "evalsha")
        sample["scripts"] = sum(after.get(c, 0) - calls.get(c, 0) for c in scripts) / sessions
        redis_cpu = tree_cpu_seconds(target.cluster_pid) - redis_cpu
        sample["redis_cpu_us"] = redis_cpu / sessions * 1e6
    return sample


def run(targets: dict[str, Target], args: argparse.Namespace) -> Results:
    """
    Both rows through every column, C{args.rounds} times, the column order
    rotating each round, after an untimed warm-up of each.
    """
    results = Results()
    names = list(targets)
    for name in names:
        try:
            connect_latencies(targets[name].port, 200)
            churn(targets[name].port, 1000)
        except Exception as error:  # noqa: BLE001 - the rounds will say more
            print(f"warm-up {name}: {type(error).__name__}: {error}"[:300], file=sys.stderr)
    rows: list[tuple[str, Callable[[Target], dict[str, float]]]] = [
        ("latency", lambda target: measure_latency(target, args.connects)),
        ("churn", lambda target: measure_churn(target, args.churn)),
    ]
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for row, measure in rows:
            for name in order:
                try:
                    sample = measure(targets[name])
                except Exception as error:  # noqa: BLE001 - the table says so
                    reason = f"{row}: {type(error).__name__}: {error}"[:300]
                    results.errors.setdefault(name, []).append(reason)
                    print(f"round {round_ + 1} {name} {reason}", file=sys.stderr)
                    continue
                results.add(name, {**sample, "round": round_ + 1})
                shown = ", ".join(f"{k} {v:.2f}" for k, v in sample.items())
                print(f"round {round_ + 1} {row:7} {name:16} {shown}", file=sys.stderr)
    return results


# ---------------------------------------------------------------- the report

_ROWS = [
    ("admission latency p50 (µs)", "p50", ".0f", "diff"),
    ("admission latency p99 (µs)", "p99", ".0f", "diff"),
    ("churn: new sessions/s", "rate", ".0f", "ratio"),
    ("gateway CPU per session (µs)", "cpu_us", ".0f", "ratio"),
    ("cluster Redis: scripts per session", "scripts", ".2f", ""),
    ("cluster Redis: CPU per session (µs)", "redis_cpu_us", ".1f", ""),
]
"""The table's rows: label, sample key, format, and how two columns compare
(the added µs, or a ratio)."""


def _compare(top: float | None, bottom: float | None, how: str) -> str:
    """
    Two columns' medians compared: C{top - bottom} in µs (C{how} is
    C{"diff"}), C{top / bottom} (C{"ratio"}), or a dash.
    """
    if top is None or bottom is None or not how:
        return "–"
    if how == "diff":
        return f"{top - bottom:+.0f} µs"
    return f"{top / bottom:.2f}×" if bottom else "–"


def report(results: Results, columns: list[str]) -> str:
    """
    The markdown table: one column per target, then gateway-cluster against
    gateway, and gateway against gateway-nolimits.
    """
    pairs = [("gateway-cluster", "gateway"), ("gateway", "gateway-nolimits")]
    pairs = [(a, b) for a, b in pairs if a in columns and b in columns]
    head = ["row", *columns, *(f"{a} vs {b}" for a, b in pairs)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, key, form, how in _ROWS:
        medians = {c: results.median(c, key) for c in columns}
        if all(m is None for m in medians.values()):
            continue
        cells = [label] + [format(m, form) if m is not None else "–" for m in medians.values()]
        cells += [_compare(medians[a], medians[b], how) for a, b in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    for column, reasons in results.errors.items():
        lines.append(f"\n{column}: {len(reasons)} failure(s), first: {reasons[0]}")
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    """
    The first line a tool prints (its version), or why it did not run.
    """
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"({error})"
    return (done.stdout + done.stderr).strip().splitlines()[0]


def machine() -> str:
    """
    The machine and the versions (for the notes).
    """
    import twisted

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _run_text(["lscpu"]).splitlines()
            if line.startswith("Model name")
        ),
        "?",
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, Twisted {twisted.__version__}; "
        f"{_first_line([REDIS, '--version'])}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def _run_text(argv: list[str]) -> str:
    """
    What a command prints on stdout, or nothing if it cannot run.
    """
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


# ---------------------------------------------------------------------- main


def start(columns: list[str], stack: ExitStack, tmp: Path) -> tuple[dict[str, Target], Results]:
    """
    Start the two Redis servers and every column.

    @return: the columns that started, and the errors of those that did not.
    """
    backend = stack.enter_context(redis_server(tmp, "backend"))
    cluster = stack.enter_context(redis_server(tmp, "cluster"))
    targets: dict[str, Target] = {}
    failed = Results()
    for column in columns:
        try:
            if column == "direct":
                targets[column] = Target(backend.port, None)
                continue
            targets[column] = gateway(column, tmp, backend.port, cluster.port, stack)
        except Exception as error:  # noqa: BLE001 - the table says so
            failed.errors[column] = [f"did not start: {str(error)[-300:]}"]
            print(f"{column} {failed.errors[column][0]}", file=sys.stderr)
            continue
        if column == "gateway-cluster":
            targets[column].cluster = cluster.port
            targets[column].cluster_pid = cluster.pid
    return targets, failed


ALONE = ("decided by this node alone, each", "does not answer")
"""What the gateway logs when it starts deciding admissions without Redis,
and when a command to Redis times out (L{gateway.cluster})."""


def without_redis(targets: dict[str, Target]) -> str:
    """
    How often each cluster column's log says it went on without Redis.
    """
    said = []
    for name, target in targets.items():
        if target.cluster is not None and target.log is not None:
            text = target.log.read_text(errors="replace")
            count = sum(map(text.count, ALONE))
            said.append(f"{name} logged going on without Redis {count} time(s)")
    return "; ".join(said)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer connections")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--connects", type=int, help="latency: sequential connections")
    parser.add_argument("--churn", type=int, help="redis-benchmark -n (2N sessions)")
    parser.add_argument("--columns", default=",".join(COLUMNS[1:]), help=", ".join(COLUMNS))
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    for key, value in MODES[mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    columns = [c for c in args.columns.split(",") if c]
    if unknown := set(columns) - set(COLUMNS):
        parser.error(f"unknown columns {sorted(unknown)}: choose from {COLUMNS}")
    about = machine()
    print(about)
    began = time.monotonic()
    # The folder outlives the stack: the servers log there until they stop.
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        targets, results = start(columns, stack, Path(name))
        measured = run(targets, args)
        alone = without_redis(targets)
        results.samples, failed = measured.samples, results.errors
        results.errors = {**failed, **measured.errors}
    notes = (
        f"{datetime.date.today().isoformat()}; {about}; latency: {args.connects} sequential "
        f"connections; churn: redis-benchmark -t ping -k 0 -c 20 -n {args.churn} "
        f"({2 * args.churn} sessions); {args.rounds} round(s), medians, the column order "
        f"rotating; {time.monotonic() - began:.0f} s; load average after "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {alone}"
    )
    table = report(results, columns)
    print(f"\n{notes}\n\n{table}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}-cluster-{mode}.md").write_text(f"{notes}\n\n{table}\n")
    raw = {"notes": notes, "samples": results.samples, "errors": results.errors}
    (RESULTS / f"{stamp}-cluster-{mode}.json").write_text(json.dumps(raw, indent=1))
    print(f"\nwrote {RESULTS / f'{stamp}-cluster-{mode}.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
