#!/usr/bin/env python3
"""
How the admin endpoint copes with many live sessions (run by hand, never in CI).

Starts an echo backend and a real ``twistd -n gateway`` on loopback, opens
GAME game sessions and HTTP keep-alive connections (10,000 sessions in all by
default), then times ``/status.json`` (every session listed), ``/status.json?limit=200``
(what the dashboard asks for) and ``/metrics``, while one more game session
makes 64-byte round trips the whole time: the round-trip times during the
admin requests, against those before, show whether the admin work stalls
sessions.

    .venv/bin/python bench/admin_status.py [--game 8000] [--http 2000] [--rounds 10]

The gateway's file descriptors bound the count: each game session takes two,
an HTTP connection one, and this machine's hard limit is 20,000.  Every
process it starts is stopped by its PID; everything listens on 127.0.0.1/3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import GatewayProcess, listening_ports, wait_for  # noqa: E402

ECHO = """
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)
async def main():
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pinger(port: int, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """
    One game session making 64-byte round trips until stopped: (when, seconds).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"p" * 64
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline:
        began = time.monotonic()
        sock.sendall(payload)
        got = 0
        while got < len(payload):
            got += len(sock.recv(4096))
        samples.append((began, time.monotonic() - began))
        time.sleep(0.002)
    sock.close()


async def _open_sessions(port: int, games: int, https: int) -> list[asyncio.StreamWriter]:
    """
    Open the idle sessions: game ones send one byte and get it echoed; HTTP
    ones make one keep-alive request and stay open.
    """
    writers: list[asyncio.StreamWriter] = []
    limit = asyncio.Semaphore(200)

    async def game() -> None:
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x01")
            await reader.readexactly(1)
            writers.append(writer)

    async def http() -> None:
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /nothing HTTP/1.1\r\nHost: bench\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writers.append(writer)

    await asyncio.gather(*([game() for _ in range(games)] + [http() for _ in range(https)]))
    return writers


def _timed(url: str) -> tuple[float, int]:
    began = time.monotonic()
    body = urllib.request.urlopen(url, timeout=60).read()
    return time.monotonic() - began, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--game", type=int, default=8000)
    parser.add_argument("--http", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    _raise_fd_limit()
    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert echo.stdout is not None
        backend_port = int(echo.stdout.readline())
        with (
            tempfile.TemporaryDirectory() as tmp,
            GatewayProcess(
                [
                    "--backend",
                    f"tcp:127.0.0.1:{backend_port}",
                    "--admin",
                    "tcp:0:interface=127.0.0.3",
                    "--health-interval",
                    "0",
                    "--sniff-timeout",
                    "1",
                    "--listen",
                    "tcp:0:interface=127.0.0.1:backlog=4096",
                ],
                Path(tmp),
            ) as gateway,
        ):
            wait_for(lambda: "127.0.0.3" in listening_ports(gateway.pid), "admin")
            admin = f"http://127.0.0.3:{listening_ports(gateway.pid)['127.0.0.3'][0]}"
            began = time.monotonic()
            loop = asyncio.new_event_loop()
            writers = loop.run_until_complete(_open_sessions(gateway.port, args.game, args.http))
            opened = time.monotonic() - began
            live = json.loads(urllib.request.urlopen(admin + "/status.json?limit=0").read())
            count = sum(live["counters"]["active_sessions"].values())
            print(f"{count} live sessions ({args.game} game, {args.http} http) in {opened:.1f} s")
            samples: list[tuple[float, float]] = []
            stop = threading.Event()
            pinger = threading.Thread(target=_pinger, args=(gateway.port, stop, samples))
            pinger.start()
            time.sleep(2.0)
            quiet_end = time.monotonic()
            results: dict[str, list[float]] = {}
            sizes: dict[str, int] = {}
            windows: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                for name, path in (
                    ("status.json (all sessions)", "/status.json"),
                    ("status.json?limit=200", "/status.json?limit=200"),
                    ("metrics", "/metrics"),
                ):
                    start = time.monotonic()
                    seconds, size = _timed(admin + path)
                    windows.append((start, start + seconds))
                    results.setdefault(name, []).append(seconds)
                    sizes[name] = size
                    time.sleep(0.2)
            stop.set()
            pinger.join()
            for name, times in results.items():
                print(name, [round(t * 1000) for t in times], "ms")
                print(
                    f"{name:28} median {statistics.median(times) * 1000:7.1f} ms  "
                    f"max {max(times) * 1000:7.1f} ms  ({sizes[name] / 1024:.0f} KiB)"
                )
            before = [rtt for when, rtt in samples if when < quiet_end]
            during = [rtt for when, rtt in samples if any(a <= when <= b for a, b in windows)]
            for label, rtts in (("before", before), ("during admin requests", during)):
                if rtts:
                    rtts.sort()
                    print(
                        f"64-byte round trip {label:22} n={len(rtts):5}  "
                        f"p50 {rtts[len(rtts) // 2] * 1e6:7.0f} us  "
                        f"max {rtts[-1] * 1e3:6.1f} ms"
                    )
            for writer in writers:
                writer.close()
            loop.close()
    finally:
        echo.terminate()
        echo.wait(timeout=10)


if __name__ == "__main__":
    main()
