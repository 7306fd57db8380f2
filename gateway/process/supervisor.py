"""
Every core in use (C{--workers N}): the acceptor's supervision of one worker
process.

A L{WorkerProcess} starts its worker (C{python -m gateway.process.workerproc
INDEX}, L{gateway.process.workerproc}) with two socket pairs as its
descriptors 3 and 4: the control channel (its acceptor's end is a
L{gateway.process.control.ControlChannel}) and the handoff channel (a
L{gateway.process.handoffs.HandoffChannel}); the messages are those of
L{gateway.process.wire}.  It sends the worker its configuration and the
backends' states, asks it for its status, holds the connections it was
passed until it reports their end, and restarts it when it dies, after a
delay that a L{RestartPolicy} decides; the connections it held are counted
as lost and their slots freed, and connections not sent to it yet go to
another worker (through the pool, L{gateway.process.workerpool}).  The
other workers' sessions are never touched.  Its life is a L{WorkerState},
changed in L{WorkerProcess.enter} only.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any
from typing import Protocol as Structural

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

import gateway
from gateway.config import GatewayConfig
from gateway.connection import OneShotFactory
from gateway.pool.backends import Backend, BackendState
from gateway.pool.pools import Pools
from gateway.process.control import ControlChannel
from gateway.process.dispatch import Handoff
from gateway.process.handoffs import HandoffChannel
from gateway.process.wire import (
    HANDOFF_BUFFER,
    BackendStateChange,
    Configure,
    Message,
    StatusReply,
    StatusRequest,
    Stop,
)
from gateway.process.workerstate import TAKING, TRANSITIONS, RestartPolicy, WorkerState

__all__ = ["CONTROL_GRACE", "WorkerHost", "WorkerProcess"]

READY_WAIT = 30.0
"""Seconds a started worker has to say it is ready before it is killed."""

CONTROL_GRACE = 2.0
"""Seconds the acceptor reads a dead worker's control channel to its end, and
waits for a worker whose control channel closed to end before stopping it."""

STATUS_WAIT = 2.0
"""Seconds the admin endpoint waits for a worker's status before leaving it out."""


class WorkerHost(Structural):
    """
    What a L{WorkerProcess} needs of the pool it belongs to (a
    L{gateway.process.workerpool.WorkerPool}).
    """

    @property
    def clock(self) -> Any:
        """
        The reactor (time, processes, descriptors).
        """

    @property
    def backends(self) -> Pools:
        """
        The acceptor's backends, whose states the workers follow.
        """

    @property
    def stopping(self) -> bool:
        """
        Whether a drain has begun.
        """

    def count_lost(self, count: int) -> None:
        """
        C{count} connections were lost with a worker that died.
        """

    def next_number(self) -> int:
        """
        A number no connection nor request has had.
        """

    def worker_config(self) -> GatewayConfig:
        """
        What the workers run now.
        """

    def dispatch(self, handoff: Handoff) -> None:
        """
        Pass a connection to a worker.
        """

    def worker_ready(self, worker: WorkerProcess) -> None:
        """
        A worker runs.
        """

    def worker_state(self, name: str, state: BackendState, reason: str) -> None:
        """
        A worker changed a backend's state.
        """


def _command(index: int, reactor: Any) -> list[str]:
    """
    The command line of worker C{index}: the worker process's module, and
    the acceptor's kind of reactor (C{twistd -r uvloop}: the workers too).
    """
    from gateway.process.uvloopreactor import reactor_name

    name = reactor_name(reactor)
    return [
        sys.executable,
        "-m",
        "gateway.process.workerproc",
        str(index),
        *([name] if name is not None else []),
    ]


