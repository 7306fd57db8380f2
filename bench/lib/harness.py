#!/usr/bin/env python3
"""Side-by-side TCP proxy benchmark (see bench/README.md). Started by bench/run.sh.

For each workload the harness starts one backend, one instance of every
available proxy in front of it, and then runs the load against every proxy in
turn, ROUNDS times, rotating the order each round, so that all columns see
the same machine state (a noisy neighbour hits every column, not one). Cells
are medians over rounds; a measurement that fails becomes "error: reason" in
its cell and the run goes on.

Only loopback addresses are used; every client run is bounded in count and
wall-clock time; every process is stopped by the PID we got when starting it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procutil import (BenchError, PortAllocator, Proc, cpu_seconds,  # noqa: E402
                      nofile_limits, raise_nofile, rss_kb, wait_free, wait_listening)

BENCH = Path(__file__).resolve().parent.parent
LIB = BENCH / "lib"
ADAPTERS = BENCH / "proxies"

DEFAULT_PROXIES = ["direct", "haproxy", "twisted-portforward", "gateway", "gateway-copy"]
SUBJECT = os.environ.get("BENCH_SUBJECT", "gateway")  # the column the ratio columns are about
REFERENCES = ["haproxy", "direct"]

MODES = {
    # rounds: every (workload, proxy) cell is measured this many times, interleaved.
    "full": dict(rounds=3, redis_n=50000, redis_pn=500000, churn_n=10000, iperf_t=5,
                 idle_ks=[2000, 10000], ping_m=20000),
    "quick": dict(rounds=1, redis_n=20000, redis_pn=200000, churn_n=4000, iperf_t=3,
                  idle_ks=[2000, 10000], ping_m=5000),
}
WORKLOADS = ["redis", "churn", "bulk", "idle", "latency"]
REDIS_TESTS = ["PING_INLINE", "PING_MBULK", "SET", "GET"]


# ----------------------------------------------------------------------------- rows

@dataclass
class Row:
    key: str
    label: str
    kind: str  # formatting: rate, gbit, us, kb, mb, s_per_gb, sessions
    samples: dict = field(default_factory=dict)  # proxy -> list of float
    errors: dict = field(default_factory=dict)   # proxy -> list of str
    notes: dict = field(default_factory=dict)    # proxy -> str (n/a cells)

    def add(self, proxy: str, value: float) -> None:
        self.samples.setdefault(proxy, []).append(value)

    def error(self, proxy: str, reason: str) -> None:
        self.errors.setdefault(proxy, []).append(reason)

    def median(self, proxy: str):
        vals = self.samples.get(proxy)
        return statistics.median(vals) if vals else None


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def row(self, key: str, label: str, kind: str) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, kind)
        return self.rows[key]


# -------------------------------------------------------------------------- context

class Ctx:
    def __init__(self, args) -> None:
        self.mode = args.mode
        self.p = dict(MODES[args.mode])
        if args.rounds:
            self.p["rounds"] = args.rounds
        self.workloads = args.only.split(",") if args.only else WORKLOADS
        for w in self.workloads:
            if w not in WORKLOADS:
                sys.exit(f"harness: unknown workload {w!r}; choose from {','.join(WORKLOADS)}")
        names = os.environ.get("BENCH_PROXIES")
        self.proxies = names.split(",") if names else list(DEFAULT_PROXIES)
        self.tmp = Path(os.environ.get("BENCH_TMPDIR") or tempfile.mkdtemp(prefix="bench."))
        self.logdir = self.tmp / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.ports = PortAllocator(int(os.environ.get("BENCH_PORT_BASE", "24000")))
        self.py = sys.executable
        self.res = Results()
        self.available: dict[str, str] = {}    # name -> version line
        self.unavailable: dict[str, str] = {}  # name -> reason
        self.footnotes: list[str] = []
        self.t0 = time.monotonic()
        self.env = dict(os.environ, BENCH_TMPDIR=str(self.tmp))

    def log(self, msg: str) -> None:
        el = int(time.monotonic() - self.t0)
        print(f"[{el // 60:02d}:{el % 60:02d}] {msg}", file=sys.stderr, flush=True)

    def order(self, names: list[str], rnd: int) -> list[str]:
        """Rotate the proxy order each round so no column always runs first or last."""
        if not names:
            return names
        k = rnd % len(names)
        return names[k:] + names[:k]


# ------------------------------------------------------------------------ processes

_clients: set[subprocess.Popen] = set()


def run_client(ctx: Ctx, argv: list[str], timeout: float, name: str | None = None) -> tuple[int, str]:
    """Run a load client to completion (bounded by TIMEOUT); return (rc, output)."""
    name = name or Path(argv[0]).name
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True, env=ctx.env)
    _clients.add(p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.communicate()
        _clients.discard(p)
        raise BenchError(f"{name} timed out after {timeout:.0f}s")
    # on any other exception (an interrupt) P stays in _clients for kill_clients()
    _clients.discard(p)
    return p.returncode, out.decode(errors="replace")


def kill_clients() -> None:
    for p in list(_clients):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def last_line(text: str) -> str:
    lines = [l.strip() for l in re.split(r"[\r\n]+", text) if l.strip()]
    return lines[-1][:160] if lines else "(no output)"


def start_backend(ctx: Ctx, name: str, argv: list[str], ports: list[int]) -> Proc:
    p = Proc(name, argv, ctx.logdir, env=ctx.env)
    for port in ports:
        wait_listening(port, p, timeout=15, what=name)
    return p


def start_proxy(ctx: Ctx, name: str, backend_port: int) -> tuple[Proc | None, int]:
    """Start adapter NAME in front of 127.0.0.1:BACKEND_PORT; return (proc, port to load)."""
    if name == "direct":
        return None, backend_port
    port = ctx.ports.take()
    argv = [str(ADAPTERS / f"{name}.sh"), str(port), f"127.0.0.1:{backend_port}"]
    p = Proc(f"{name}.{port}", argv, ctx.logdir, env=ctx.env)
    try:
        wait_listening(port, p, timeout=30, what=name)
    except BenchError:
        p.stop()
        raise
    return p, port


def start_all(ctx: Ctx, names: list[str], backend_port: int, rows: list[Row]):
    """One instance of every available proxy; failures become error cells in ROWS."""
    running = {}
    for name in names:
        try:
            running[name] = start_proxy(ctx, name, backend_port)
        except BenchError as e:
            ctx.log(f"  {name}: failed to start: {e}")
            for r in rows:
                r.error(name, f"start failed: {e}")
    return running


def check_alive(name: str, proc: Proc | None) -> None:
    if proc is not None and not proc.alive():
        raise BenchError(f"{name} died (status {proc.popen.returncode})"
                         + (f": {proc.last_log_line()}" if proc.last_log_line() else ""))


def stop_all(running: dict) -> None:
    for name, (proc, port) in running.items():
        if proc is not None:
            proc.stop()


def read_tagged_line(proc: Proc, timeout: float) -> tuple[str, dict]:
    """Read one 'TAG {json}' line from PROC's stdout within TIMEOUT seconds."""
    fd = proc.popen.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{proc.name}: no answer within {timeout:.0f}s")
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise BenchError(f"{proc.name} exited: {proc.last_log_line() or 'no output'}")
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode(errors="replace")
    tag, _, payload = line.partition(" ")
    try:
        data = json.loads(payload) if payload else {}
    except json.JSONDecodeError:
        data = {"raw": payload}
    return tag, data


