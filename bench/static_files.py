#!/usr/bin/env python3
"""
Static files side by side (run by hand, never in CI): the gateway's
C{--http-root} against nginx with one worker, in one run, interleaved.

Both serve the same folder: a 2,500-byte text file (C{small.txt}) and a
1 MiB binary file (C{big.bin}).  The columns:

  - C{nginx}: one worker, C{root} on the folder, C{sendfile on},
    C{tcp_nopush on}, no access log, C{keepalive_requests} unbounded;
  - C{nginx-log} (only when C{--columns} names it): the same with nginx's
    default access log on (C{combined} format, unbuffered: one C{write(2)}
    per request, as the gateway's access log does);
  - C{gateway}: C{twistd -n gateway --http-root FOLDER --admin none}, a
    game backend nobody connects to, no health checks, its defaults
    otherwise (its access log is on: that is how users run it);
  - C{gateway-base} (only when C{--columns} names it): the same with the
    C{gateway} package of another checkout, C{GATEWAY_BASE=DIR} (first on
    C{PYTHONPATH}, same venv), for a before/after of a change in one run.

The rows, each C{wrk -t1 -cN -dS --latency} (default C{-c50}):

  - C{small keep-alive}: the small file over keep-alive connections;
  - C{small close}: the same with C{Connection: close} on every request
    (one request per connection: the accept and close cost);
  - C{big keep-alive}: the 1 MiB file over keep-alive (the copy cost).

Each cell: requests/s, p50 and p99 latency (wrk's) and the server's CPU
seconds per 10,000 requests (its process tree, from C{/proc}).  Cells are
medians over C{--rounds}; the column order rotates each round.  wrk and the
servers share the machine's cores.

C{--profile S} then runs wrk at the gateway (C{--profile-row}, by default the
small file over keep-alive) once
more while py-spy samples it, and prints where its time went by area
(L{bench.profile_areas}) and the hottest frames.

Every process started here (nginx, the gateways, wrk, py-spy) is stopped by
its PID, and every wait is bounded.

    .venv/bin/python bench/static_files.py [--rounds 3] [--duration 5]
    .venv/bin/python bench/static_files.py --rounds 1 --profile 8
    GATEWAY_BASE=/tmp/main-export .venv/bin/python bench/static_files.py \\
        --columns nginx,gateway,gateway-base
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import http_proxy  # noqa: E402
from bench.http_proxy import (  # noqa: E402
    PY_SPY,
    RATE,
    WRK,
    Results,
    Sample,
    _nginx,
    _ratio,
    free_port,
    machine,
    parse_wrk,
    tree_cpu_seconds,
)
from bench.profile_areas import profile_areas  # noqa: E402
from tests.support import GatewayProcess  # noqa: E402

COLUMNS = ("nginx", "gateway", "nginx-log", "gateway-base")
"""The columns; the ratios are gateway / nginx (and gateway / nginx-log,
gateway / gateway-base when those columns run)."""

SMALL = 2500
"""The small file's size in bytes (a page's script or stylesheet)."""

BIG = 1 << 20
"""The big file's size in bytes (an image or a bundle)."""

CELLS = {
    "small keep-alive": ("/small.txt", ()),
    "small close": ("/small.txt", ("-H", "Connection: close")),
    "big keep-alive": ("/big.bin", ()),
}
"""Each row: the path and wrk's extra arguments."""


