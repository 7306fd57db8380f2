"""
Why the WebSocket bridge drives wsproto itself: the memory one large message
costs, through Twisted's own C{twisted.web.websocket} (which gathers a whole
message before delivering it) and through the gateway's bridge (which relays
payload as it arrives).

Run by hand, on loopback only:  .venv/bin/python bench/ws_message_memory.py [MiB]

For each server it reads the peak resident memory (VmHWM) before and after one
client message of MiB mebibytes (default 64), sent in 64 KiB fragments.  The
gateway relays it to a TCP sink that answers with the byte count; the Twisted
server (bench/twisted_ws_server.py) answers with the length of the message it
was given.  One run, both servers, same machine: compare the growth, not the
absolute figures.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from websockets.sync.client import connect

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).with_name("twistd"))
FRAGMENT = 64 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def wait_listening(port: int, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def sink_server(total: int) -> int:
    """
    A TCP sink in a thread: reads C{total} bytes per connection, answers the count.
    """
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            got = 0
            while got < total and (data := conn.recv(1 << 20)):
                got += len(data)
            conn.sendall(str(got).encode())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    port: int = server.getsockname()[1]
    return port


def fragments(total: int) -> Iterator[bytes]:
    block = os.urandom(FRAGMENT)
    for _ in range(total // FRAGMENT):
        yield block


def measure(name: str, pid: int, url: str, total: int) -> None:
    with connect(url, max_size=None, open_timeout=20) as ws:
        time.sleep(0.5)
        before = peak_kib(pid)
        started = time.monotonic()
        ws.send(fragments(total))
        answer = ws.recv(timeout=120)
        elapsed = time.monotonic() - started
        after = peak_kib(pid)
    print(
        f"{name:28} answer {answer!r:>12}  peak RSS {before / 1024:7.1f} -> "
        f"{after / 1024:7.1f} MiB (+{(after - before) / 1024:.1f}), {elapsed:.2f} s"
    )


def main() -> None:
    total = int(sys.argv[1]) * 1024 * 1024 if len(sys.argv) > 1 else 64 * 1024 * 1024
    print(f"one message of {total // (1024 * 1024)} MiB in {FRAGMENT // 1024} KiB fragments")
    port = free_port()
    twisted = subprocess.Popen([PYTHON, str(HERE / "twisted_ws_server.py"), str(port)])
    try:
        wait_listening(port)
        measure("twisted.web.websocket", twisted.pid, f"ws://127.0.0.1:{port}/play", total)
    finally:
        twisted.terminate()
        twisted.wait(10)
    sink = sink_server(total)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        gateway = subprocess.Popen(
            [
                TWISTD, "-n", "--pidfile=", "--logfile", f"{folder}/gateway.log", "gateway",
                "--listen", f"tcp:{port}:interface=127.0.0.1", "--admin", "none",
                "--backend", f"tcp:127.0.0.1:{sink}", "--websocket", "/play",
                "--websocket-max-message", str(total), "--health-interval", "0",
            ]
        )  # fmt: skip
        try:
            wait_listening(port)
            measure("gateway --websocket", gateway.pid, f"ws://127.0.0.1:{port}/play", total)
        finally:
            gateway.terminate()
            gateway.wait(30)


if __name__ == "__main__":
    main()