# ------------------------------------------------------------------------ workloads

def wl_redis(ctx: Ctx, names: list[str], which: str) -> None:
    """1. small-message request/response and 2. connection churn, via redis-benchmark."""
    R = ctx.p["rounds"]
    if which == "redis":
        variants = [("", ctx.p["redis_n"], []), (", -P 16", ctx.p["redis_pn"], ["-P", "16"])]
        rows = {(v[0], t): ctx.res.row(f"redis{v[0]}:{t}",
                                        f"redis {t}, c=50{v[0] or ', no pipelining'} (req/s)",
                                        "rate")
                for v in variants for t in REDIS_TESTS}
    else:
        n = ctx.p["churn_n"]
        rows = {"churn": ctx.res.row("churn", "connection churn: new sessions/s "
                                     "(redis PING, -k 0, c=20)", "rate")}
    all_rows = list(rows.values())
    for tool in ("redis-server", "redis-benchmark"):
        if not shutil.which(tool):
            for r in all_rows:
                for nm in names:
                    r.error(nm, f"{tool} not installed")
            return
    rport = ctx.ports.take()
    try:
        redis = start_backend(ctx, "redis-server", [
            "redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
            "--maxclients", "10000", "--loglevel", "warning"], [rport])
    except BenchError as e:
        for r in all_rows:
            for nm in names:
                r.error(nm, f"backend: {e}")
        return
    running = start_all(ctx, names, rport, all_rows)
    live = [n for n in names if n in running]

    def bench(name: str, extra: list[str], n: int, tests: str = "ping,set,get",
              c: int = 50) -> dict:
        proc, port = running[name]
        check_alive(name, proc)
        argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", tests,
                "-n", str(n), "-c", str(c), "-q"] + extra
        rc, out = run_client(ctx, argv, timeout=240)
        got = dict(re.findall(r"^([A-Z_]+): ([\d.]+) requests per second", out.replace("\r", "\n"),
                              re.M))
        if rc != 0 or not got:
            raise BenchError(f"redis-benchmark rc={rc}: {last_line(out)}")
        return {k: float(v) for k, v in got.items()}

    try:
        for name in live:  # warm-up: first connections, lazy allocations, page faults
            try:
                bench(name, [], 2000, tests="ping")
            except BenchError as e:
                ctx.log(f"  warm-up {name}: {e}")
        for rnd in range(R):
            for name in ctx.order(live, rnd):
                if which == "redis":
                    for suffix, n, extra in variants:
                        try:
                            got = bench(name, extra, n)
                            for t in REDIS_TESTS:
                                if t in got:
                                    rows[(suffix, t)].add(name, got[t])
                                else:
                                    rows[(suffix, t)].error(name, "no result line")
                            ctx.log(f"redis{suffix or ''} round {rnd + 1}/{R} {name}: "
                                    + " ".join(f"{t}={got.get(t, 0):.0f}" for t in REDIS_TESTS))
                        except BenchError as e:
                            for t in REDIS_TESTS:
                                rows[(suffix, t)].error(name, str(e))
                            ctx.log(f"redis{suffix} round {rnd + 1}/{R} {name}: error: {e}")
                else:
                    try:
                        got = bench(name, ["-k", "0"], n, tests="ping", c=20)
                        rates = [got[t] for t in ("PING_INLINE", "PING_MBULK") if t in got]
                        # total sessions over total time = harmonic mean of the two tests
                        value = len(rates) / sum(1.0 / r for r in rates)
                        rows["churn"].add(name, value)
                        ctx.log(f"churn round {rnd + 1}/{R} {name}: {value:.0f} sessions/s")
                    except BenchError as e:
                        rows["churn"].error(name, str(e))
                        ctx.log(f"churn round {rnd + 1}/{R} {name}: error: {e}")
    finally:
        stop_all(running)
        redis.stop()


