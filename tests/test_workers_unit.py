"""
Unit tests of the acceptor's side of C{--workers} (L{gateway.process.dispatch},
L{gateway.process.supervisor}, L{gateway.process.control},
L{gateway.process.handoffs}, L{gateway.process.workerpool},
L{gateway.process.wire}): the control channel's framing, the worker
configuration, backend states from workers, and passing connections to
workers over a real socket pair.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport

from gateway.config import BackendSpec, GatewayConfig
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.pools import Pools
from gateway.process.control import ControlChannel
from gateway.process.dispatch import Dispatcher, Handoff, worker_config
from gateway.process.supervisor import WorkerProcess
from gateway.process.wire import Ended, Framed, LogEvent, Message, Passed, Ready, decode
from gateway.process.workerpool import WorkerPool
from gateway.process.workerstate import WorkerState


class Collect(Framed):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    def message_received(self, message: Message) -> None:
        self.messages.append(message)


def frames(messages: list[Message]) -> bytes:
    sender = Collect()
    transport = StringTransport()
    sender.makeConnection(transport)
    for message in messages:
        sender.send(message)
    return bytes(transport.value())


messages_strategy = st.lists(
    st.one_of(
        st.builds(
            LogEvent,
            level=st.text(max_size=5),
            text=st.text(max_size=20),
            fields=st.dictionaries(
                st.text(max_size=5),
                st.one_of(st.integers(), st.binary(max_size=300), st.text(max_size=20), st.none()),
                max_size=4,
            ),
        ),
        st.builds(Ended, numbers=st.lists(st.integers(), max_size=4).map(tuple)),
        st.builds(Ready, pid=st.integers()),
    ),
    max_size=6,
)


@given(messages_strategy, st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_framing_survives_any_split(messages: list[Message], cuts: list[int]) -> None:
    """
    Messages come out whole and in order however the stream is cut.
    """
    data = frames(messages)
    receiver = Collect()
    receiver.makeConnection(StringTransport())
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:], strict=False):
        receiver.dataReceived(data[start:end])
    assert receiver.messages == messages


def test_a_frame_too_long_drops_the_channel() -> None:
    receiver = Collect()
    transport = StringTransport()
    receiver.makeConnection(transport)
    receiver.dataReceived((2**31).to_bytes(4, "big") + b"x")
    assert transport.disconnecting
    assert receiver.messages == []


def test_worker_config_keeps_the_acceptors_things_to_itself() -> None:
    """
    A worker gets the demo's backends by address and the demo page, and
    never the fronts' hand-over, the admin endpoint or the access log file.
    """
    config = GatewayConfig(
        demo=True,
        handover="/run/h.sock",
        access_log="/var/log/a.jsonl",
        admin_token="x" * 20,
        backends=(BackendSpec(name="real", endpoint="tcp:127.0.0.1:7000"),),
    )
    pool = Pool([Backend(name="demo-a", description="tcp:127.0.0.1:4000", endpoint=None)])  # type: ignore[arg-type]
    derived = worker_config(config, Pools(pool))
    assert (derived.handover, derived.access_log, derived.admin, derived.admin_token) == (
        None,
        None,
        None,
        None,
    )
    assert not derived.demo and derived.http_root is not None
    assert [(b.name, b.endpoint) for b in derived.backends] == [
        ("real", "tcp:127.0.0.1:7000"),
        ("demo-a", "tcp:127.0.0.1:4000"),
    ]


def make_pool(count: int = 2) -> tuple[WorkerPool, Pool]:
    backends = Pool([Backend(name="a", description="tcp:127.0.0.1:1", endpoint=None)])  # type: ignore[arg-type]
    return WorkerPool(
        count, MemoryReactorClock(), Pools(backends), lambda: GatewayConfig()
    ), backends


def state_of(backend: Backend) -> BackendState:
    return backend.state


def life_of(worker: WorkerProcess) -> WorkerState:
    return worker.state


def test_a_worker_only_marks_an_up_backend_down() -> None:
    """
    A worker's report is about failed connections: it marks an up backend
    down for everyone, but never undoes an operator's drain nor brings a
    backend up.
    """
    workers, backends = make_pool()
    backend = backends.get("a")
    assert backend is not None
    workers.worker_state("a", BackendState.DOWN, "3 connection attempts failed in a row")
    assert state_of(backend) is BackendState.DOWN
    assert backend.reason == "in a worker: 3 connection attempts failed in a row"
    workers.worker_state("a", BackendState.UP, "?")
    assert state_of(backend) is BackendState.DOWN
    backends.set_state(backend, BackendState.DRAINING, "operator")
    workers.worker_state("a", BackendState.DOWN, "stale")
    assert state_of(backend) is BackendState.DRAINING
    workers.worker_state("nobody", BackendState.DOWN, "unknown backend")


class FakeRaw:
    """
    The socket transport under an admitted connection (what a Handoff needs).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.reading = True
        self.lost = False
        self.protocol: Any = None

    def fileno(self) -> int:
        return self.socket.fileno()

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        self.reading = False

    def stopWriting(self) -> None:  # noqa: N802 - Twisted's name
        pass

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.lost = True


