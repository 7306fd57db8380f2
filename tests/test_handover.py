"""
The hand-over protocol's edges: nobody to take over from, an old process
that answers wrongly, the --handover setting's checks, and a TLS front
handed over.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.usage import UsageError

from gateway.options import GatewayOptions
from gateway.process.handover import (
    HandoverError,
    HandoverLostError,
    HandoverRefusedError,
    HandoverServer,
    _HandoverProtocol,
    take_over,
)
from gateway.process.listener import FrontListener
from tests.certs import make_ca
from tests.support import (
    DEADLINE,
    GatewayProcess,
    connect,
    echo,
    listening_ports,
    recv_exactly,
    wait_for,
)
from tests.support import Backend as ServerBackend


def test_nobody_there(tmp_path: Path) -> None:
    """
    With no socket at the path, or a stale one nobody listens on, there is
    nothing to take over: the gateway starts as the first.
    """
    assert take_over(str(tmp_path / "none.sock")) is None
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    assert take_over(str(tmp_path / "stale.sock")) is None


def _answering(path: Path, answer: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        connection, _ = server.accept()
        connection.recv(100)
        connection.sendall(answer)
        connection.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        (b"", HandoverLostError, "closed the connection"),
        (b'{"pid": 1, "sockets": [', HandoverLostError, "closed the connection"),
        (b"not json\n", HandoverLostError, "garbled"),
        (b"[1, 2]\n", HandoverLostError, "garbled"),
        (b'{"pid": 1}\n', HandoverLostError, "garbled"),
        (
            b'{"pid": 1, "sockets": [{"description": "tcp:1", "family": 2}]}\n',
            HandoverLostError,
            "got 0",
        ),
        (
            b'{"error": "process 7 is taking over already"}\n',
            HandoverRefusedError,
            "refused: process 7",
        ),
    ],
)
def test_bad_answers(
    tmp_path: Path, answer: bytes, kind: type[HandoverError], message: str
) -> None:
    """
    A process at the path that answers wrongly (nothing, a truncated or
    garbled line, too few sockets) makes the hand-over lost (the new process
    then binds every front itself); an explicit refusal is a refusal (it
    then binds nothing).
    """
    path = tmp_path / "h.sock"
    thread = _answering(path, answer)
    with pytest.raises(kind, match=message):
        take_over(str(path), timeout=5)
    thread.join(timeout=5)


def _descriptors_of(sock: socket.socket) -> int:
    """
    How many descriptors of this process refer to C{sock}'s socket.
    """
    inode = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == inode
        except OSError:
            continue
    return count


@pytest.mark.parametrize("line", [b'{"pid": 1, "sock', b"garbage\n"])
def test_sockets_of_a_broken_answer_are_closed(tmp_path: Path, line: bytes) -> None:
    """
    An old process that sends some sockets and then dies (or garbles the
    line naming them) gives nothing: every descriptor received is closed
    again, so the ports are free once the old process is gone.
    """
    path = tmp_path / "h.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    fronts = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]

    def serve() -> None:
        connection, _ = server.accept()
        connection.recv(100)
        socket.send_fds(connection, [line], [front.fileno() for front in fronts])
        connection.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(HandoverLostError):
        take_over(str(path), timeout=5)
    thread.join(timeout=5)
    assert [_descriptors_of(front) for front in fronts] == [1, 1]
    ports = [front.getsockname()[1] for front in fronts]
    for front in fronts:
        front.close()
    for port in ports:
        socket.create_server(("127.0.0.1", port)).close()


def test_silent_old_process_is_waited_for_a_bounded_time(tmp_path: Path) -> None:
    """
    An old process that takes the connection and never answers, or answers
    one byte at a time, fails the hand-over after the timeout (in all, not
    per read), instead of hanging the new process.
    """
    path = tmp_path / "h.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    halt = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        connection.recv(100)
        for _ in range(200):  # 10 s at most
            if halt.wait(0.05):
                break
            connection.sendall(b" ")
        connection.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    clock = iter(range(1000))
    try:
        with pytest.raises(HandoverLostError, match="no answer in time"):
            take_over(str(path), timeout=3, now=lambda: float(next(clock)))
    finally:
        halt.set()
        thread.join(timeout=5)
        server.close()


def test_old_process_dying_before_accepting(tmp_path: Path) -> None:
    """
    An old process that dies while the new one's connection waits in its
    backlog (the connection is reset: reading says so, or, if the death
    came before the request was sent, writing says "broken pipe") fails the
    hand-over as lost, not as an error that stops the new process.
    """
    path = tmp_path / "h.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def die() -> None:
        wait_for(lambda: _waiting_at(path) >= 2, "the connection in the backlog")
        server.close()

    thread = threading.Thread(target=die, daemon=True)
    thread.start()
    with pytest.raises(HandoverLostError, match="reset|Broken pipe"):
        take_over(str(path), timeout=DEADLINE)
    thread.join(timeout=DEADLINE)


def test_handover_setting(tmp_path: Path) -> None:
    """
    --handover is kept as an absolute path; a path in a missing folder, or a
    file that is not a socket, is refused naming the option.
    """
    os.chdir(tmp_path)
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(["--backend", "tcp:127.0.0.1:1", "--handover", "h.sock"])
    assert options.config.handover == str(tmp_path / "h.sock")
    (tmp_path / "plain").write_text("x")
    for path, message in [
        (str(tmp_path / "missing" / "h.sock"), "the folder of"),
        (str(tmp_path / "plain"), "exists and is not a socket"),
    ]:
        with pytest.raises(UsageError, match=f"--handover: .*{message}"):
            GatewayOptions(reactor=MemoryReactor()).parseOptions(
                ["--backend", "tcp:127.0.0.1:1", "--handover", path]
            )


def test_tls_front_is_handed_over_with_tls(tmp_path: Path) -> None:
    """
    A tls: front taken over by a new process still speaks TLS (the adopted
    socket gets the same TLS wrapper), with the same certificate, once the
    old process has stopped accepting and exited.
    """
    ca = make_ca(tmp_path / "ca", "localhost")
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(ca.server_pem, certs / "localhost.pem")
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with ServerBackend(echo) as backend:
        args = [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            f"tls:{certs}:port=0:interface=\\:\\:1",
            "--backend",
            backend.endpoint,
            "--handover",
            str(tmp_path / "h.sock"),
            "--sniff-timeout",
            "0.2",
            "--health-interval",
            "0",
        ]
        with GatewayProcess(args, tmp_path / "old") as old:
            wait_for(lambda: "::1" in listening_ports(old.pid), "the TLS front")
            tls_port = listening_ports(old.pid)["::1"][0]
            with GatewayProcess(args, tmp_path / "new") as new:
                wait_for(lambda: "no longer accepts" in new.log(), "the hand-over")
                assert listening_ports(new.pid)["::1"] == [tls_port]
                assert old.stop() == 0
                context = ssl.create_default_context(cafile=str(ca.trust_dir / "ca.pem"))
                raw = socket.create_connection(("::1", tls_port), timeout=DEADLINE)
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"over tls\n")
                    assert recv_exactly(tls, 9) == b"over tls\n"


class _UnixTransport(StringTransport):
    """
    A L{StringTransport} with what the old side uses of a UNIX transport: its
    socket (for the peer's credentials; one end of a socketpair, so the
    peer is this process) and C{sendFileDescriptor}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.socket, self._other = socket.socketpair()
        self.fds: list[int] = []

    def sendFileDescriptor(self, fd: int) -> None:  # noqa: N802 - Twisted's name
        """
        Record a descriptor sent.
        """
        self.fds.append(fd)

    def close(self) -> None:
        """
        Close the socketpair.
        """
        self.socket.close()
        self._other.close()


