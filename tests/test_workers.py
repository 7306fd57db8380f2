"""
C{--workers N}: an acceptor process admits connections and hands them to
worker processes (see L{gateway.process.workerpool}).  End-to-end tests on a real
C{twistd -n gateway} with real worker processes, and the option's checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError

from gateway.options import GatewayOptions
from tests.certs import make_ca
from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    listening_ports,
    recv_exactly,
    recv_until_eof,
    wait_for,
)
from tests.test_e2e_limits import client_from, game_session, is_refused, proxy_v1


def status(gateway: GatewayProcess) -> dict[str, Any]:
    url = admin_url(gateway) + "/status.json"
    document: dict[str, Any] = json.loads(urllib.request.urlopen(url, timeout=10).read())
    return document


def running(gateway: GatewayProcess, count: int) -> dict[str, Any]:
    """
    The status once C{count} workers run.
    """
    found: dict[str, Any] = {}

    def check() -> bool:
        found.update(status(gateway))
        return bool(sum(w["state"] == "running" for w in found["workers"]) == count)

    wait_for(check, f"{count} running workers")
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped yet) is not alive either.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def exited(pid: int) -> Callable[[], bool]:
    return lambda: not alive(pid)


def options(backend: Backend, *extra: str) -> list[str]:
    return [
        "--workers",
        "2",
        "--backend",
        backend.endpoint,
        "--admin",
        "tcp:0:interface=127.0.0.3",
        "--health-interval",
        "0",
        *extra,
    ]


def test_sessions_spread_over_both_workers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    Game sessions and HTTP requests are served by the worker processes
    (children of the gateway, with no listening socket of their own), the
    least-loaded worker gets the next connection, and /status.json,
    /metrics and the access log show every worker's sessions together.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello from a worker\n")
    access = tmp_path / "access.jsonl"
    args = options(echo_backend, "--http-root", str(site), "--access-log", str(access))
    with GatewayProcess(args, tmp_path) as gateway:
        document = running(gateway, 2)
        pids = [w["pid"] for w in document["workers"]]
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                assert int(stat.read().rsplit(")", 1)[1].split()[1]) == gateway.pid
            assert listening_ports(pid) == {}
        sessions = [game_session("127.0.0.1", gateway.port) for _ in range(6)]
        document = status(gateway)
        assert Counter(s["worker"] for s in document["sessions"]) == {1: 3, 2: 3}
        assert [w["sessions"] for w in document["workers"]] == [3, 3]
        assert len({s["id"] for s in document["sessions"]}) == 6
        assert document["counters"]["active_sessions"]["game"] == 6
        assert document["counters"]["accepted"] == 6
        assert document["backends"][0]["active"] == 6
        assert document["backends"][0]["total"] == 6
        limited = json.loads(
            urllib.request.urlopen(admin_url(gateway) + "/status.json?limit=2", timeout=10).read()
        )
        assert [s["id"] for s in limited["sessions"]] == sorted(
            s["id"] for s in document["sessions"]
        )[:2]
        metrics = (
            urllib.request.urlopen(admin_url(gateway) + "/metrics", timeout=10).read().decode()
        )
        assert 'gateway_sessions_active{kind="game"} 6.0' in metrics
        assert "gateway_workers_running 2.0" in metrics
        page = urllib.request.urlopen(
            f"http://127.0.0.1:{gateway.port}/hello.txt", timeout=DEADLINE
        ).read()
        assert page == b"hello from a worker\n"
        for sock in sessions:
            sock.sendall(b"bye\n")
            assert recv_exactly(sock, 4) == b"bye\n"
            sock.close()
        wait_for(
            lambda: access.exists() and access.read_text().count('"kind":"game"') == 6,
            "6 game sessions in the access log",
        )
        records = [json.loads(line) for line in access.read_text().splitlines()]
        assert sum(r["kind"] == "http" for r in records) == 1
        assert all(r["bytes_in"] == 9 for r in records if r["kind"] == "game")
        wait_for(lambda: status(gateway)["counters"]["active_sessions"]["game"] == 0, "ends")
        assert "[worker 1] game session from 127.0.0.1:" in gateway.log()
        assert "[worker 2] game session from 127.0.0.1:" in gateway.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_access_log_only(tmp_path: Path, echo_backend: Backend, workers: str) -> None:
    """
    --access-log-only: the sessions' access events are in the access log
    file, and twistd's log has no line for them (one process, or workers
    whose events the acceptor writes).
    """
    access = tmp_path / "access.jsonl"
    args = options(echo_backend, "--access-log", str(access), "--access-log-only")
    args[1] = workers
    with GatewayProcess(args, tmp_path) as gateway:
        if workers == "2":
            running(gateway, 2)
        for _ in range(3):
            game_session("127.0.0.1", gateway.port).close()
        wait_for(
            lambda: access.exists() and access.read_text().count('"kind":"game"') == 3,
            "3 game sessions in the access log",
        )
        assert "game session from" not in gateway.log()


def test_caps_are_exact_across_workers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    The acceptor applies the total and per-address caps for every worker:
    with --max-connections 4 and --max-per-ip 2, a 3rd connection from one
    address and a 5th in all are refused, though each worker has only 2;
    a session ending in a worker frees its slots in the acceptor.
    """
    args = options(
        echo_backend, "--max-connections", "4", "--max-per-ip", "2", "--busy-message", "full"
    )
    with GatewayProcess(args, tmp_path) as gateway:
        running(gateway, 2)
        first = [game_session("127.0.0.1", gateway.port) for _ in range(2)]
        extra = client_from("127.0.0.1", gateway.port)
        assert is_refused(extra, b"full\r\n")
        extra.close()
        second = [game_session("127.0.0.2", gateway.port) for _ in range(2)]
        document = status(gateway)
        assert Counter(s["worker"] for s in document["sessions"]) == {1: 2, 2: 2}
        over = client_from("127.0.0.4", gateway.port)
        assert is_refused(over, b"full\r\n")
        over.close()
        refused = status(gateway)["counters"]["refused"]
        assert (refused["address-cap"], refused["total-cap"]) == (1, 1)
        first.pop().close()

        def admitted() -> bool:
            sock = client_from("127.0.0.4", gateway.port)
            try:
                sock.sendall(b"ping\n")
                ok = sock.recv(5) == b"ping\n"
            except OSError:
                ok = False
            if ok:
                second.append(sock)
            else:
                sock.close()
            return ok

        wait_for(admitted, "the freed slot to admit a new client")
        assert status(gateway)["counters"]["active_sessions"]["game"] == 4
        for sock in first + second:
            sock.sendall(b"still\n")
            assert recv_exactly(sock, 6) == b"still\n"
            sock.close()