def admitted(workers: WorkerPool, front: int = 0) -> tuple[Handoff, socket.socket, list[str]]:
    """
    A connection admitted on front C{front}: its Handoff (with a release
    hook), the client's end of a real socket pair, and the hooks that ran.
    """
    client, served = socket.socketpair()
    handoff = Dispatcher(workers, front).buildProtocol(None)
    raw = FakeRaw(served)
    raw.protocol = handoff
    released: list[str] = []
    handoff.add_close_hook(lambda: released.append("released"))
    handoff.raw = raw
    handoff.transport = raw  # type: ignore[assignment]
    return handoff, client, released


def running_worker(workers: WorkerPool, index: int) -> socket.socket:
    """
    Make worker C{index} look running, with a real handoff channel; the
    worker's end is returned.
    """
    worker = workers.workers[index - 1]
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    here.setblocking(False)
    worker.channel.open(here)
    worker.state = WorkerState.RUNNING
    return there


def receive(end: socket.socket) -> tuple[Passed, list[int]]:
    data, fds, _flags, _address = socket.recv_fds(end, 1 << 18, 4)
    message = decode(data)
    assert isinstance(message, Passed)
    return message, fds


def test_connections_go_to_the_least_loaded_worker_with_their_bytes() -> None:
    """
    Each admitted connection goes to the running worker holding the fewest,
    with its descriptor (the same socket: the client's bytes reach it) and
    the bytes read from it; the acceptor closes its own descriptor, and the
    slots are released only when the worker reports the end.
    """
    workers, _ = make_pool()
    ends = {1: running_worker(workers, 1), 2: running_worker(workers, 2)}
    got: dict[int, list[int]] = {1: [], 2: []}
    clients = []
    for number in range(4):
        handoff, client, released = admitted(workers)
        handoff.received.append(b"first bytes %d" % number)
        workers.dispatch(handoff)
        assert handoff.raw.socket.fileno() == -1  # closed here
        assert released == []
        assert handoff.worker is not None
        message, fds = receive(ends[handoff.worker.index])
        assert message == Passed(number=handoff.number, front=0, data=b"first bytes %d" % number)
        passed = socket.socket(fileno=fds[0])
        client.sendall(b"hello")
        assert passed.recv(5) == b"hello"
        passed.close()
        got[handoff.worker.index].append(handoff.number)
        clients.append((client, handoff, released))
    assert [len(numbers) for numbers in got.values()] == [2, 2]
    worker = workers.workers[0]
    ControlChannel(worker).message_received(Ended((got[1][0], 999)))
    ended = [released for _, h, released in clients if h.number == got[1][0]]
    assert ended == [["released"]]
    assert [len(w.live) for w in workers.workers] == [1, 2]
    for client, _, _ in clients:
        client.close()


def test_connections_wait_for_a_running_worker_and_close_in_a_drain() -> None:
    """
    With no worker running, admitted connections wait (not reading); the
    first worker to run gets them.  Once the gateway drains, a connection
    admitted late is closed instead.
    """
    workers, _ = make_pool(1)
    handoff, client, _ = admitted(workers)
    workers.dispatch(handoff)
    assert handoff.worker is None and not handoff.raw.reading
    end = running_worker(workers, 1)
    workers.worker_ready(workers.workers[0])
    message, fds = receive(end)
    assert message.number == handoff.number
    for fd in fds:
        socket.socket(fileno=fd).close()
    workers.stopping = True
    late, other, _ = admitted(workers)
    workers.dispatch(late)
    assert late.raw.lost and late.worker is None
    client.close()
    other.close()


def test_a_full_channel_queues_connections_in_order() -> None:
    """
    When the worker's channel has no room (the worker is busy), connections
    wait in order and the acceptor waits for the socket to be writable; once
    the worker reads, they all go, in the order they came.
    """
    workers, _ = make_pool(1)
    end = running_worker(workers, 1)
    worker = workers.workers[0]
    assert worker.channel.sock is not None
    worker.channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reactor = workers.clock
    sent = []
    clients = []
    while not worker.channel.backlog:
        handoff, client, _ = admitted(workers)
        handoff.received.append(b"x" * 2000)
        workers.dispatch(handoff)
        sent.append(handoff.number)
        clients.append(client)
        assert len(sent) < 1000, "the channel never filled"
    for _ in range(3):
        handoff, client, _ = admitted(workers)
        workers.dispatch(handoff)
        sent.append(handoff.number)
        clients.append(client)
    assert len(worker.channel.backlog) == 4
    assert reactor.getWriters()
    got: list[int] = []
    while len(got) < len(sent):
        try:
            message, fds = receive(end)
        except BlockingIOError:
            worker.channel.flush()
            continue
        got.append(message.number)
        for fd in fds:
            socket.socket(fileno=fd).close()
        end.setblocking(False)
    assert got == sent
    assert not worker.channel.backlog and not reactor.getWriters()
    for client in clients:
        client.close()


