#!/usr/bin/env python3
"""
A proxied HTTP route side by side (run by hand, never in CI): the gateway's
C{[[route]] pool = "app"} against HAProxy in C{mode http} and nginx's
C{proxy_pass}, in one run, interleaved.

The app server is nginx itself (one worker, C{return 200} with a 96-byte body,
keep-alive): the fastest and steadiest backend there is, so that what the
columns differ by is the proxy.  The columns:

  - C{direct}: wrk straight at the app (the physical limit);
  - C{haproxy}: HAProxy, C{mode http}, one thread, C{option http-keep-alive}
    and C{http-reuse always} towards the app, C{option forwardfor}, no log;
  - C{nginx}: nginx, one worker, C{proxy_pass} to an C{upstream} with
    C{keepalive 32}, C{proxy_http_version 1.1}, C{Connection ""}, the
    C{X-Forwarded-For} of its docs, no access log;
  - C{gateway}: C{twistd -n gateway --config F --admin none}, with a
    C{[pool.app]} of one backend (no health checks) and C{[[route]] pool =
    "app"}.  It adds C{X-Forwarded-For}, C{-Proto}, C{-Host}, C{Forwarded}
    and C{Via} to every request, which is why the other two add
    C{X-Forwarded-For} here;
  - C{gateway-base} (only when C{--columns} names it): the same with the
    C{gateway} package of another checkout, C{GATEWAY_BASE=DIR} (first on
    C{PYTHONPATH}, same venv), for a before/after of a change in one run.

The load is C{wrk -t1 -cN -dS --latency} (keep-alive from the client, a GET
of C{/}), for each C{N} of C{--connections} (default 50; C{50,1} adds the
one-connection latency row).  Each cell: requests/s, p50 and p99 latency
(wrk's), and the proxy's CPU seconds per 10,000 requests (utime + stime of
its process tree from C{/proc}, before and after).  Cells are medians over
C{--rounds}; the column order rotates each round.  wrk, the proxy and the app
share the machine's cores.

C{--profile S} then runs wrk at the gateway once more while py-spy samples
it for C{S} seconds (500 Hz, or C{PY_SPY_RATE}; idle samples included), and prints where its time
went by area (waiting in epoll, send/recv, twisted.web's server and client,
the proxy's own modules, logging...: L{bench.profile_areas}) and the hottest
frames; C{--profile-raw FILE} keeps py-spy's profile.

Every process started here (the app, the proxies, wrk, py-spy) is stopped by
its PID, and every wait is bounded.

    .venv/bin/python bench/http_proxy.py [--rounds 3] [--duration 5] [--connections 50,1]
    .venv/bin/python bench/http_proxy.py --rounds 5 --profile 8
    GATEWAY_BASE=/tmp/main-export .venv/bin/python bench/http_proxy.py \
        --columns direct,haproxy,nginx,gateway,gateway-base
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import signal
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
from types import TracebackType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.profile_areas import profile_areas  # noqa: E402
from tests.support import GatewayProcess, wait_for  # noqa: E402

COLUMNS = ("direct", "haproxy", "nginx", "gateway", "gateway-base")
"""The columns; the ratios are gateway / haproxy, gateway / nginx and each
proxy / direct.  C{gateway-base} (the gateway of another checkout, named by
C{GATEWAY_BASE}, for a before/after in one run) runs only when C{--columns}
names it; the ratio gateway / gateway-base is then added."""

BODY = (
    "gateway bench: a small fixed response from the app server, "
    "96 bytes of text, like an API would.\n"
)
"""The app's response body (96 bytes)."""

NGINX = os.environ.get("NGINX", "nginx")
HAPROXY = os.environ.get("HAPROXY", "haproxy")
WRK = os.environ.get("WRK", "wrk")
RATE = int(os.environ.get("PY_SPY_RATE", "500"))
"""py-spy's samples per second (C{PY_SPY_RATE}, default 500)."""
PY_SPY = os.environ.get("PY_SPY", str(Path(sys.executable).with_name("py-spy")))


# ----------------------------------------------------------------- processes