def test_queue_mode_across_workers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    --overflow queue with workers: at the cap a new client waits (its first
    bytes too), and gets the slot that a session ending in a worker frees,
    with every byte it sent meanwhile relayed.
    """
    args = options(echo_backend, "--max-connections", "2", "--overflow", "queue")
    with GatewayProcess(args, tmp_path) as gateway:
        running(gateway, 2)
        held = [game_session("127.0.0.1", gateway.port) for _ in range(2)]
        waiting = client_from("127.0.0.1", gateway.port)
        waiting.sendall(b"sent while waiting\n")
        waiting.settimeout(0.5)
        with pytest.raises(TimeoutError):
            waiting.recv(1)
        waiting.settimeout(DEADLINE)
        held.pop(0).close()
        assert recv_exactly(waiting, 19) == b"sent while waiting\n"
        waiting.sendall(b"and after\n")
        assert recv_exactly(waiting, 10) == b"and after\n"
        for sock in [*held, waiting]:
            sock.close()


def test_killed_worker_is_restarted_while_others_flow(
    tmp_path: Path, echo_backend: Backend
) -> None:
    """
    SIGKILL one worker: its sessions end, are counted as lost and their
    slots are freed; the acceptor starts a new worker; the other worker's
    sessions never stop flowing (a client round-trips on one the whole time).
    """
    args = options(echo_backend, "--max-connections", "4")
    with GatewayProcess(args, tmp_path) as gateway:
        running(gateway, 2)
        sessions = [game_session("127.0.0.1", gateway.port) for _ in range(4)]
        document = status(gateway)
        on = {s["peer"]: s["worker"] for s in document["sessions"]}
        victim = next(w for w in document["workers"] if w["worker"] == 1)
        doomed = [s for s in sessions if on[f"127.0.0.1:{s.getsockname()[1]}"] == 1]
        spared = [s for s in sessions if s not in doomed]
        assert len(doomed) == len(spared) == 2

        trips = 0
        failures: list[BaseException] = []
        stop = threading.Event()

        def pump() -> None:
            nonlocal trips
            sock = spared[0]
            try:
                while not stop.is_set():
                    sock.sendall(b"tick\n")
                    assert recv_exactly(sock, 5) == b"tick\n"
                    trips += 1
                    time.sleep(0.002)
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        pumping = threading.Thread(target=pump)
        pumping.start()
        try:
            wait_for(lambda: trips > 20, "round trips before the kill")
            before = trips
            os.kill(victim["pid"], signal.SIGKILL)
            for sock in doomed:
                try:
                    assert recv_until_eof(sock) == b""
                except ConnectionResetError:
                    pass
            document = running(gateway, 2)
            wait_for(lambda: trips > before + 100, "round trips after the kill")
        finally:
            stop.set()
            pumping.join(timeout=DEADLINE)
        assert failures == []
        restarted = next(w for w in document["workers"] if w["worker"] == 1)
        assert restarted["pid"] != victim["pid"] and restarted["restarts"] == 1
        assert restarted["lost"] == 2
        assert document["counters"]["lost"] == 2
        assert not alive(victim["pid"])
        # The lost sessions' slots are free (the cap is 4): two new sessions,
        # which go to the new worker, the least loaded.
        fresh = [game_session("127.0.0.1", gateway.port) for _ in range(2)]
        assert Counter(s["worker"] for s in status(gateway)["sessions"]) == {1: 2, 2: 2}
        spared[1].sendall(b"after\n")
        assert recv_exactly(spared[1], 6) == b"after\n"
        for sock in spared + fresh:
            sock.close()
        killed = f"worker 1 (pid {victim['pid']}) was killed by SIGKILL while running"
        assert killed in gateway.log()
        assert "lost its control channel" not in gateway.log()
        assert "2 sessions lost" in gateway.log()


def test_drain_with_workers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    SIGTERM: the acceptor stops accepting, the workers let their sessions
    finish, and everything exits with status 0 once they have.
    """
    with GatewayProcess(options(echo_backend), tmp_path) as gateway:
        pids = [w["pid"] for w in running(gateway, 2)["workers"]]
        sessions = [game_session("127.0.0.1", gateway.port) for _ in range(2)]
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "[worker 2] draining" in gateway.log(), "the workers to drain")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE)
        for sock in sessions:
            sock.sendall(b"during the drain\n")
            assert recv_exactly(sock, 17) == b"during the drain\n"
            sock.close()
        assert gateway.process.wait(timeout=10) == 0
        for pid in pids:
            wait_for(exited(pid), "the workers to exit")


