"""
Every core in use (C{--workers N}): the acceptor's workers.

The L{WorkerPool} is a Service of the acceptor: it starts its worker
processes (each supervised by a L{gateway.process.supervisor.WorkerProcess}),
passes each admitted connection (a L{gateway.process.dispatch.Handoff}) to
the least-loaded running worker, or keeps it until one runs, forwards the
backends' states and the configuration to every worker, gathers their
status for the admin endpoint, and drains them when the gateway stops.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from typing_extensions import override

from gateway.config import GatewayConfig
from gateway.pool.backends import Backend, BackendState
from gateway.pool.pools import Pools
from gateway.process.dispatch import Handoff, worker_config
from gateway.process.supervisor import WorkerProcess
from gateway.process.wire import StatusReply
from gateway.process.workerstate import WorkerState

__all__ = ["KILL_GRACE", "WorkerPool"]

KILL_GRACE = 5.0
"""Seconds a stopping worker gets past its drain before it is killed."""


class WorkerPool(Service):
    """
    The acceptor's workers: starts them (each L{WorkerProcess} restarts its
    own when it dies), passes them connections (the least-loaded running one
    gets the next) and tells them what changes.

    @ivar clock: the reactor (time, processes, descriptors).
    @ivar backends: the acceptor's pool, whose states the workers follow.
    @ivar workers: every worker, by index order.
    @ivar lost: connections lost with dead workers.
    @ivar stopping: a drain has begun: nothing is restarted.
    """

    _log = Logger()

    def __init__(
        self,
        count: int,
        clock: Any,
        backends: Pools,
        config: Callable[[], GatewayConfig],
    ) -> None:
        """
        @param config: the running configuration (read at each send).
        """
        self.clock = clock
        self.backends = backends
        self._config = config
        self.workers = [WorkerProcess(self, index) for index in range(1, count + 1)]
        self.lost = 0
        self.stopping = False
        self._number = 0
        self._waiting: deque[Handoff] = deque()
        backends.observers.append(self._state_changed)

    def count_lost(self, count: int) -> None:
        """
        C{count} connections were lost with a worker that died.
        """
        self.lost += count

    def next_number(self) -> int:
        """
        A number no connection nor request has had.
        """
        self._number += 1
        return self._number

    def worker_config(self) -> GatewayConfig:
        """
        What the workers run now.
        """
        return worker_config(self._config(), self.backends)

    @override
    def startService(self) -> None:
        super().startService()
        for worker in self.workers:
            worker.start()

    # Connections

    def dispatch(self, handoff: Handoff) -> None:
        """
        Pass an admitted connection to the least-loaded running worker, or
        keep it until one runs.
        """
        if handoff.ended:
            return
        # A connection held in queue mode is resumed once admitted: read
        # nothing more here (what was read goes with it).
        handoff.raw.stopReading()
        if self.stopping:
            # Admitted after the drain began (its PROXY header came late, or
            # it waited in queue mode): the workers take nothing new now.
            handoff.close()
            return
        running = [
            w
            for w in self.workers
            if w.state is WorkerState.RUNNING and w.channel.sock is not None
        ]
        if not running:
            self._waiting.append(handoff)
            return
        worker = min(running, key=lambda w: w.load)
        worker.channel.send(handoff)

    def forget(self, handoff: Handoff) -> None:
        """
        A connection went away before it was passed on.
        """
        if handoff in self._waiting:
            self._waiting.remove(handoff)
        for worker in self.workers:
            worker.channel.forget(handoff)

    def worker_ready(self, worker: WorkerProcess) -> None:
        """
        A worker runs: pass it what waited for one.
        """
        waiting, self._waiting = self._waiting, deque()
        for handoff in waiting:
            self.dispatch(handoff)
        if self.stopping:
            worker.channel.send_drain()

    # Backend states: the acceptor's pool is the reference.

    def _state_changed(self, backend: Backend) -> None:
        for worker in self.workers:
            worker.send_state(backend)

    def worker_state(self, name: str, state: BackendState, reason: str) -> None:
        """
        A worker changed a backend's state (too many failed connections).
        """
        backend = self.backends.get(name)
        # A worker only ever marks an up backend down (failed connections);
        # what it saw may be stale (an operator drained it meanwhile).
        if backend is not None and state is BackendState.DOWN and backend.state is BackendState.UP:
            self.backends.set_state(backend, BackendState.DOWN, f"in a worker: {reason}")

    def reconfigure(self) -> None:
        """
        The configuration was reloaded: the workers apply it too.
        """
        for worker in self.workers:
            worker.send_config()

    # Status

    def status(self, limit: int | None) -> Deferred[list[StatusReply | None]]:
        """
        Every running worker's status reply (L{None} for one that did not answer).
        """
        return gatherResults([worker.status(limit) for worker in self.workers])

    def describe(self) -> list[dict[str, Any]]:
        """
        The workers as C{/status.json} lists them.
        """
        return [worker.describe() for worker in self.workers]

    # Stopping

    @property
    def finished(self) -> bool:
        """
        Whether every worker has exited.
        """
        return all(worker.pid is None for worker in self.workers)

    def drain(self) -> None:
        """
        Stop: each worker gets every connection meant for it, then drains.
        Connections still waiting for a worker are closed.
        """
        self.stopping = True
        for worker in self.workers:
            worker.cancel_restart()
        waiting, self._waiting = self._waiting, deque()
        for handoff in waiting:
            handoff.close()
        for worker in self.workers:
            worker.channel.send_drain()

    def stop_now(self) -> None:
        """
        A second SIGTERM: every worker closes its sessions at once.
        """
        for worker in self.workers:
            worker.stop_now()

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if not self.stopping:
            self.drain()
        exits = [w.exited for w in self.workers if w.pid is not None and w.exited is not None]
        if not exits:
            return None
        done: Deferred[list[None]] = gatherResults(exits)
        timer = self.clock.callLater(KILL_GRACE, self._kill)

        def stop_timer(result: object) -> None:
            if timer.active():
                timer.cancel()

        done.addBoth(stop_timer)
        return done  # type: ignore[return-value]

    def _kill(self) -> None:
        for worker in self.workers:
            if worker.pid is not None:
                self._log.warn(
                    "worker {index} (pid {pid}) did not stop; killing it",
                    index=worker.index,
                    pid=worker.pid,
                )
                worker.kill()