def wl_bulk(ctx: Ctx, names: list[str]) -> None:
    """3. bulk throughput with iperf3, both directions, plus the proxy's CPU cost."""
    R, t = ctx.p["rounds"], ctx.p["iperf_t"]
    rows = {
        "fwd": ctx.res.row("bulk:fwd", f"bulk client→server, iperf3 -t {t} (Gbit/s)", "gbit"),
        "rev": ctx.res.row("bulk:rev", f"bulk server→client, iperf3 -t {t} -R (Gbit/s)", "gbit"),
        "fwd_cpu": ctx.res.row("bulk:fwd_cpu", "bulk client→server: proxy CPU (s per GB)",
                               "s_per_gb"),
        "rev_cpu": ctx.res.row("bulk:rev_cpu", "bulk server→client: proxy CPU (s per GB)",
                               "s_per_gb"),
    }
    for key in ("fwd_cpu", "rev_cpu"):
        rows[key].notes["direct"] = "n/a (no proxy)"
    if not shutil.which("iperf3"):
        for r in rows.values():
            for nm in names:
                r.error(nm, "iperf3 not installed")
        return
    iport = ctx.ports.take()
    try:
        server = start_backend(ctx, "iperf3-server",
                               ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iport)], [iport])
    except BenchError as e:
        for r in rows.values():
            for nm in names:
                r.error(nm, f"backend: {e}")
        return
    running = start_all(ctx, names, iport, list(rows.values()))
    live = [n for n in names if n in running]

    def one(name: str, reverse: bool) -> tuple[float, float | None]:
        proc, port = running[name]
        check_alive(name, proc)
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(t), "-J",
                "--connect-timeout", "5000"] + (["-R"] if reverse else [])
        for attempt in range(3):
            c0 = cpu_seconds(proc.pid) if proc else 0.0
            rc, out = run_client(ctx, argv, timeout=t + 30)
            c1 = cpu_seconds(proc.pid) if proc else 0.0
            try:
                d = json.loads(out)
            except json.JSONDecodeError:
                raise BenchError(f"iperf3 rc={rc}: {last_line(out)}")
            err = d.get("error")
            if err and "busy" in err and attempt < 2:
                time.sleep(1.0)  # the server is still tearing down the previous test
                continue
            if err or rc != 0:
                raise BenchError(f"iperf3: {err or f'rc={rc}'}")
            recv = d["end"]["sum_received"]
            gbit = recv["bits_per_second"] / 1e9
            cpu = (c1 - c0) / (recv["bytes"] / 1e9) if proc and recv["bytes"] else None
            return gbit, cpu
        raise BenchError("iperf3 server stayed busy")

    try:
        for rnd in range(R):
            for name in ctx.order(live, rnd):
                for direction in ("fwd", "rev"):
                    try:
                        gbit, cpu = one(name, direction == "rev")
                        rows[direction].add(name, gbit)
                        if cpu is not None:
                            rows[direction + "_cpu"].add(name, cpu)
                        ctx.log(f"bulk {direction} round {rnd + 1}/{R} {name}: {gbit:.2f} Gbit/s"
                                + (f", proxy {cpu:.3f} CPU-s/GB" if cpu is not None else ""))
                    except BenchError as e:
                        rows[direction].error(name, str(e))
                        if name != "direct":
                            rows[direction + "_cpu"].error(name, str(e))
                        ctx.log(f"bulk {direction} round {rnd + 1}/{R} {name}: error: {e}")
    finally:
        stop_all(running)
        server.stop()