def test_second_sigterm_with_workers_stops_at_once(tmp_path: Path, echo_backend: Backend) -> None:
    """
    While the workers drain (with a long drain timeout), a second SIGTERM to
    the acceptor closes every worker's sessions at once, and all exit.
    """
    with GatewayProcess(options(echo_backend, "--drain-timeout", "300"), tmp_path) as gateway:
        pids = [w["pid"] for w in running(gateway, 2)["workers"]]
        sessions = [game_session("127.0.0.1", gateway.port) for _ in range(2)]
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(
            lambda: (
                "[worker 1] draining" in gateway.log() and "[worker 2] draining" in gateway.log()
            ),
            "both workers to drain",
        )
        began = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        for sock in sessions:
            assert recv_until_eof(sock) == b""
            sock.close()
        assert gateway.process.wait(timeout=10) == 0
        assert time.monotonic() - began < 5
        for pid in pids:
            wait_for(exited(pid), "the workers to exit")
        assert "stopping now (the acceptor stops at once)" in gateway.log()


def test_workers_exit_when_the_acceptor_dies(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A worker whose acceptor is gone (killed) drains and exits: no orphans.
    """
    with GatewayProcess(options(echo_backend, "--drain-timeout", "1"), tmp_path) as gateway:
        pids = [w["pid"] for w in running(gateway, 2)["workers"]]
        session = game_session("127.0.0.1", gateway.port)
        os.kill(gateway.pid, signal.SIGKILL)
        for pid in pids:
            wait_for(exited(pid), "the workers to exit")
        assert recv_until_eof(session) == b""
        session.close()


def test_proxy_and_tls_fronts_with_workers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A haproxy: front: the acceptor limits the claimed address, the worker
    reads the same header again (the session's peer is the claimed one).
    A tls: front: the worker does TLS; a refusal at the cap is answered by
    the acceptor over TLS.
    """
    ca = make_ca(tmp_path / "ca", "localhost")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca.server_pem, certs / "localhost.pem")
    args = options(
        echo_backend,
        "--listen",
        "haproxy:tcp:0:interface=127.0.0.1",
        "--listen",
        f"tls:{certs}:port=0:interface=\\:\\:1",
        "--max-per-ip",
        "1",
        "--busy-message",
        "full",
    )
    with GatewayProcess(args, tmp_path) as gateway:
        running(gateway, 2)
        wait_for(lambda: "::1" in listening_ports(gateway.pid), "the TLS front")
        tls_port = listening_ports(gateway.pid)["::1"][0]
        claimed = client_from("127.0.0.1", gateway.port)
        claimed.sendall(proxy_v1("10.0.0.1", 5001) + b"ping\n")
        assert recv_exactly(claimed, 5) == b"ping\n"
        again = client_from("127.0.0.1", gateway.port)
        again.sendall(proxy_v1("10.0.0.1", 5002))
        assert is_refused(again, b"full\r\n")
        again.close()
        assert [s["peer"] for s in status(gateway)["sessions"]] == ["10.0.0.1:5001"]

        context = ssl.create_default_context(cafile=str(ca.trust_dir / "ca.pem"))
        raw = socket.create_connection(("::1", tls_port), timeout=DEADLINE)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"over tls\n")
            assert recv_exactly(tls, 9) == b"over tls\n"
            raw2 = socket.create_connection(("::1", tls_port), timeout=DEADLINE)
            with context.wrap_socket(raw2, server_hostname="localhost") as refused:
                refused.sendall(b"hello\n")
                assert recv_until_eof(refused) == b"full\r\n"
        claimed.close()