class _Port:
    """
    A listening port as the old side sees it: its socket, and reading that
    can be stopped.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.reading = True

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        """
        Stop accepting.
        """
        self.reading = False


class _AdoptingReactor:
    """
    The one reactor method the hand-over server uses: C{adoptStreamPort}
    (the socket is kept, as the real reactor does, without accepting).
    """

    def adoptStreamPort(self, fd: int, family: int, factory: object) -> _Port:  # noqa: N802
        """
        A port on a copy of the listening socket C{fd}.
        """
        return _Port(socket.socket(fileno=os.dup(fd)))


def _old_side(
    tmp_path: Path, resumed: list[list[tuple[str, Any]]] | None = None
) -> tuple[HandoverServer, list[list[tuple[str, Any]]], Callable[[], _HandoverProtocol]]:
    front = _Port(socket.create_server(("127.0.0.1", 0)))
    given: list[list[tuple[str, Any]]] = []
    server = HandoverServer(
        str(tmp_path / "h.sock"),
        _AdoptingReactor(),
        lambda: [("tcp:1", cast(IListeningPort, front))],
        given.append,
        None if resumed is None else resumed.append,
    )
    transports: list[_UnixTransport] = []

    def taker() -> _HandoverProtocol:
        protocol = _HandoverProtocol(server)
        transport = _UnixTransport()
        transports.append(transport)
        protocol.makeConnection(transport)
        return protocol

    return server, given, taker


def _said(protocol: _HandoverProtocol) -> bytes:
    transport = protocol.transport
    assert isinstance(transport, _UnixTransport)
    return transport.value()


def test_sockets_are_handed_over_once(tmp_path: Path) -> None:
    """
    The old process gives its sockets to one taker: a second one, while the
    first is taking over or once it has, gets a one-line refusal, no
    descriptor, and its connection closed; the first one's READY stops the
    old process accepting and is answered HANDED-OVER.
    """
    server, given, taker = _old_side(tmp_path)
    first = taker()
    first.dataReceived(b"TAKEOVER\n")
    assert json.loads(_said(first))["sockets"] == [{"description": "tcp:1", "family": 2}]
    second = taker()
    second.dataReceived(b"TAKEOVER\n")
    refusal = json.loads(_said(second))
    assert refusal == {"error": f"process {os.getpid()} is taking over already"}
    assert second.transport.fds == []  # type: ignore[union-attr]
    assert second.transport.disconnecting  # type: ignore[union-attr]
    first.dataReceived(b'READY ["tcp:1"]\n')
    assert _said(first).endswith(b"\nHANDED-OVER\n")
    assert [[d for d, _ in ports] for ports in given] == [["tcp:1"]]
    assert server.handed_over_to == os.getpid()
    third = taker()
    third.dataReceived(b"TAKEOVER\n")
    assert json.loads(_said(third)) == {"error": f"already handed over to process {os.getpid()}"}
    assert len(given) == 1


def test_taker_gone_before_ready_frees_the_sockets(tmp_path: Path) -> None:
    """
    A taker whose connection closes before READY (it died, or gave up and
    bound its own ports) leaves the old process accepting, and the next
    taker gets the sockets.
    """
    server, given, taker = _old_side(tmp_path)
    first = taker()
    first.dataReceived(b"TAKEOVER\n")
    first.connectionLost(None)
    second = taker()
    second.dataReceived(b"TAKEOVER\n")
    assert "sockets" in json.loads(_said(second))
    assert given == [] and server.handed_over_to is None


def test_taker_gone_after_ready_gives_the_sockets_back(tmp_path: Path) -> None:
    """
    A taker whose connection closes after READY but before it has put its
    own socket at PATH (it died) gets the old process accepting again on
    what it had handed over, and the next taker gets the sockets; one that
    has put its socket at PATH leaves the old one stopped, and no longer
    listening at PATH.
    """
    resumed: list[list[tuple[str, Any]]] = []
    server, given, taker = _old_side(tmp_path, resumed)
    server.startService()
    first = taker()
    first.dataReceived(b"TAKEOVER\n")
    first.dataReceived(b'READY ["tcp:1"]\n')
    first.connectionLost(None)
    assert [[d for d, _ in ports] for ports in resumed] == [["tcp:1"]]
    assert server.handed_over_to is None
    second = taker()
    second.dataReceived(b"TAKEOVER\n")
    assert "sockets" in json.loads(_said(second))
    second.dataReceived(b'READY ["tcp:1"]\n')
    successor = HandoverServer(server.path, _AdoptingReactor(), list, lambda given: None)
    successor.startService()
    second.connectionLost(None)
    assert len(resumed) == 1 and len(given) == 2
    assert server.handed_over_to == os.getpid()
    assert server._port is None
    successor.stopService()


def test_path_is_replaced_never_unlinked_under_a_listener(tmp_path: Path) -> None:
    """
    A process listening at PATH replaces what is there in one step (a stale
    socket, or the process it took over from); the process it replaced
    leaves PATH alone when it stops, and only the process whose socket is
    at PATH removes it when it stops.
    """
    path = tmp_path / "h.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()

    def server() -> HandoverServer:
        return HandoverServer(str(path), _AdoptingReactor(), list, lambda given: None)

    def answering() -> bool:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    old, new = server(), server()
    old.startService()
    assert answering()
    inode = path.stat().st_ino
    new.startService()
    assert answering() and path.stat().st_ino != inode
    old.stopService()
    assert answering()
    new.stopService()
    assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _pid_at(path: Path) -> int:
    """
    The process listening at the UNIX socket C{path} (its credentials).
    """
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(DEADLINE)
        probe.connect(str(path))
        raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[0])


def _waiting_at(path: Path) -> int:
    """
    How many sockets carry C{path} in /proc/net/unix: the listener, plus one
    per connection waiting in its backlog (a gateway's socket shows the
    temporary name it was bound at, C{PATH.PID.new}).
    """
    with open("/proc/net/unix") as table:
        return sum(str(path) in line for line in table)


class _FakeOld:
    """
    A gateway that misbehaves during a hand-over: it listens at PATH, holds
    real listening sockets for the fronts (as a running gateway does), and
    dies (closes everything, leaving PATH behind as kill -9 does) or goes
    silent at a chosen point of the protocol.

    @ivar ports: description -> port of each front it holds.
    """

    STOPS = (
        "before-accepting",
        "before-answering",
        "after-some-sockets",
        "garbled-answer",
        "before-ready",
        "after-ready",
        "silent",
    )

    def __init__(self, path: Path, stop: str) -> None:
        self.path = path
        self.stop = stop
        self.fronts = {
            f"tcp:{port}:interface={host}": sock
            for host in ("127.0.0.1", "127.0.0.3")
            for sock in [socket.create_server((host, 0))]
            for port in [sock.getsockname()[1]]
        }
        self.ports = {d: s.getsockname()[1] for d, s in self.fronts.items()}
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(5)
        self.listener.settimeout(DEADLINE)
        self.halt = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _die(self, *connections: socket.socket) -> None:
        for sock in [*self.fronts.values(), *connections, self.listener]:
            sock.close()

    def _serve(self) -> None:
        if self.stop == "before-accepting":
            deadline = time.monotonic() + DEADLINE
            while _waiting_at(self.path) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            self._die()
            return
        connection, _ = self.listener.accept()
        connection.settimeout(DEADLINE)
        connection.recv(100)
        listed = [{"description": d, "family": 2} for d in self.fronts]
        answer = json.dumps({"pid": 1, "sockets": listed}).encode() + b"\n"
        fds = [sock.fileno() for sock in self.fronts.values()]
        if self.stop == "after-some-sockets":
            socket.send_fds(connection, [answer[:20]], fds[:1])
        elif self.stop == "garbled-answer":
            # Its ports are closed before the line ends (it is dying).
            socket.send_fds(connection, [b"\x00garbled"], fds)
            for sock in self.fronts.values():
                sock.close()
            connection.sendall(b"\n")
        elif self.stop in ("before-ready", "after-ready"):
            socket.send_fds(connection, [answer], fds)
            if self.stop == "after-ready":
                connection.recv(1000)
        elif self.stop == "silent":
            self.halt.wait(DEADLINE * 2)
        self._die(connection)

    def __enter__(self) -> _FakeOld:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self._thread.join(timeout=DEADLINE)


def _takeover_args(backend: ServerBackend, path: Path, ports: list[str]) -> list[str]:
    args = ["--backend", backend.endpoint, "--handover", str(path), "--health-interval", "0"]
    args += ["--sniff-timeout", "0.2", "--listen", ports[0], "--admin", ports[1]]
    return args


def _echoes(port: int) -> bool:
    with connect(port) as session:
        session.sendall(b"still here\n")
        return recv_exactly(session, 11) == b"still here\n"


@pytest.mark.parametrize("stop", [s for s in _FakeOld.STOPS if s != "silent"])
def test_old_process_dying_midway_leaves_every_front_listening(tmp_path: Path, stop: str) -> None:
    """
    Whenever the old process dies during the hand-over (before accepting the
    new one's connection, before answering, after some of its sockets,
    with a garbled answer, before or after READY), the new one ends up
    listening on every front and the admin endpoint, on the same ports
    (fresh binds for what it did not take over), says so in one line, and
    serves PATH itself.
    """
    path = tmp_path / "h.sock"
    with ServerBackend(echo) as backend, _FakeOld(path, stop) as old:
        descriptions = list(old.ports)
        with GatewayProcess(_takeover_args(backend, path, descriptions), tmp_path) as new:
            ports = listening_ports(new.pid)
            assert ports["127.0.0.1"] == [old.ports[descriptions[0]]]
            wait_for(lambda: "127.0.0.3" in listening_ports(new.pid), "the admin endpoint")
            assert listening_ports(new.pid)["127.0.0.3"] == [old.ports[descriptions[1]]]
            assert _echoes(new.port)
            wait_for(lambda: "waiting for a hand-over" in new.log(), "PATH served")
            assert _pid_at(path) == new.pid
            log = new.log()
            if stop in ("before-ready", "after-ready"):
                assert log.count("did not confirm the hand-over") == 1, log
            else:
                assert log.count("took nothing over, binding every front") == 1, log
            assert "Traceback" not in log


def test_silent_old_process_holding_its_ports(tmp_path: Path) -> None:
    """
    An old process that never answers (hung, not dead) is waited for a
    bounded time; then the new one tries to bind the fronts itself, cannot
    (the old one holds them), and stops with one line and exit status 2,
    leaving the old one's sockets alone.
    """
    path = tmp_path / "h.sock"
    with ServerBackend(echo) as backend, _FakeOld(path, "silent") as old:
        descriptions = list(old.ports)
        gateway = GatewayProcess(_takeover_args(backend, path, descriptions), tmp_path)
        result = subprocess.run(gateway.argv, capture_output=True, timeout=60)
        log = gateway.log()
        assert result.returncode == 2, log
        assert log.count("took nothing over, binding every front") == 1, log
        assert "(no answer in time)" in log
        errors = [line for line in log.splitlines() if "gateway: error:" in line]
        assert len(errors) == 1, log
        assert f"--listen {descriptions[0]}: Couldn't listen" in errors[0]
        assert "Address already in use" in errors[0]
        assert "Traceback" not in log
        assert old.fronts[descriptions[0]].fileno() != -1


def _handover_args(backend: ServerBackend, path: Path) -> list[str]:
    return [
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--backend",
        backend.endpoint,
        "--handover",
        str(path),
        "--sniff-timeout",
        "0.2",
        "--health-interval",
        "0",
    ]


def _start(gateway: GatewayProcess) -> GatewayProcess:
    """
    Start C{gateway} without waiting for it to listen (it may be refused).
    """
    gateway.process = subprocess.Popen(
        gateway.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    return gateway


def test_old_gateway_killed_while_the_new_one_waits(tmp_path: Path) -> None:
    """
    A real old gateway killed (kill -9) while the new one's TAKEOVER waits
    in its backlog: the new one's connection is reset, and it binds the
    fronts itself, the TCP one on the same port and the UNIX one at the
    same path (the dead one's socket file replaced), instead of exiting.
    """
    path = tmp_path / "h.sock"
    front = tmp_path / "front.sock"
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with ServerBackend(echo) as backend:
        args = [*_handover_args(backend, path), "--listen", f"unix:{front}"]
        with GatewayProcess(args, tmp_path / "old") as old:
            port = old.port
            wait_for(lambda: "waiting for a hand-over" in old.log(), "the old one at PATH")
            os.kill(old.pid, signal.SIGSTOP)
            args[1] = f"tcp:{port}:interface=127.0.0.1"
            new = _start(GatewayProcess(args, tmp_path / "new"))
            try:
                wait_for(lambda: _waiting_at(path) >= 2, "the new one to knock")
                # Not reaped at once: a zombie still holds its unix: front's lock.
                os.kill(old.pid, signal.SIGKILL)
                wait_for(lambda: "waiting for a hand-over" in new.log(), "the new one to start")
                assert port in listening_ports(new.pid)["127.0.0.1"]
                assert _echoes(port)
                with socket.socket(socket.AF_UNIX) as session:
                    session.settimeout(DEADLINE)
                    session.connect(str(front))
                    session.sendall(b"unix\n")
                    assert recv_exactly(session, 5) == b"unix\n"
                assert "(Connection reset by peer): took nothing over" in new.log()
                assert _pid_at(path) == new.pid
            finally:
                new.stop()


def test_two_new_processes_racing_for_one_old_one(tmp_path: Path) -> None:
    """
    Two new gateways started at once with the same --handover: the old
    one's sockets go to one of them only.  The other is refused with one
    line and exit status 2, having bound nothing (or, if it came after the
    first had finished, takes over from that one in turn).  New
    connections are served by the last taker alone, which serves PATH; the
    old one handed over once.  Repeated; in even rounds the old process is
    stopped (SIGSTOP) until both wait in its backlog, so that it reads both
    TAKEOVERs in one go.
    """
    with ServerBackend(echo) as backend:
        for round_ in range(3):
            base = tmp_path / str(round_)
            for name in ("old", "a", "b"):
                (base / name).mkdir(parents=True)
            args = _handover_args(backend, base / "h.sock")
            with GatewayProcess(args, base / "old") as old:
                wait_for(lambda: "waiting for a hand-over" in old.log(), "the old one at PATH")
                if round_ % 2 == 0:
                    os.kill(old.pid, signal.SIGSTOP)
                takers = [_start(GatewayProcess(args, base / n)) for n in ("a", "b")]
                try:
                    if round_ % 2 == 0:
                        path = base / "h.sock"
                        wait_for(lambda: _waiting_at(path) >= 3, "both to knock")  # noqa: B023
                        os.kill(old.pid, signal.SIGCONT)
                    _check_race(old, takers, base / "h.sock")
                finally:
                    for taker in takers:
                        taker.stop()


def _settled(taker: GatewayProcess) -> bool:
    assert taker.process is not None
    log = taker.log()
    return taker.process.poll() is not None or (
        "waiting for a hand-over" in log and "no longer accepts" in log
    )


def _check_race(old: GatewayProcess, takers: list[GatewayProcess], path: Path) -> None:
    wait_for(lambda: all(_settled(taker) for taker in takers), "both takers to settle")
    from_old = [t for t in takers if f"taking over from process {old.pid}:" in t.log()]
    assert len(from_old) == 1, [t.log() for t in takers]
    assert old.log().count("] handed over to process") == 1
    first = from_old[0]
    second = takers[1 - takers.index(first)]
    assert second.process is not None
    if second.process.poll() is not None:
        last = first
        log = second.log()
        assert second.process.returncode == 2, log
        errors = [line for line in log.splitlines() if "gateway: error:" in line]
        assert len(errors) == 1 and "--handover: the running gateway refused: " in errors[0], log
        assert "listening on" not in log and "waiting for a hand-over" not in log
    else:
        # It came once the first had finished: a hand-over from it, in turn.
        last = second
        assert f"taking over from process {first.pid}:" in second.log()
    assert _pid_at(path) == last.pid
    for _ in range(4):
        assert _echoes(old.port)
    wait_for(lambda: last.log().count("game session from") >= 4, "the sessions' log lines")
    assert [p.log().count("game session from") for p in (old, first, second)].count(0) == 2


def test_stale_unix_front_is_cleared_only_when_its_holder_is_gone(tmp_path: Path) -> None:
    """
    Before binding a unix: front it did not take over, a gateway removes
    the socket and lock file a dead (or zombie) process left there; a
    socket someone listens at, or whose lock names a running process, is
    left alone.
    """
    path = tmp_path / "front.sock"

    def front() -> FrontListener:
        endpoint = UNIXServerEndpoint(MemoryReactor(), str(path))
        return FrontListener(f"unix:{path}", endpoint, Factory())

    def leave(pid: int, listening: bool) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        if listening:
            sock.listen(1)
        os.symlink(str(pid), f"{path}.lock")
        return sock

    zombie = subprocess.Popen(["true"])
    wait_for(
        lambda: Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1][0] == "Z", "a zombie"
    )
    for holder, listening, removed in [
        (zombie.pid, False, True),
        (os.getpid(), False, False),
        (zombie.pid, True, False),
    ]:
        sock = leave(holder, listening)
        front().clear_stale()
        assert (not path.exists(), not os.path.lexists(f"{path}.lock")) == (removed, removed)
        sock.close()
        for stale in (path, Path(f"{path}.lock")):
            if os.path.lexists(stale):
                stale.unlink()
    zombie.wait(timeout=DEADLINE)
    sock = leave(zombie.pid, False)  # now gone altogether
    front().clear_stale()
    assert not path.exists()
    sock.close()


def test_new_process_dying_after_ready_gives_the_fronts_back(tmp_path: Path) -> None:
    """
    A new process that takes the sockets, says READY and dies before it
    serves PATH (a peer written here, speaking the new side) does not leave
    the front with nobody accepting: the old gateway accepts there again,
    and a later new gateway takes over from it as usual.
    """
    path = tmp_path / "h.sock"
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with ServerBackend(echo) as backend:
        args = _handover_args(backend, path)
        with GatewayProcess(args, tmp_path / "old") as old:
            wait_for(lambda: "waiting for a hand-over" in old.log(), "the old one at PATH")
            with socket.socket(socket.AF_UNIX) as taker:
                taker.settimeout(DEADLINE)
                taker.connect(str(path))
                taker.sendall(b"TAKEOVER\n")
                line = b""
                while not line.endswith(b"\n"):  # one descriptor per byte at first
                    chunk, fds, _flags, _address = socket.recv_fds(taker, 65536, 8)
                    assert chunk, line
                    line += chunk
                    for fd in fds:
                        os.close(fd)
                listed = [entry["description"] for entry in json.loads(line)["sockets"]]
                taker.sendall(b"READY " + json.dumps(listed).encode() + b"\n")
                assert recv_exactly(taker, 12) == b"HANDED-OVER\n"
            wait_for(lambda: "accepting again on" in old.log(), "the old one to take back")
            assert _echoes(old.port)
            with GatewayProcess(args, tmp_path / "new") as new:
                wait_for(lambda: "no longer accepts" in new.log(), "the hand-over")
                assert old.log().count("] handed over to process") == 2


@pytest.mark.parametrize("patient", [True, False])
def test_fresh_bind_waits_for_a_dying_process_to_release_its_port(patient: bool) -> None:
    """
    After a broken hand-over a front binds fresh; if the old process (dying)
    still holds the address, the bind is tried again for a bounded time and
    succeeds once the address is free.  Without that patience the same
    bind stops start-up with one line.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from gateway.process.errors import StartupError

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    release = threading.Timer(0.3, holder.close)
    release.start()
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    front = FrontListener(f"tcp:{port}:interface=127.0.0.1", endpoint, Factory())
    if patient:
        front.wait_for_release(5.0)
    try:
        if patient:
            front.privilegedStartService()
            assert front.port is not None
            assert front.port.getHost().port == port  # type: ignore[attr-defined]
        else:
            with pytest.raises(StartupError, match="Address already in use"):
                front.privilegedStartService()
    finally:
        release.join()
        holder.close()
        if front.port is not None:
            front.port.stopListening()