def wl_latency(ctx: Ctx, names: list[str]) -> None:
    """5. ping-pong latency of 64-byte messages over one connection."""
    R, M = ctx.p["rounds"], ctx.p["ping_m"]
    rows = {
        "p50": ctx.res.row("lat:p50", f"latency p50, 64 B ping-pong × {M} (µs)", "us"),
        "p99": ctx.res.row("lat:p99", f"latency p99, 64 B ping-pong × {M} (µs)", "us"),
    }
    eport = ctx.ports.take()
    try:
        echo = start_backend(ctx, "echo-server", [ctx.py, str(LIB / "echo_server.py"),
                                                  str(eport)], [eport])
    except BenchError as e:
        for r in rows.values():
            for nm in names:
                r.error(nm, f"backend: {e}")
        return
    running = start_all(ctx, names, eport, list(rows.values()))
    live = [n for n in names if n in running]
    try:
        for rnd in range(R):
            for name in ctx.order(live, rnd):
                proc, port = running[name]
                try:
                    check_alive(name, proc)
                    rc, out = run_client(ctx, [ctx.py, str(LIB / "pingpong.py"), "--port",
                                               str(port), "--count", str(M), "--warmup", "500",
                                               "--size", "64", "--deadline", "90"], timeout=120)
                    d = json.loads(last_line(out)) if out.strip() else {}
                    if rc != 0 or "error" in d or "p50_us" not in d:
                        raise BenchError(d.get("error") or f"pingpong rc={rc}: {last_line(out)}")
                    rows["p50"].add(name, d["p50_us"])
                    rows["p99"].add(name, d["p99_us"])
                    ctx.log(f"latency round {rnd + 1}/{R} {name}: p50={d['p50_us']:.1f}µs "
                            f"p99={d['p99_us']:.1f}µs")
                except (BenchError, json.JSONDecodeError) as e:
                    for r in rows.values():
                        r.error(name, str(e))
                    ctx.log(f"latency round {rnd + 1}/{R} {name}: error: {e}")
    finally:
        stop_all(running)
        echo.stop()