def test_sighup_reaches_the_workers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A reload (SIGHUP) of the config file applies in the workers too: a
    backend added to the file takes their new sessions, and one removed
    drains where it still has a session: /status.json lists it as draining
    with that session until it ends, then no more.
    """
    with Backend(_tagged_echo(b"B:")) as other:
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'balance = "roundrobin"\n[[backend]]\nendpoint = "{echo_backend.endpoint}"\n'
        )
        args = ["--config", str(config), *options(echo_backend)[:2], *options(echo_backend)[4:]]
        with GatewayProcess(args, tmp_path) as gateway:
            running(gateway, 2)
            held = game_session("127.0.0.1", gateway.port)
            config.write_text(f'[[backend]]\nendpoint = "{other.endpoint}"\n')
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in gateway.log(), "the reload")

            def reaches_other() -> bool:
                sock = client_from("127.0.0.1", gateway.port)
                try:
                    sock.sendall(b"x\n")
                    return recv_exactly(sock, 2) == b"B:"
                finally:
                    sock.close()

            for _ in range(4):  # both workers, whichever gets the session
                wait_for(reaches_other, "a session on the added backend")

            def listed() -> dict[str, Any]:
                return {b["name"]: b for b in status(gateway)["backends"]}

            wait_for(lambda: echo_backend.endpoint in listed(), "the removed backend listed")
            removed = listed()[echo_backend.endpoint]
            assert (removed["state"], removed["active"]) == ("draining", 1)
            held.sendall(b"still\n")
            assert recv_exactly(held, 6) == b"still\n"
            held.close()
            wait_for(lambda: echo_backend.endpoint not in listed(), "the removed backend gone")


def test_large_first_read_and_a_worker_sigterm(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A PROXY header followed at once by 300 KB: what the acceptor read with
    the header reaches the worker whole, and the rest follows, byte-exact.
    A worker sent SIGTERM on its own drains its session, takes no new one
    meanwhile (they go to the other worker), exits and is started again,
    with no session counted as lost.
    """
    args = options(echo_backend, "--listen", "haproxy:tcp:0:interface=127.0.0.1")
    with GatewayProcess(args, tmp_path) as gateway:
        running(gateway, 2)
        payload = bytes(range(256)) * 1200
        sock = client_from("127.0.0.1", gateway.port)
        sock.sendall(proxy_v1("10.0.0.9", 4000) + payload)
        assert recv_exactly(sock, len(payload)) == payload
        [session] = status(gateway)["sessions"]
        worker = next(w for w in status(gateway)["workers"] if w["worker"] == session["worker"])
        os.kill(worker["pid"], signal.SIGTERM)
        wait_for(
            lambda: any(w["state"] == "draining" for w in status(gateway)["workers"]),
            "the worker to drain",
        )
        others = []
        for number in range(3):
            other = client_from("127.0.0.1", gateway.port)
            other.sendall(proxy_v1("10.0.1.9", 4001 + number) + b"hi\n")
            assert recv_exactly(other, 3) == b"hi\n"
            others.append(other)
        workers_of = Counter(s["worker"] for s in status(gateway)["sessions"])
        assert workers_of == {session["worker"]: 1, 3 - session["worker"]: 3}
        sock.sendall(b"still served\n")
        assert recv_exactly(sock, 13) == b"still served\n"
        sock.close()
        document = running(gateway, 2)
        again = next(w for w in document["workers"] if w["worker"] == session["worker"])
        assert again["pid"] != worker["pid"] and again["restarts"] == 1
        assert document["counters"]["lost"] == 0
        for other in others:
            other.close()