def _environment() -> dict[str, str]:
    """
    The workers' environment: this one, with this package importable.
    """
    env = dict(os.environ)
    # The folder that holds the gateway package (not a folder inside it,
    # whose subpackages such as gateway/http would shadow the standard library).
    here = os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [here, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    return env


def _how_it_ended(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = f"signal {value.signal}"
            return f"was killed by {name}"
        return f"exited with status {value.exitCode}"
    return "exited with status 0"


class WorkerProcess(ProcessProtocol):
    """
    One worker: its process, its two channels and the connections it holds.

    @ivar index: its number, from 1.
    @ivar pid: its process ID while it runs.
    @ivar state: where it is in its life (changed by L{enter} only).
    @ivar live: the connections it holds, by number.
    @ivar channel: its handoff channel.
    @ivar restarts: how many times it was started again after dying.
    @ivar lost: connections it held when it died, over all its deaths.
    @ivar started_at: when it was last started, in the clock's seconds.
    @ivar exited: fires once its process has ended (while it runs).
    """

    _log = Logger()

    def __init__(self, pool: WorkerHost, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.state = WorkerState.STOPPED
        self.live: dict[int, Handoff] = {}
        self.restarts = 0
        self.lost = 0
        self.control: ControlChannel | None = None
        self.channel = HandoffChannel(self, pool.clock)
        self.started_at = 0.0
        self.policy = RestartPolicy()
        self._restart_call: IDelayedCall | None = None
        self._status: dict[int, Deferred[StatusReply | None]] = {}
        self.exited: Deferred[None] | None = None
        self.pid_gone: int | None = None
        self._ended_reason: Failure | None = None
        self._finish_call: IDelayedCall | None = None
        self._ready_call: IDelayedCall | None = None
        self._orphan_call: IDelayedCall | None = None

    def enter(self, state: WorkerState) -> None:
        """
        Change state (every change goes through here); a change that
        L{TRANSITIONS} does not list is a bug, logged, and made anyway.
        """
        if state is not self.state and state not in TRANSITIONS[self.state]:
            self._log.warn(
                "worker {index}: unexpected change of state from {was} to {state}",
                index=self.index,
                was=self.state.value,
                state=state.value,
            )
        self.state = state

    # Lifecycle

    def start(self) -> None:
        """
        Start the process, with its two channels as descriptors 3 and 4.
        """
        pool = self.pool
        reactor = pool.clock
        control_here, control_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        handoff_here, handoff_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handoff_here.setblocking(False)
        handoff_here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HANDOFF_BUFFER)
        handoff_there.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HANDOFF_BUFFER)
        self.channel.open(handoff_here)
        self.enter(WorkerState.STARTING)
        self.started_at = reactor.seconds()
        self._ready_call = reactor.callLater(READY_WAIT, self._not_ready)
        self.exited = Deferred()
        try:
            reactor.spawnProcess(
                self,
                sys.executable,
                _command(self.index, reactor),
                env=_environment(),
                childFDs={0: 0, 1: 1, 2: 2, 3: control_there.fileno(), 4: handoff_there.fileno()},
            )
        finally:
            control_there.close()
            handoff_there.close()
        control_here.setblocking(False)
        reactor.adoptStreamConnection(
            control_here.fileno(), socket.AF_UNIX, OneShotFactory(ControlChannel(self))
        )
        control_here.close()  # adopted as a copy

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self._log.info("worker {index} started (pid {pid})", index=self.index, pid=self.pid)

    @override
    def processEnded(self, reason: Failure) -> None:
        # What the worker wrote last (its last ends, its last log events)
        # may still wait in the control channel: read it to its end first.
        self.pid_gone = self.pid
        self.pid = None
        self._ended_reason = reason
        if self.control is None:
            self._finish()
        else:
            self._finish_call = self.pool.clock.callLater(CONTROL_GRACE, self._finish)

    def control_too_long(self, length: int) -> None:
        """
        A control message too long to be read (a bug): the channel is dropped.
        """
        self._log.error(
            "worker {index}: a control message of {length} bytes is too long; dropping the "
            "channel",
            index=self.index,
            length=length,
        )

    def control_made(self, channel: ControlChannel) -> None:
        """
        The control channel is up: send the configuration.
        """
        self.control = channel
        self.send_config()

    def control_lost(self, channel: ControlChannel) -> None:
        """
        The control channel closed: the process ended (finish), or is ending
        (a process that dies closes its channel before the acceptor hears of
        its end: wait for that), or it lost its acceptor without ending (a
        bug): then, if it has not ended within L{CONTROL_GRACE} seconds, it
        is told to drain and leave.
        """
        if self.control is not channel:
            return
        self.control = None
        if self._ended_reason is not None:
            self._finish()
        elif self.pid is not None and not self.pool.stopping and self._orphan_call is None:
            self._orphan_call = self.pool.clock.callLater(CONTROL_GRACE, self._orphaned)

    def _orphaned(self) -> None:
        self._orphan_call = None
        if self.pid is None or self.pool.stopping or self.control is not None:
            return
        self.enter(WorkerState.DRAINING)
        self._log.error(
            "worker {index} (pid {pid}) lost its control channel; stopping it",
            index=self.index,
            pid=self.pid,
        )
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _finish(self) -> None:
        reason, self._ended_reason = self._ended_reason, None
        if reason is None:
            return
        if self._finish_call is not None and self._finish_call.active():
            self._finish_call.cancel()
        self._finish_call = None
        if self._orphan_call is not None and self._orphan_call.active():
            self._orphan_call.cancel()
        self._orphan_call = None
        pool = self.pool
        pid = self.pid_gone
        was = self.state
        self.enter(WorkerState.STOPPED if pool.stopping else WorkerState.RESTARTING)
        self._close_channels()
        for number in list(self._status):
            self._status_reply(number, None)
        live, self.live = self.live, {}
        waiting = self.channel.take_backlog()
        how = _how_it_ended(reason)
        exited, self.exited = self.exited, None
        if pool.stopping:
            for handoff in live.values():
                handoff.end()
            for handoff in waiting:
                handoff.close()
            if how != "exited with status 0" or live:
                self._log.info(
                    "worker {index} (pid {pid}) {how}; {count} connections closed with it",
                    index=self.index,
                    pid=pid,
                    how=how,
                    count=len(live) + len(waiting),
                )
            if exited is not None:
                exited.callback(None)
            return
        self.lost += len(live)
        pool.count_lost(len(live))
        for handoff in live.values():
            handoff.end()
        delay = self.policy.after_death(self.started_at, pool.clock.seconds())
        self._log.error(
            "worker {index} (pid {pid}) {how} while {was}: {count} sessions lost; "
            "restarting it in {delay:g} s",
            index=self.index,
            pid=pid,
            how=how,
            was=was.value,
            count=len(live),
            delay=delay,
        )
        self._restart_call = pool.clock.callLater(delay, self._restart)
        for handoff in waiting:
            pool.dispatch(handoff)
        if exited is not None:
            exited.callback(None)

    def _not_ready(self) -> None:
        self._ready_call = None
        if self.state is WorkerState.STARTING and self.pid is not None:
            self._log.error(
                "worker {index} (pid {pid}) did not get ready within {wait:g} s; killing it",
                index=self.index,
                pid=self.pid,
                wait=READY_WAIT,
            )
            self.kill()

    def _restart(self) -> None:
        self._restart_call = None
        if self.pool.stopping or self.state is not WorkerState.RESTARTING:
            return
        self.restarts += 1
        try:
            self.start()
        except Exception as error:
            # Out of descriptors or processes, say: try again later.
            self._close_channels()
            self.enter(WorkerState.RESTARTING)
            delay = self.policy.after_failed_start()
            self._log.error(
                "worker {index} cannot be started: {error}; trying again in {delay:g} s",
                index=self.index,
                error=str(error) or type(error).__name__,
                delay=delay,
            )
            self._restart_call = self.pool.clock.callLater(delay, self._restart)

    def cancel_restart(self) -> None:
        """
        The gateway stops: a worker waiting to be restarted is not.
        """
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        if self.state is WorkerState.RESTARTING:
            self.enter(WorkerState.STOPPED)

    def _close_channels(self) -> None:
        if self._ready_call is not None and self._ready_call.active():
            self._ready_call.cancel()
        self._ready_call = None
        self.channel.close()
        if self.control is not None and self.control.transport is not None:
            self.control.transport.loseConnection()
        self.control = None

    # The control channel

    def _send_control(self, message: Message) -> None:
        if self.control is not None:
            self.control.send(message)

    def send_config(self) -> None:
        """
        Send the configuration (at start, and again on every reload).
        """
        if self.control is not None:
            self.control.send(Configure(self.pool.worker_config()))
            for backend in self.pool.backends.backends:
                if backend.state is not BackendState.UP:
                    self.send_state(backend)

    def send_state(self, backend: Backend) -> None:
        """
        Tell the worker a backend's state.
        """
        self._send_control(BackendStateChange(backend.name, backend.state, backend.reason))

    def ended(self, numbers: tuple[int, ...]) -> None:
        """
        Connections ended in the worker: free their slots.
        """
        for number in numbers:
            handoff = self.live.pop(number, None)
            if handoff is not None:
                handoff.end()

    def drains_on_its_own(self) -> None:
        """
        It drains on its own (a SIGTERM sent to it): it takes nothing more.
        """
        self.enter(WorkerState.DRAINING)

    def ready(self) -> None:
        """
        It is configured and takes connections.
        """
        if self._ready_call is not None and self._ready_call.active():
            self._ready_call.cancel()
        self._ready_call = None
        self.enter(WorkerState.RUNNING)
        self.policy.ready(restarted=self.restarts > 0)
        self.pool.worker_ready(self)

    def backend_changed(self, name: str, state: BackendState, reason: str) -> None:
        """
        It changed a backend's state: the pool decides.
        """
        self.pool.worker_state(name, state, reason)

    def status_received(self, reply: StatusReply) -> None:
        """
        It answered a status request.
        """
        self._status_reply(reply.number, reply)

    def status(self, limit: int | None) -> Deferred[StatusReply | None]:
        """
        Ask the worker for its counters and sessions (L{None} if it does not
        answer within L{STATUS_WAIT} seconds).
        """
        done: Deferred[StatusReply | None] = Deferred()
        if self.control is None or self.state not in (WorkerState.RUNNING, WorkerState.DRAINING):
            done.callback(None)
            return done
        number = self.pool.next_number()
        self._status[number] = done
        timer = self.pool.clock.callLater(STATUS_WAIT, self._status_reply, number, None)

        def cancel_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        done.addBoth(cancel_timer)
        self.control.send(StatusRequest(number, limit))
        return done

    def _status_reply(self, number: int, message: StatusReply | None) -> None:
        waiting = self._status.pop(number, None)
        if waiting is not None:
            waiting.callback(message)

    def stop_now(self) -> None:
        """
        Close every session at once (a second SIGTERM).
        """
        self._send_control(Stop())

    # The handoff channel

    def taking(self) -> bool:
        """
        Whether it is passed connections now (starting or running).
        """
        return self.state in TAKING

    def channel_broken(self) -> None:
        """
        Its end of the handoff channel is closed: the end of its process follows.
        """
        self.enter(WorkerState.DYING)

    def pass_elsewhere(self, handoff: Handoff) -> None:
        """
        A connection it will not get goes to another worker.
        """
        handoff.assign(None)
        self.pool.dispatch(handoff)

    def gateway_stopping(self) -> bool:
        """
        Whether the gateway drains.
        """
        return self.pool.stopping

    @property
    def load(self) -> int:
        """
        The connections it holds or that wait for it.
        """
        return len(self.live) + len(self.channel.backlog)

    # Stopping and status

    def kill(self) -> None:
        """
        The drain is over and the worker still runs: kill it.
        """
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def describe(self) -> dict[str, Any]:
        """
        This worker as C{/status.json} lists it.
        """
        return {
            "worker": self.index,
            "pid": self.pid,
            "state": self.state.value,
            "connections": self.load,
            "restarts": self.restarts,
            "lost": self.lost,
        }
