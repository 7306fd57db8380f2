"""
End to end: a real C{twistd -n gateway} under a real C{ulimit -n} runs out of
file descriptors, and that is its own shortage, not its backends'.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    banner_then_echo,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("tcp_path")

LIMIT = 256
"""The gateway's descriptor limit (C{ulimit -n}), for each of its processes."""

CLIENTS = 400
"""Game clients opened at once: more than the limit allows."""

BUSY = b"BUSY try later\r\n"


def under_ulimit(gateway: GatewayProcess, limit: int) -> GatewayProcess:
    """
    Start C{gateway} through C{sh -c 'ulimit -n LIMIT; exec ...'}: the same
    process (C{exec} keeps the PID) with a real descriptor limit, which its
    worker processes inherit.
    """
    gateway.argv = ["sh", "-c", f'ulimit -n {limit} && exec "$@"', "sh", *gateway.argv]
    return gateway


def status(gateway: GatewayProcess) -> dict[str, Any]:
    """
    The gateway's C{/status.json}, retried while it has no descriptor to
    accept the request with.
    """
    url = admin_url(gateway) + "/status.json"
    found: dict[str, Any] = {}

    def fetch() -> bool:
        try:
            found.update(json.loads(urllib.request.urlopen(url, timeout=5).read()))
        except (OSError, urllib.error.URLError):
            return False
        return True

    wait_for(fetch, "the status document")
    return found


ANSWER_WAIT = 10.0
"""Seconds a client waits for the banner, the busy line or the end."""


def outcome(client: socket.socket) -> str:
    """
    What a game client got: C{"session"} (the backend's banner), C{"busy"}
    (the busy line, then the end), C{"closed"} (the end, or a reset, with
    nothing: a connection the kernel or Twisted's accept had no room for),
    or C{"unanswered"} (nothing at all within L{ANSWER_WAIT} seconds).
    """
    data = b""
    client.settimeout(ANSWER_WAIT)
    try:
        while True:
            chunk = client.recv(1024)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"HELLO from "):
                return "session"
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return "unanswered"
    if data == BUSY:
        return "busy"
    assert data == b"", data
    return "closed"


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_out_of_descriptors_keeps_backends_up(tmp_path: Path, workers: list[str]) -> None:
    """
    Under C{ulimit -n 256}, 400 game clients at once: the gateway serves what
    its descriptors allow and refuses the rest with the busy line as
    C{local-resources}, its own shortage; no connection failure is counted
    on the backends, no health check fails, and both backends stay up the
    whole time (before, the failed connects took both down and the next
    players were refused C{no-backend}).  With C{--workers 2} the same,
    whether a worker's shortage strikes when it takes a connection or when
    it connects to a backend; nothing is logged as a traceback.
    """
    with Backend(banner_then_echo) as first, Backend(banner_then_echo) as second:
        args = [
            *workers,
            "--backend",
            first.endpoint,
            "--backend",
            second.endpoint,
            "--admin",
            "tcp:0:interface=127.0.0.3",
            "--health-interval",
            "0.2",
            "--busy-message",
            BUSY.decode().strip(),
        ]
        with under_ulimit(GatewayProcess(args, tmp_path), LIMIT) as gateway:
            with open(f"/proc/{gateway.pid}/limits") as limits:
                assert any(
                    line.startswith("Max open files") and line.split()[3] == str(LIMIT)
                    for line in limits
                )
            before = status(gateway)
            if workers:
                wait_for(
                    lambda: sum(w["state"] == "running" for w in status(gateway)["workers"]) == 2,
                    "two running workers",
                )
            assert [b["state"] for b in before["backends"]] == ["up", "up"]
            clients = []
            try:
                for _ in range(CLIENTS):
                    client = socket.create_connection(
                        ("127.0.0.1", gateway.port), timeout=DEADLINE
                    )
                    clients.append(client)
                    try:
                        client.sendall(b"game on\n")
                    except (ConnectionResetError, BrokenPipeError):
                        pass
                outcomes = [outcome(client) for client in clients]
            finally:
                for client in clients:
                    client.close()
            document = status(gateway)
            # A worker's log lines reach the acceptor's log over its control
            # channel, a moment after the status reply.
            wait_for(
                lambda: "Too many open files" in gateway.log() or "EMFILE" in gateway.log(),
                "the shortage in the log",
            )
            log = gateway.log()
        counters = document["counters"]
        refused = counters["refused"]
        assert outcomes.count("session") > 0
        # Every client hears something: its backend's banner, the busy line,
        # or the end.
        assert "unanswered" not in outcomes
        # The shortage strikes where timing puts it: when connecting to the
        # backend (a local-resources refusal: the busy line), when a worker
        # adopts a handed-over connection (a local-resources refusal: closed,
        # it cannot even write the busy line), or, in a single process, at
        # accept, where Twisted closes what it has no descriptor to keep
        # (closed, logged as its EMFILE recovery).  Either way clients are
        # refused, and never blamed on the backends.
        assert refused["local-resources"] + outcomes.count("closed") > 0
        if not workers:
            assert outcomes.count("busy") == refused["local-resources"]
        else:
            assert refused["local-resources"] > 0
            assert outcomes.count("busy") + outcomes.count("closed") > 0
        assert refused["no-backend"] == 0
        assert counters["unserved"] == 0
        assert [(b["state"], b["failures"]) for b in document["backends"]] == [
            (
                "up",
                0,
            )
        ] * 2
        assert counters["health_transitions"] == 0
        assert counters["backend_failures"] == 0
        assert " is down" not in log
        if refused["local-resources"]:
            assert ": local-resources (the gateway is short of resources" in log
        assert "Too many open files" in log or "EMFILE recovery" in log
        # A worker that cannot take a handed-over connection refuses it too
        # (counted, sampled), without a traceback per connection.
        assert "Traceback" not in log