def test_operator_drain_reaches_every_worker(tmp_path: Path, echo_backend: Backend) -> None:
    """
    Backend states live in the acceptor: an operator's drain there applies
    in every worker (no new session reaches the drained backend), and
    enabling it again does too.
    """
    with Backend(_tagged_echo(b"B:")) as other:
        args = options(echo_backend, "--backend", other.endpoint)
        with GatewayProcess(args, tmp_path) as gateway:
            running(gateway, 2)
            url = admin_url(gateway)
            name = urllib.parse.quote(other.endpoint, safe="")
            drain = urllib.request.Request(f"{url}/backends/{name}/drain", method="POST")
            assert urllib.request.urlopen(drain, timeout=10).status == 200
            sessions = [game_session("127.0.0.1", gateway.port) for _ in range(6)]
            assert Counter(s["worker"] for s in status(gateway)["sessions"]) == {1: 3, 2: 3}
            assert {s["backend"] for s in status(gateway)["sessions"]} == {echo_backend.endpoint}
            enable = urllib.request.Request(f"{url}/backends/{name}/enable", method="POST")
            assert urllib.request.urlopen(enable, timeout=10).status == 200
            tagged = 0
            for _ in range(8):
                sock = client_from("127.0.0.1", gateway.port)
                sock.sendall(b"ping\n")
                tagged += recv_exactly(sock, 2) == b"B:"
                sessions.append(sock)
            assert tagged == 4  # round robin in each worker: half of them
            for sock in sessions:
                sock.close()
            assert gateway.log().count(f"backend {other.endpoint} is draining") == 1