def free_port() -> int:
    """
    A loopback port that was free a moment ago (nginx and HAProxy cannot
    bind port 0 and say which they got; a start that loses the race fails
    and says so).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def listening(port: int) -> bool:
    """
    Whether something accepts connections on 127.0.0.1:C{port}.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Server:
    """
    A server process (nginx, HAProxy) in its own session, listening on
    C{port}, stopped by its PID.
    """

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv = argv
        self.port = port
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """
        Its process ID (nginx's master: its worker is in its tree).
        """
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Server:
        with self._log.open("wb") as out:
            self._process = subprocess.Popen(
                self.argv, stdout=out, stderr=out, start_new_session=True
            )

        def up() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited: {self._log.read_text()[-500:]}")
            return listening(self.port)

        try:
            wait_for(up, f"{self.argv[0]} to listen")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            # nginx's master stops its worker on SIGTERM (a fast shutdown).
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)


def _nginx(tmp: Path, name: str, port: int, server: str, upstream: str = "") -> Server:
    """
    An nginx with one worker and its own prefix, config and temp folders.

    @param server: the C{server} block's directives.
    @param upstream: directives for the C{http} block (an C{upstream}).
    """
    prefix = tmp / name
    prefix.mkdir()
    temps = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{temps}
{upstream}
    server {{
        listen 127.0.0.1:{port} reuseport;
{server}
    }}
}}
"""
    )
    argv = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    return Server(argv, port, tmp / f"{name}.log")


def app_server(tmp: Path) -> Server:
    """
    The backend: nginx answering every request with L{BODY}.
    """
    server = f"""        default_type text/plain;
        location / {{ return 200 "{BODY.rstrip()}\\n"; }}"""
    return _nginx(tmp, "app", free_port(), server)


def nginx_proxy(tmp: Path, app: int) -> Server:
    """
    The C{nginx} column: C{proxy_pass} to an upstream with keep-alive.
    """
    upstream = f"""    upstream app {{
        server 127.0.0.1:{app};
        keepalive 32;
    }}"""
    server = """        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }"""
    return _nginx(tmp, "nginx", free_port(), server, upstream)


def haproxy(tmp: Path, app: int) -> Server:
    """
    The C{haproxy} column: C{mode http}, one thread, keep-alive to the app.
    """
    port = free_port()
    config = tmp / "haproxy.cfg"
    config.write_text(
        f"""global
    nbthread 1
    maxconn 4096
    # no "log" line: the bench measures forwarding, not logging

defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench_in
    bind 127.0.0.1:{port}
    default_backend app

backend app
    server app1 127.0.0.1:{app}
"""
    )
    return Server([HAPROXY, "-f", str(config), "-db"], port, tmp / "haproxy.log")


def gateway(tmp: Path, app: int, stack: ExitStack, base: str | None = None) -> tuple[int, int]:
    """
    The C{gateway} column: one proxied route to a pool of one backend (the
    game pool, which a gateway needs, is a closed port nobody uses).

    @param base: another checkout whose C{gateway} package runs instead of
        this one's (first on C{PYTHONPATH}; same venv, same Twisted).
    @return: its port and PID.
    """
    folder = tmp / ("gateway" if base is None else "gateway-base")
    folder.mkdir()
    config = folder / "gateway.toml"
    config.write_text(
        f"""health-interval = 0
[[backend]]
endpoint = "tcp:127.0.0.1:{free_port()}"

[pool.app]
health-interval = 0

[[backend]]
name = "app-1"
pool = "app"
endpoint = "tcp:127.0.0.1:{app}"