def rss_sample(pid: int) -> int:
    vals = []
    for _ in range(3):
        vals.append(rss_kb(pid))
        time.sleep(0.2)
    return int(statistics.median(vals))


def wl_idle(ctx: Ctx, names: list[str]) -> None:
    """4. memory per idle connection: proxy RSS before/after K connections."""
    R = ctx.p["rounds"]
    soft, hard = nofile_limits()
    overhead = 300  # listeners, epoll, pipes, logs, interpreter files
    ks = list(ctx.p["idle_ks"])
    planned = set(ks)
    plan: list[tuple[int, Row]] = []
    base_row = ctx.res.row("idle:base", "idle: proxy RSS at start, no connections (MB)", "mb")
    base_row.notes["direct"] = "n/a (no proxy)"
    for k in ks:
        row = ctx.res.row(f"idle:{k}", f"idle memory, K={k} connections (KB per connection)",
                          "kb")
        row.notes["direct"] = "n/a (no proxy)"
        need = 2 * k + overhead
        if need > hard:
            why = f"fd limit: needs ~{need} fds, hard limit {hard}"
            long = (f"Idle K={k} was not run: a proxy holds two descriptors per proxied "
                    f"connection, so it needs about {need} open files, but the hard "
                    f"RLIMIT_NOFILE here is {hard}")
            note = os.environ.get("BENCH_NOFILE_NOTE")
            long += f" ({note})." if note else "."
            ctx.footnotes.append(long)
            for nm in names:
                if nm != "direct":
                    row.error(nm, why)
            ctx.log(f"idle K={k}: skipped: {long}")
            kfit = (hard - overhead) // 2 // 1000 * 1000
            if kfit > 0 and kfit not in planned:
                planned.add(kfit)
                frow = ctx.res.row(f"idle:{kfit}", f"idle memory, K={kfit} connections, the "
                                   f"largest under the fd limit (KB per connection)", "kb")
                frow.notes["direct"] = "n/a (no proxy)"
                plan.append((kfit, frow))
            continue
        plan.append((k, row))
    names = [n for n in names if n != "direct"]
    if not plan or not names:
        return
    dport, cport = ctx.ports.take(), ctx.ports.take()
    try:
        holder = start_backend(ctx, "hold-server", [ctx.py, str(LIB / "hold_server.py"),
                                                    str(dport), str(cport)], [dport, cport])
    except BenchError as e:
        for _, row in plan:
            for nm in names:
                row.error(nm, f"backend: {e}")
        return
    try:
        for k, row in plan:
            for rnd in range(R):
                for name in ctx.order(names, rnd):
                    proc = client = None
                    try:
                        proc, port = start_proxy(ctx, name, dport)
                        time.sleep(0.5)
                        rss0 = rss_sample(proc.pid)
                        client = Proc(f"idle-client.{name}.{k}",
                                      [ctx.py, str(LIB / "idle_conns.py"), "--port", str(port),
                                       "--control-port", str(cport), "--count", str(k),
                                       "--timeout", "60", "--hold", "120"],
                                      ctx.logdir, env=ctx.env, stdin=subprocess.PIPE,
                                      stdout_pipe=True)
                        tag, d = read_tagged_line(client, 120)
                        if tag != "READY":
                            raise BenchError(d.get("error") or f"idle client said {tag} {d}")
                        time.sleep(1.0)
                        check_alive(name, proc)
                        rss1 = rss_sample(proc.pid)
                        client.popen.stdin.write(b"close\n")
                        client.popen.stdin.flush()
                        tag2, d2 = read_tagged_line(client, 45)
                        if tag2 != "DONE" or d2.get("backend_left") or d2.get("lost_while_idle"):
                            ctx.log(f"  note: after closing, the idle client said {tag2} {d2}")
                        per_conn = (rss1 - rss0) / k
                        row.add(name, per_conn)
                        if k == plan[0][0]:
                            base_row.add(name, rss0 / 1024)
                        ctx.log(f"idle K={k} round {rnd + 1}/{R} {name}: RSS {rss0 / 1024:.1f} → "
                                f"{rss1 / 1024:.1f} MB = {per_conn:.2f} KB/conn "
                                f"(connect {d.get('connect_s')}s, settled {d.get('settle_s')}s)")
                    except BenchError as e:
                        row.error(name, str(e))
                        ctx.log(f"idle K={k} round {rnd + 1}/{R} {name}: error: {e}")
                    finally:
                        if client is not None:
                            client.stop()
                        if proc is not None:
                            proc.stop()
    finally:
        holder.stop()