def test_handover_with_workers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    --handover with workers: the workers never take part in it (they have
    no fronts); a new gateway takes the acceptor's sockets over, its own
    workers serve, and the old one drains and exits 0.
    """
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    args = options(echo_backend, "--handover", str(tmp_path / "h.sock"))
    with GatewayProcess(args, tmp_path / "old") as old:
        running(old, 2)
        session = game_session("127.0.0.1", old.port)
        assert "handed over" not in old.log()
        with GatewayProcess(args, tmp_path / "new") as new:
            wait_for(lambda: "no longer accepts" in new.log(), "the hand-over")
            assert listening_ports(new.pid)["127.0.0.1"] == [old.port]
            running(new, 2)
            fresh = game_session("127.0.0.1", old.port)
            assert [s["worker"] for s in status(new)["sessions"]] in ([1], [2])
            session.sendall(b"old\n")
            assert recv_exactly(session, 4) == b"old\n"
            session.close()
            assert old.stop() == 0
            fresh.close()


@pytest.mark.parametrize("reactor", [None, "epoll", "uvloop"])
def test_workers_run_the_acceptors_reactor(
    tmp_path: Path, echo_backend: Backend, reactor: str | None
) -> None:
    """
    The workers run the reactor the acceptor was started with (twistd -r;
    without it, the gateway's default, lean-epoll).
    """
    with GatewayProcess(options(echo_backend), tmp_path, reactor=reactor) as gateway:
        running(gateway, 2)
        sessions = [game_session("127.0.0.1", gateway.port) for _ in range(2)]
        expected = reactor or "lean-epoll"
        wait_for(
            lambda: gateway.log().count(f"ready, reactor {expected}") == 2,
            "both workers' reactor lines",
        )
        assert "[worker 1] worker 1 (pid" in gateway.log()
        assert "[worker 2] worker 2 (pid" in gateway.log()
        for sock in sessions:
            sock.close()


def _tagged_echo(tag: bytes) -> Any:
    from tests.support import echo

    def handler(sock: socket.socket, backend: Backend) -> None:
        sock.sendall(tag)
        echo(sock, backend)

    return handler


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: must be 1 to 64, got 0"),
        (["--workers", "65"], "--workers: must be 1 to 64, got 65"),
        (["--workers", "two"], "--workers: expected a whole number, got 'two'"),
    ],
)
def test_bad_workers_settings(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        GatewayOptions(reactor=MemoryReactor()).parseOptions(
            ["--backend", "tcp:127.0.0.1:1", *args]
        )


def test_ssl_front_is_refused_with_workers(tmp_path: Path) -> None:
    """
    An ssl: front wraps its sockets in a way a worker cannot take over:
    refused at start, naming the front and the way out (tls:).
    """
    ca = make_ca(tmp_path / "ca", "localhost")
    front = f"ssl:0:privateKey={ca.server_pem}"
    GatewayOptions(reactor=MemoryReactor()).parseOptions(
        ["--backend", "tcp:127.0.0.1:1", "--listen", front]
    )
    with pytest.raises(UsageError, match="with --workers a front must be .*use tls: instead"):
        GatewayOptions(reactor=MemoryReactor()).parseOptions(
            ["--backend", "tcp:127.0.0.1:1", "--listen", front, "--workers", "2"]
        )