[[route]]
pool = "app"
"""
    )
    extra = os.environ.get("GATEWAY_ARGS", "").split()
    saved = os.environ.get("PYTHONPATH")
    if base is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [base, saved]))
    try:
        process = stack.enter_context(GatewayProcess(["--config", str(config), *extra], folder))
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return process.port, process.pid


def _stat_fields(pid: int) -> list[str] | None:
    """
    The fields of C{/proc/PID/stat} after the command name, or C{None}.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_cpu_seconds(root: int) -> float:
    """
    CPU seconds used so far by C{root} and its descendants (utime + stime
    of each, plus what each has reaped: cutime + cstime).
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        fields = _stat_fields(pid)
        if fields is not None:
            total += sum(int(value) for value in fields[11:15])  # fields 14-17
        todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------ wrk

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _micros(text: str) -> float:
    """
    A wrk duration (C{812.00us}, C{1.23ms}, C{2.00s}) in µs.
    """
    found = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found[1]) * _UNITS[found[2]]


def parse_wrk(output: str) -> dict[str, float]:
    """
    What wrk printed: requests, req/s, p50 and p99 (µs), and the count of
    failed requests (socket errors and non-2xx answers).

    @raise ValueError: wrk's output lacks a figure.
    """
    figures: dict[str, float] = {"errors": 0.0}
    for line in output.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            figures["rps"] = float(words[1])
        elif len(words) >= 2 and words[0] in ("50%", "99%"):
            figures["p" + words[0][:-1]] = _micros(words[1])
        elif "requests in" in line:
            figures["requests"] = float(words[0])
        elif line.strip().startswith(("Socket errors:", "Non-2xx")):
            figures["errors"] += sum(int(n) for n in re.findall(r"\d+", line.split(":", 1)[1]))
    missing = {"rps", "p50", "p99", "requests"} - set(figures)
    if missing:
        raise ValueError(f"wrk printed no {sorted(missing)}: {output[-400:]!r}")
    return figures


def wrk(port: int, connections: int, duration: int) -> dict[str, float]:
    """
    One wrk run (one thread, keep-alive) at 127.0.0.1:C{port}, bounded in
    time.
    """
    argv = [WRK, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    done = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    )
    return parse_wrk(done.stdout)


# ------------------------------------------------------------------ the runs


@dataclass
class Sample:
    """
    One wrk run through one column: wrk's figures and the proxy's CPU.
    """

    values: dict[str, float]
    proxy_cpu: float = 0.0


@dataclass
class Results:
    """
    Every sample, by column and load (connections), and the errors.
    """

    samples: dict[str, dict[int, list[Sample]]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def add(self, column: str, load: int, sample: Sample) -> None:
        self.samples.setdefault(column, {}).setdefault(load, []).append(sample)

    def median(self, column: str, load: int, pick: Callable[[Sample], float]) -> float | None:
        found = self.samples.get(column, {}).get(load, [])
        return statistics.median(pick(s) for s in found) if found else None


def measure(port: int, pid: int | None, connections: int, duration: int) -> Sample:
    """
    One wrk run with the proxy's CPU around it (none for C{direct}).
    """
    before = tree_cpu_seconds(pid) if pid is not None else 0.0
    values = wrk(port, connections, duration)
    cpu = tree_cpu_seconds(pid) - before if pid is not None else 0.0
    return Sample(values, cpu)


def run(targets: dict[str, tuple[int, int | None]], args: argparse.Namespace) -> Results:
    """
    Every load through every column, C{args.rounds} times, the column order
    rotating each round, after an untimed warm-up of each.

    @param targets: column name to (port, the proxy's PID or None).
    """
    results = Results()
    names = list(targets)
    for name in names if args.warmup > 0 else []:
        try:
            wrk(targets[name][0], max(args.connections), args.warmup)
        except Exception as error:  # noqa: BLE001 - the rounds will say more
            print(f"warm-up {name}: {type(error).__name__}: {error}"[:300], file=sys.stderr)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            port, pid = targets[name]
            for load in args.connections:
                try:
                    sample = measure(port, pid, load, args.duration)
                except Exception as error:  # noqa: BLE001 - the table says so
                    reason = f"-c{load}: {type(error).__name__}: {error}"[:300]
                    results.errors.setdefault(name, []).append(reason)
                    print(f"round {round_ + 1} {name} {reason}", file=sys.stderr)
                    continue
                results.add(name, load, sample)
                v = sample.values
                print(
                    f"round {round_ + 1} {name:8} -c{load:<3} {v['rps']:9.0f} req/s, "
                    f"p50 {v['p50']:7.0f} µs, p99 {v['p99']:7.0f} µs, "
                    f"proxy CPU {sample.proxy_cpu:5.2f} s, errors {v['errors']:.0f}",
                    file=sys.stderr,
                )
    return results


# ---------------------------------------------------------------- the report


def _rows(load: int) -> list[tuple[str, Callable[[Sample], float], str]]:
    """
    A load's rows: label, what to take from a sample, format.
    """
    return [
        (f"-c{load}: requests/s", lambda s: s.values["rps"], ".0f"),
        (f"-c{load}: latency p50 (µs)", lambda s: s.values["p50"], ".0f"),
        (f"-c{load}: latency p99 (µs)", lambda s: s.values["p99"], ".0f"),
        (
            f"-c{load}: proxy CPU per 10k requests (s)",
            lambda s: s.proxy_cpu / s.values["requests"] * 1e4,
            ".3f",
        ),
    ]


def _ratio(top: float | None, bottom: float | None) -> str:
    return f"{top / bottom:.2f}×" if top and bottom else "–"


def report(results: Results, columns: list[str], args: argparse.Namespace) -> str:
    """
    The markdown table: one column per target, then gateway / haproxy,
    gateway / nginx, and haproxy, nginx and gateway against direct.
    """
    ratios = [("gateway", "haproxy"), ("gateway", "nginx"), ("gateway", "gateway-base")]
    ratios += [(c, "direct") for c in ("haproxy", "nginx", "gateway")]
    ratios = [(a, b) for a, b in ratios if a in columns and b in columns]
    head = ["row", *columns] + [f"{a} / {b}" for a, b in ratios]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for load in args.connections:
        for label, pick, form in _rows(load):
            cpu = "CPU" in label
            medians = {c: results.median(c, load, pick) for c in columns}
            cells = [label] + [
                "–" if cpu and c == "direct" else format(m, form) if m is not None else "error"
                for c, m in medians.items()
            ]
            cells += [
                "–" if cpu and b == "direct" else _ratio(medians[a], medians[b]) for a, b in ratios
            ]
            lines.append("| " + " | ".join(cells) + " |")
    failed = sum(
        s.values["errors"]
        for loads in results.samples.values()
        for samples in loads.values()
        for s in samples
    )
    lines.append(f"\nfailed requests (socket errors, non-2xx), all cells: {failed:.0f}")
    for column, reasons in results.errors.items():
        lines.append(f"{column}: {len(reasons)} failure(s), first: {reasons[0]}")
    return "\n".join(lines)


def _version(argv: list[str]) -> str:
    """
    The first line a tool prints about its version (stdout or stderr).
    """
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"({error})"
    return (done.stdout + done.stderr).strip().splitlines()[0]


def machine() -> str:
    """
    The machine, the tools' versions and the load average (for the notes).
    """
    import twisted

    return (
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python "
        f"{platform.python_version()}, Twisted {twisted.__version__}; "
        f"{_version([HAPROXY, '-v'])}; {_version([NGINX, '-v'])}; {_version([WRK, '-v'])}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


# ------------------------------------------------------------------ the profile


def profile(port: int, pid: int, seconds: int, raw: Path, connections: int) -> str:
    """
    Sample the gateway with py-spy while wrk loads it; the summary by area.

    @param raw: where py-spy writes the profile (C{--format raw}).
    """
    spy = [PY_SPY, "record", "-p", str(pid), "-d", f"{seconds:g}", "-r", str(RATE), "--idle"]
    # Blocking (py-spy's default): the gateway is paused for each sample.
    # That costs it some throughput, but --nonblocking, reading the stack of
    # a process at 100% of a core, lost more than half the samples here, and
    # not evenly (the access log went from 15% to 2%).
    spy += ["--format", "raw", "-o", str(raw)]
    with subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as sampler:
        try:
            time.sleep(0.5)
            load = measure(port, pid, connections, seconds + 1)
            sampler.wait(timeout=seconds + 30)
        finally:
            if sampler.poll() is None:
                sampler.kill()
                sampler.wait(timeout=10)
        if sampler.returncode != 0 or not raw.exists():
            assert sampler.stderr is not None
            return f"py-spy failed: {sampler.stderr.read().decode(errors='replace')[-500:]}"
    total, busy, areas, hottest = profile_areas(raw)
    lines = [
        f"py-spy, {seconds:g} s at {RATE} Hz (idle included) during wrk -t1 -c{connections}: "
        f"{load.values['rps']:.0f} req/s, gateway CPU {load.proxy_cpu:.2f} s; "
        f"{total} samples, {busy} busy (not in epoll_wait)",
        "",
        "| area | % of samples | % of busy samples |",
        "|---|---:|---:|",
    ]
    for area, count in areas:
        share = "–" if "epoll_wait" in area else f"{100 * count / busy:.1f}"
        lines.append(f"| {area} | {100 * count / total:.1f} | {share} |")
    lines += ["", "hottest frames (own time, % of samples):"]
    lines += [f"  {100 * count / total:5.1f}%  {frame}" for frame, count in hottest]
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def _start(column: str, app: int, stack: ExitStack, tmp: Path) -> tuple[int, int | None]:
    """
    Start one column's proxy in front of the app.

    @return: its port and PID (no PID for C{direct}).
    """
    if column == "direct":
        return app, None
    if column == "gateway":
        return gateway(tmp, app, stack)
    if column == "gateway-base":
        base = os.environ.get("GATEWAY_BASE")
        if not base or not (Path(base) / "gateway" / "__init__.py").exists():
            raise RuntimeError("GATEWAY_BASE must name a checkout of the gateway")
        return gateway(tmp, app, stack, str(Path(base).resolve()))
    server = stack.enter_context(
        haproxy(tmp, app) if column == "haproxy" else nginx_proxy(tmp, app)
    )
    return server.port, server.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed seconds per column")
    parser.add_argument("--connections", default="50", help="wrk -c, one load each: 50,1")
    parser.add_argument("--columns", default=",".join(COLUMNS[:4]), help=", ".join(COLUMNS))
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds (0: none)")
    parser.add_argument("--profile-raw", type=Path, help="keep py-spy's raw profile here")
    args = parser.parse_args()
    columns = [c for c in args.columns.split(",") if c]
    if unknown := set(columns) - set(COLUMNS):
        parser.error(f"unknown columns {sorted(unknown)}: choose from {COLUMNS}")
    if "gateway-base" in columns and not os.environ.get("GATEWAY_BASE"):
        parser.error("the gateway-base column needs GATEWAY_BASE, a checkout's folder")
    args.connections = [int(n) for n in args.connections.split(",") if n]
    if args.profile and "gateway" not in columns:
        parser.error("--profile needs the gateway column")
    print(machine())
    began = time.monotonic()
    profiled = ""
    # The folder outlives the stack: the servers log there until they stop.
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        tmp = Path(name)
        app = stack.enter_context(app_server(tmp))
        targets: dict[str, tuple[int, int | None]] = {}
        failed: dict[str, list[str]] = {}
        for column in columns:
            try:
                targets[column] = _start(column, app.port, stack, tmp)
            except Exception as error:  # noqa: BLE001 - the table says so
                failed[column] = [f"did not start: {str(error)[-300:]}"]
                print(f"{column} {failed[column][0]}", file=sys.stderr)
        results = run(targets, args)
        results.errors.update(failed)
        if args.profile and "gateway" in targets:
            port, pid = targets["gateway"]
            assert pid is not None
            raw = args.profile_raw or tmp / "profile.txt"
            profiled = profile(port, pid, args.profile, raw, max(args.connections))
    print(
        f"{datetime.date.today().isoformat()}; wrk -t1 -d{args.duration:g}s keep-alive, "
        f"{len(BODY)}-byte responses; {args.rounds} round(s), medians, the column order "
        f"rotating; {time.monotonic() - began:.0f} s; load average after "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(report(results, columns, args))
    if profiled:
        print()
        print(profiled)


if __name__ == "__main__":
    main()