# ------------------------------------------------------------------------ rendering

def fmt(kind: str, v: float) -> str:
    if kind == "rate":
        if v >= 1e6:
            return f"{v / 1e6:.2f}M"
        if v >= 1e4:
            return f"{v / 1e3:.1f}k"
        return f"{v:,.0f}"
    if kind == "gbit":
        return f"{v:.2f}"
    if kind in ("us", "kb", "mb"):
        return f"{v:.1f}" if v >= 10 or kind == "mb" else f"{v:.2f}"
    if kind == "s_per_gb":
        return f"{v:.3f}"
    return f"{v:.3g}"


def cell(ctx: Ctx, row: Row, name: str) -> str:
    if name in ctx.unavailable:
        return "not available"
    if name in row.notes:
        return row.notes[name]
    m = row.median(name)
    errs = row.errors.get(name, [])
    if m is None:
        return f"error: {errs[0]}" if errs else "–"
    s = fmt(row.kind, m)
    if errs:
        s += f" ({len(errs)} error{'s' if len(errs) > 1 else ''}: {errs[0][:60]})"
    return s


def ratio(row: Row, a: str, b: str) -> str:
    ma, mb = row.median(a), row.median(b)
    if ma is None or mb is None or mb == 0:
        return "–"
    return f"{ma / mb:.2f}×"


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{os.cpu_count()} × {cpu}{mem}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "not installed"


def render(ctx: Ctx, started: dt.datetime, wall: float, interrupted: bool) -> str:
    cols = ctx.proxies
    ratio_cols = [(SUBJECT, ref) for ref in REFERENCES if SUBJECT in cols]
    subject_ok = SUBJECT in ctx.available
    p = ctx.p
    out = []
    out.append(f"# Proxy benchmark — {started:%Y-%m-%d %H:%M} UTC"
               + (" (INTERRUPTED, partial)" if interrupted else ""))
    out.append("")
    cmd = "bench/run.sh" + (" --quick" if ctx.mode == "quick" else "")
    if ctx.workloads != WORKLOADS:
        cmd += " --only " + ",".join(ctx.workloads)
    out.append(f"- Command: `{cmd}` — mode **{ctx.mode}**, {p['rounds']} round(s) per cell, interleaved "
               f"(proxy order rotated each round); cells are medians; wall time {wall / 60:.1f} min.")
    out.append(f"- Machine: {machine()}. Client, proxy and backend all share these cores "
               f"(loopback only).")
    out.append(f"- Tools: {tool_version(['redis-benchmark', '--version'])}; "
               f"{tool_version(['iperf3', '--version'])}.")
    out.append("- Proxies:")
    for name in cols:
        if name in ctx.available:
            out.append(f"  - **{name}**: {ctx.available[name]}")
        else:
            out.append(f"  - **{name}**: not available — {ctx.unavailable.get(name, '?')}")
    out.append("")
    head = ["workload"] + cols + [f"{a} / {b}" for a, b in ratio_cols]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for row in ctx.res.rows.values():
        cells = [row.label] + [cell(ctx, row, n) for n in cols]
        for a, b in ratio_cols:
            cells.append(ratio(row, a, b) if subject_ok else "–")
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out.append("")
    if ratio_cols:
        out.append(f"Ratios are {SUBJECT}'s median divided by the other column's median: above "
                   f"1× is better for rates and Gbit/s, worse for latency, CPU and memory."
                   + ("" if subject_ok else f" ({SUBJECT} not available in this run.)"))
    for note in ctx.footnotes:
        out.append("")
        out.append(note)
    out.append("")
    out.append("<details><summary>All samples (in run order)</summary>")
    out.append("")
    out.append("| workload | " + " | ".join(c for c in cols if c in ctx.available) + " |")
    out.append("|---|" + "|".join("---" for c in cols if c in ctx.available) + "|")
    for row in ctx.res.rows.values():
        cells = [row.label]
        for n in cols:
            if n not in ctx.available:
                continue
            vals = [fmt(row.kind, v) for v in row.samples.get(n, [])]
            vals += [f"error: {e}" for e in row.errors.get(n, [])]
            cells.append(", ".join(vals) if vals else row.notes.get(n, "–"))
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out.append("")
    out.append("</details>")
    out.append("")
    out.append(
        f"Parameters: redis-benchmark -n {p['redis_n']} (no pipelining) / -n {p['redis_pn']} "
        f"(-P 16), -c 50, -t ping,set,get; churn -n {p['churn_n']} -k 0 -c 20 -t ping; "
        f"iperf3 -t {p['iperf_t']}; idle K in {p['idle_ks']}; ping-pong {p['ping_m']} round trips "
        f"(+500 warm-up). Proxy CPU = utime+stime of the proxy process tree during the run, "
        f"per GB received.")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main