def make_root(folder: Path) -> Path:
    """
    The served folder: L{SMALL} bytes of text and L{BIG} bytes of noise.
    """
    folder.mkdir()
    text = b"gateway static bench: a small text file, like a stylesheet.\n"
    (folder / "small.txt").write_bytes((text * (SMALL // len(text) + 1))[:SMALL])
    (folder / "big.bin").write_bytes(os.urandom(BIG))
    return folder


def nginx(tmp: Path, root: Path, log: bool = False) -> http_proxy.Server:
    """
    The C{nginx} column: one worker serving C{root}.

    @param log: write nginx's default access log (the C{nginx-log} column).
    """
    name = "nginx-log" if log else "nginx"
    logging = f"        access_log {tmp / name}/access.log combined;\n" if log else ""
    server = f"""{logging}        root {root};
        sendfile on;
        tcp_nopush on;
        default_type application/octet-stream;
        types {{ text/plain txt; }}"""
    return _nginx(tmp, name, free_port(), server)


def gateway(tmp: Path, root: Path, stack: ExitStack, base: str | None = None) -> tuple[int, int]:
    """
    The C{gateway} column: C{--http-root} on the folder.

    @param base: another checkout whose C{gateway} package runs instead of
        this one's (first on C{PYTHONPATH}; same venv, same Twisted).
    @return: its port and PID.
    """
    folder = tmp / ("gateway" if base is None else "gateway-base")
    folder.mkdir()
    args = ["--http-root", str(root), "--health-interval", "0"]
    args += ["--backend", f"tcp:127.0.0.1:{free_port()}"]
    args += os.environ.get("GATEWAY_ARGS", "").split()
    saved = os.environ.get("PYTHONPATH")
    if base is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [base, saved]))
    try:
        process = stack.enter_context(GatewayProcess(args, folder))
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return process.port, process.pid


def wrk(port: int, cell: str, connections: int, duration: int) -> dict[str, float]:
    """
    One wrk run (one thread) of a cell at 127.0.0.1:C{port}, bounded in time.
    """
    path, extra = CELLS[cell]
    argv = [WRK, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    done = subprocess.run(
        [*argv, *extra, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    )
    return parse_wrk(done.stdout)


def measure(port: int, pid: int, cell: str, args: argparse.Namespace) -> Sample:
    """
    One wrk run with the server's CPU around it.
    """
    before = tree_cpu_seconds(pid)
    values = wrk(port, cell, args.connections, args.duration)
    return Sample(values, tree_cpu_seconds(pid) - before)


def run(targets: dict[str, tuple[int, int]], args: argparse.Namespace) -> Results:
    """
    Every cell through every column, C{args.rounds} times, the column order
    rotating each round, after an untimed warm-up of each.  Results are
    keyed by column, then by the cell's index in L{CELLS}.
    """
    results = Results()
    names = list(targets)
    cells = list(CELLS)
    for name in names if args.warmup > 0 else []:
        try:
            wrk(targets[name][0], cells[0], args.connections, args.warmup)
        except Exception as error:  # noqa: BLE001 - the rounds will say more
            print(f"warm-up {name}: {type(error).__name__}: {error}"[:300], file=sys.stderr)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for index, cell in enumerate(cells):
            for name in order:
                port, pid = targets[name]
                try:
                    sample = measure(port, pid, cell, args)
                except Exception as error:  # noqa: BLE001 - the table says so
                    reason = f"{cell}: {type(error).__name__}: {error}"[:300]
                    results.errors.setdefault(name, []).append(reason)
                    print(f"round {round_ + 1} {name} {reason}", file=sys.stderr)
                    continue
                results.add(name, index, sample)
                v = sample.values
                print(
                    f"round {round_ + 1} {name:12} {cell:16} {v['rps']:9.0f} req/s, "
                    f"p50 {v['p50']:7.0f} µs, p99 {v['p99']:7.0f} µs, "
                    f"CPU {sample.proxy_cpu:5.2f} s, errors {v['errors']:.0f}",
                    file=sys.stderr,
                )
    return results


def report(results: Results, columns: list[str]) -> str:
    """
    The markdown table: one column per server, then the ratios.
    """
    ratios = [("gateway", "nginx"), ("gateway", "nginx-log"), ("gateway", "gateway-base")]
    ratios = [(a, b) for a, b in ratios if a in columns and b in columns]
    head = ["row", *columns] + [f"{a} / {b}" for a, b in ratios]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    picks = [
        ("requests/s", lambda s: s.values["rps"], ".0f"),
        ("latency p50 (µs)", lambda s: s.values["p50"], ".0f"),
        ("latency p99 (µs)", lambda s: s.values["p99"], ".0f"),
        ("CPU per 10k requests (s)", lambda s: s.proxy_cpu / s.values["requests"] * 1e4, ".3f"),
    ]
    for index, cell in enumerate(CELLS):
        for label, pick, form in picks:
            medians = {c: results.median(c, index, pick) for c in columns}
            cells = [f"{cell}: {label}"]
            cells += [format(m, form) if m is not None else "error" for m in medians.values()]
            cells += [_ratio(medians[a], medians[b]) for a, b in ratios]
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


def profile(port: int, pid: int, seconds: int, raw: Path, args: argparse.Namespace) -> str:
    """
    Sample the gateway with py-spy while wrk loads it with C{--profile-row}
    (by default the small file over keep-alive); the summary by area.
    """
    spy = [PY_SPY, "record", "-p", str(pid), "-d", f"{seconds:g}", "-r", str(RATE), "--idle"]
    spy += ["--format", "raw", "-o", str(raw)]
    with subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as sampler:
        try:
            time.sleep(0.5)
            saved = args.duration
            args.duration = seconds + 1
            try:
                load = measure(port, pid, args.profile_row, args)
            finally:
                args.duration = saved
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
        f"py-spy, {seconds:g} s at {RATE} Hz (idle included) during wrk -t1 "
        f"-c{args.connections}, {args.profile_row}: {load.values['rps']:.0f} req/s, gateway "
        f"CPU {load.proxy_cpu:.2f} s; {total} samples, {busy} busy (not in epoll_wait)",
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


def _start(column: str, root: Path, stack: ExitStack, tmp: Path) -> tuple[int, int]:
    """
    Start one column's server on the folder.

    @return: its port and PID.
    """
    if column in ("nginx", "nginx-log"):
        server = stack.enter_context(nginx(tmp, root, log=column == "nginx-log"))
        return server.port, server.pid
    if column == "gateway":
        return gateway(tmp, root, stack)
    base = os.environ.get("GATEWAY_BASE")
    if not base or not (Path(base) / "gateway" / "__init__.py").exists():
        raise RuntimeError("GATEWAY_BASE must name a checkout of the gateway")
    return gateway(tmp, root, stack, str(Path(base).resolve()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed seconds per column")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c")
    parser.add_argument("--columns", default=",".join(COLUMNS[:2]), help=", ".join(COLUMNS))
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds (0: none)")
    parser.add_argument(
        "--profile-row", default="small keep-alive", help="the row py-spy samples (a ROWS name)"
    )
    parser.add_argument("--profile-raw", type=Path, help="keep py-spy's raw profile here")
    args = parser.parse_args()
    columns = [c for c in args.columns.split(",") if c]
    if unknown := set(columns) - set(COLUMNS):
        parser.error(f"unknown columns {sorted(unknown)}: choose from {COLUMNS}")
    if "gateway-base" in columns and not os.environ.get("GATEWAY_BASE"):
        parser.error("the gateway-base column needs GATEWAY_BASE, a checkout's folder")
    if args.profile and "gateway" not in columns:
        parser.error("--profile needs the gateway column")
    print(machine())
    began = time.monotonic()
    profiled = ""
    # The folder outlives the stack: the servers log there until they stop.
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        tmp = Path(name)
        # nginx started by root reads the files as its worker's user (nobody).
        tmp.chmod(0o755)
        root = make_root(tmp / "root")
        targets: dict[str, tuple[int, int]] = {}
        failed: dict[str, list[str]] = {}
        for column in columns:
            try:
                targets[column] = _start(column, root, stack, tmp)
            except Exception as error:  # noqa: BLE001 - the table says so
                failed[column] = [f"did not start: {str(error)[-300:]}"]
                print(f"{column} {failed[column][0]}", file=sys.stderr)
        results = run(targets, args)
        results.errors.update(failed)
        if args.profile and "gateway" in targets:
            port, pid = targets["gateway"]
            raw = args.profile_raw or tmp / "profile.txt"
            profiled = profile(port, pid, args.profile, raw, args)
    print(
        f"{datetime.date.today().isoformat()}; wrk -t1 -c{args.connections} "
        f"-d{args.duration:g}s; {SMALL}-byte and {BIG}-byte files; {args.rounds} round(s), "
        f"medians, the column order rotating; {time.monotonic() - began:.0f} s; load average "
        f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(report(results, columns))
    if profiled:
        print()
        print(profiled)


if __name__ == "__main__":
    main()