def test_a_worker_that_keeps_dying_young_waits_longer_each_time() -> None:
    """
    The supervisor: a dead worker's connections are lost (counted, slots
    freed) and it is started again after 0.2 s, doubling (up to 10 s) while
    it keeps dying within 10 s of its start, back to 0.2 s after a long
    life; a start that fails is tried again later.
    """
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    workers, _ = make_pool(1)
    clock = workers.clock
    worker = workers.workers[0]
    starts: list[float] = []
    failing = [False]

    def fake_start() -> None:
        if failing[0]:
            failing[0] = False
            raise OSError(24, "Too many open files")
        starts.append(clock.seconds())
        worker.state = WorkerState.RUNNING
        worker.pid = 4242
        worker.started_at = clock.seconds()

    worker.start = fake_start  # type: ignore[method-assign]
    fake_start()
    handoff, client, released = admitted(workers)
    worker.live[handoff.number] = handoff
    handoff.worker = worker

    def die() -> None:
        worker.processEnded(Failure(ProcessTerminated(signal=9)))

    clock.advance(30)  # a long life first
    die()
    assert released == ["released"] and worker.lost == 1 and workers.lost == 1
    assert life_of(worker) is WorkerState.RESTARTING
    clock.advance(0.19)
    assert len(starts) == 1
    clock.advance(0.01)
    assert len(starts) == 2 and worker.restarts == 1
    delays: list[float] = []
    for _ in range(7):  # dying young: 0.4, 0.8, ... capped at 10
        die()
        call = worker._restart_call
        assert call is not None
        delay = call.getTime() - clock.seconds()
        delays.append(round(delay, 3))
        clock.advance(delay)
        assert len(starts) == 2 + len(delays)
    assert delays == [0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    failing[0] = True
    die()
    clock.advance(10.0)  # the start fails: tried again later
    assert life_of(worker) is WorkerState.RESTARTING and len(starts) == 9
    clock.advance(10.0)
    assert len(starts) == 10 and life_of(worker) is WorkerState.RUNNING
    client.close()


def test_a_killed_worker_is_reported_in_its_real_state(
    log_events: EventLoggingObserver,
) -> None:
    """
    A running worker killed with SIGKILL closes its control channel before
    the acceptor hears that the process ended: the log says it was killed
    while running (not "while draining"), and the acceptor neither calls it
    a lost control channel nor signals the dead process.
    """
    from twisted.internet.error import ProcessTerminated
    from twisted.logger import LogLevel, formatEvent
    from twisted.python.failure import Failure

    workers, _ = make_pool(1)
    worker = workers.workers[0]
    victim = subprocess.Popen(["sleep", "30"])
    try:
        worker.pid = victim.pid
        worker.state = WorkerState.RUNNING
        worker.started_at = workers.clock.seconds()
        control = ControlChannel(worker)
        control.makeConnection(StringTransport())
        victim.kill()
        victim.wait(timeout=10)
        control.connectionLost(Failure(ConnectionDone()))
        assert life_of(worker) is WorkerState.RUNNING
        worker.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        assert life_of(worker) is WorkerState.RESTARTING
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=10)
    errors = [formatEvent(e) for e in log_events if e["log_level"] is LogLevel.error]
    assert errors == [
        f"worker 1 (pid {victim.pid}) was killed by SIGKILL while running: 0 sessions lost; "
        "restarting it in 0.4 s"
    ]


def test_a_worker_that_lost_its_control_channel_is_stopped(
    log_events: EventLoggingObserver,
) -> None:
    """
    A worker whose control channel closes while its process goes on (a bug)
    is told to drain and leave (SIGTERM) once it has not ended within the
    grace time; its end is then reported as happening while draining.
    """
    from twisted.internet.error import ProcessTerminated
    from twisted.logger import LogLevel, formatEvent
    from twisted.python.failure import Failure

    from gateway.process.supervisor import CONTROL_GRACE

    workers, _ = make_pool(1)
    worker = workers.workers[0]
    orphan = subprocess.Popen(["sleep", "30"])
    try:
        worker.pid = orphan.pid
        worker.state = WorkerState.RUNNING
        control = ControlChannel(worker)
        control.makeConnection(StringTransport())
        control.connectionLost(Failure(ConnectionDone()))
        workers.clock.advance(CONTROL_GRACE - 0.01)
        assert life_of(worker) is WorkerState.RUNNING and orphan.poll() is None
        workers.clock.advance(0.01)
        assert life_of(worker) is WorkerState.DRAINING
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        worker.processEnded(Failure(ProcessTerminated(signal=signal.SIGTERM)))
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait(timeout=10)
    errors = [formatEvent(e) for e in log_events if e["log_level"] is LogLevel.error]
    assert errors[0] == f"worker 1 (pid {orphan.pid}) lost its control channel; stopping it"
    assert errors[1].startswith(
        f"worker 1 (pid {orphan.pid}) was killed by SIGTERM while draining"
    )