class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="full")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--rounds", type=int, help="override the number of rounds")
    ap.add_argument("--out", type=Path, default=BENCH / "results",
                    help="where LATEST.md and the dated copies go")
    args = ap.parse_args()
    ctx = Ctx(args)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    raise_nofile(1 << 20)
    started = dt.datetime.now(dt.timezone.utc)
    interrupted = False

    ctx.log(f"mode {ctx.mode}, rounds {ctx.p['rounds']}, workloads {','.join(ctx.workloads)}, "
            f"fd limit {nofile_limits()}")
    for name in ctx.proxies:
        adapter = ADAPTERS / f"{name}.sh"
        if not adapter.exists():
            ctx.unavailable[name] = f"no adapter {adapter}"
            continue
        try:
            rc, out = run_client(ctx, [str(adapter), "--check"], timeout=60, name=adapter.name)
        except BenchError as e:
            rc, out = 1, f"not available: {e}"
        line = last_line(out) if out.strip() else f"{adapter.name} --check failed (rc={rc})"
        if rc == 0:
            ctx.available[name] = line
        else:
            ctx.unavailable[name] = re.sub(r"^not available:\s*", "", line)
        ctx.log(f"{name}: " + (line if rc == 0 else f"NOT AVAILABLE: {ctx.unavailable[name]}"))
    names = [n for n in ctx.proxies if n in ctx.available]

    try:
        for w in ctx.workloads:
            ctx.log(f"--- workload {w}")
            if w in ("redis", "churn"):
                wl_redis(ctx, names, w)
            elif w == "bulk":
                wl_bulk(ctx, names)
            elif w == "idle":
                wl_idle(ctx, names)
            elif w == "latency":
                wl_latency(ctx, names)
    except Interrupted as e:
        interrupted = True
        ctx.log(f"interrupted by {e}; stopping everything")
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        kill_clients()
        Proc.stop_all()

    wall = time.monotonic() - ctx.t0
    md = render(ctx, started, wall, interrupted)
    sys.stdout.write(md)
    sys.stdout.flush()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = f"{started:%Y%m%d-%H%M%S}-{ctx.mode}"
    raw = {"started": started.isoformat(), "mode": ctx.mode, "params": ctx.p,
           "interrupted": interrupted, "wall_s": wall, "available": ctx.available,
           "unavailable": ctx.unavailable,
           "rows": {k: {"label": r.label, "kind": r.kind, "samples": r.samples,
                        "errors": r.errors, "notes": r.notes} for k, r in ctx.res.rows.items()}}
    if interrupted:
        (args.out / "INTERRUPTED.md").write_text(md)
    else:
        (args.out / f"{stamp}.md").write_text(md)
        (args.out / f"{stamp}.json").write_text(json.dumps(raw, indent=1, ensure_ascii=False))
        (args.out / "LATEST.md").write_text(md)
    logs = args.out / "last-logs"
    shutil.rmtree(logs, ignore_errors=True)
    shutil.copytree(ctx.logdir, logs, dirs_exist_ok=True)
    ctx.log(f"done in {wall / 60:.1f} min; wrote {args.out / 'LATEST.md'}" if not interrupted
            else f"partial results in {args.out / 'INTERRUPTED.md'}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
