"""
The root of the service tree: L{GatewayService} starts the gateway (taking
the listening sockets over from the process it replaces, with C{--handover}),
reloads it on SIGHUP (through its L{Reloader}), and drains it on SIGTERM.

It is assembled by L{gateway.process.assemble.make_service}; its fronts are
L{FrontListener}s (L{gateway.process.listener}).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from typing_extensions import override

from gateway.config import GatewayConfig
from gateway.front.admission import CapState
from gateway.front.door import FrontDoor, GatewayFactory
from gateway.ops.registry import Counters, RefusalLog, SessionRegistry
from gateway.pool.backends import Pool
from gateway.pool.pools import Pools
from gateway.process.errors import startup_errors
from gateway.process.listener import FrontListener
from gateway.process.notify import ServiceNotifier
from gateway.process.reload import Reloader
from gateway.process.takeover import TakeOver
from gateway.process.workerpool import WorkerPool
from gateway.session.lifecycle import CloseReason, Phase
from gateway.session.relay import GameSession

__all__ = ["GatewayService"]

DRAIN_POLL = 0.1
"""Seconds between looks at the sessions left while draining."""

FLUSH_GRACE = 2.0
"""Seconds closed sessions get to flush before the process goes on stopping."""


class GatewayService(MultiService):
    """
    The root of the gateway's service tree.

    Stopping it (twistd stops it on SIGTERM or SIGINT) drains the gateway:
    every public front stops accepting (the admin endpoint stays up), HTTP
    connections finish the requests they are handling and close, game
    sessions go on until they end or C{drain_timeout} passes, then what is
    left is closed (counted in the log).  A second SIGTERM or SIGINT while
    draining closes everything at once.  Only then do the other services
    (health checks, admin endpoint, demo backends) stop.

    @ivar reloader: the running configuration and what a reload sets.
    @ivar listeners: one per public front, in configured order.
    @ivar admin: the admin endpoint's listener, unless turned off.
    @ivar counters: accepted, queued and refused connections.
    @ivar registry: the live sessions.
    @ivar workers: the worker processes, in an acceptor.
    """

    _log = Logger()

    def __init__(
        self,
        reloader: Reloader,
        *,
        counters: Counters,
        registry: SessionRegistry,
        refusals: RefusalLog | None = None,
        clock: IReactorTime | None = None,
        handle_signals: bool = False,
        listeners: Sequence[FrontListener] = (),
        admin: FrontListener | None = None,
        workers: WorkerPool | None = None,
        takeover: TakeOver | None = None,
        role: str = "single",
        notifier: ServiceNotifier | None = None,
    ) -> None:
        """
        @param reloader: the running configuration and the parts it sets
            (the pool, the front door's factory, the total cap...).
        @param refusals: the refusal log, whose last summary is written when
            the service stops.
        @param clock: for the drain's timers (required to drain).
        @param handle_signals: handle SIGHUP (reload), and while draining
            take over SIGTERM and SIGINT so that a second one closes
            everything at once (only for the real reactor, in the main
            thread).
        @param listeners: the public fronts, in configured order (their
            services are added to this one by the caller).
        @param admin: the admin endpoint's listener, unless turned off.
        @param workers: the worker processes of an acceptor.
        @param takeover: with C{--handover}, taking the listening sockets
            over from the gateway this one replaces, as it starts.
        @param role: C{single}, C{acceptor} or C{worker}.
        @param notifier: tells systemd when every front listens, and when a
            reload or a drain begins and ends; by default, with
            C{handle_signals} and unless C{role} is C{worker}, the one
            C{$NOTIFY_SOCKET} names.
        """
        super().__init__()
        self.reloader = reloader
        self.counters = counters
        self.registry = registry
        self.refusals = refusals
        self.listeners = list(listeners)
        self.admin = admin
        self.workers = workers
        self._takeover = takeover
        self.role = role
        self._clock = clock
        self._handle_signals = handle_signals
        self._hangup_installed = False
        self._drained: Deferred[None] | None = None
        self._drain_call: IDelayedCall | None = None
        self._deadline = 0.0
        self._closing = False
        self._notifier = notifier

    @property
    def config(self) -> GatewayConfig:
        """
        The configuration in force (a reload replaces it).
        """
        return self.reloader.config

    @property
    def pool(self) -> Pool:
        """
        The game backends.
        """
        return self.reloader.parts.pool

    @property
    def pools(self) -> Pools:
        """
        Every pool of backends, the game pool first.
        """
        return self.reloader.parts.pools

    @property
    def factory(self) -> GatewayFactory:
        """
        The front door's factory, shared by every front.
        """
        return self.reloader.parts.factory

    @property
    def cap_state(self) -> CapState:
        """
        The total cap and its held queue.
        """
        return self.reloader.parts.cap_state

    @override
    def privilegedStartService(self) -> None:
        self._connect_notifier()  # before twistd drops privileges: see ServiceNotifier
        with startup_errors():
            self._install_hangup()
            if self._takeover is not None:
                self._takeover.take()
            super().privilegedStartService()

    def _connect_notifier(self) -> None:
        """
        The notifier C{$NOTIFY_SOCKET} names, unless one was given (or this is a worker).
        """
        if self._notifier is None and self._handle_signals and self.role != "worker":
            self._notifier = ServiceNotifier.from_environment()

    def _install_hangup(self) -> None:
        """
        SIGHUP reloads (installed before anything can block, so that an early
        SIGHUP never takes the default action, which would end the process).
        """
        if self._handle_signals and hasattr(signal, "SIGHUP") and not self._hangup_installed:
            self._hangup_installed = True
            clock = self._clock

            def hangup(signum: int, frame: object) -> None:
                if clock is not None and hasattr(clock, "callFromThread") and self.running:
                    clock.callFromThread(self.reload)

            signal.signal(signal.SIGHUP, hangup)

    @override
    def startService(self) -> None:
        self._connect_notifier()  # twist calls no privilegedStartService
        with startup_errors():
            self._install_hangup()
            if self._takeover is not None:
                self._takeover.take()
                self._takeover.hold_path()
            super().startService()
        if self._takeover is not None:
            self._takeover.finish()
        if self._notifier is not None:
            # Every front was bound (or taken over) by now: accepting starts
            # as the reactor runs, and connections wait in the backlog until then.
            self._notifier.ready(f"{len(self.listeners)} fronts listening")

    def fronts(self) -> list[FrontListener]:
        """
        Every listener this gateway owns: the public fronts and the admin endpoint.
        """
        return [*self.listeners, *([self.admin] if self.admin else [])]

    def reload(self) -> bool:
        """
        Read the configuration again (SIGHUP) and apply what changed (see
        L{Reloader}), then tell the workers; nothing while draining.

        @return: whether the new configuration was applied.
        """
        if self.draining:
            self._log.warn("reload ignored: the gateway is draining")
            return False
        if self._notifier is not None:
            self._notifier.reloading()
        applied = self.reloader.reload()
        if applied and self.workers is not None:
            self.workers.reconfigure()
        if self._notifier is not None:
            # READY=1 ends the reload for systemd, applied or refused.
            self._notifier.ready("reloaded" if applied else "reload refused: see the log")
        return applied

    @property
    def draining(self) -> bool:
        """
        Whether a drain has begun.
        """
        return self._drained is not None

    @override
    def stopService(self) -> Deferred[None]:
        if self._drained is None:
            self._drained = Deferred()
            self._start_drain()
        finished: Deferred[None] = Deferred()
        self._drained.addCallback(lambda _: MultiService.stopService(self))
        self._drained.addBoth(self._flush_refusals)
        self._drained.addBoth(finished.callback)
        return finished

    def _flush_refusals(self, result: object) -> object:
        """
        Log the refusal summary that the current window still owes, so that
        refusals in the last seconds before a stop are not lost from the log.
        """
        if self.refusals is not None:
            self.refusals.flush()
        return result

    def _start_drain(self) -> None:
        if self._notifier is not None:
            self._notifier.stopping("draining")
        for listener in self.listeners:
            listener.stopService()
        games, https = self._live()
        timeout = self.config.drain_timeout
        self._log.info(
            "draining: stopped accepting; {games} game sessions, {https} HTTP "
            "connections and {pending} connections not classified yet open; waiting up to "
            "{timeout:g} s for game sessions to end",
            games=len(games),
            https=len(https),
            pending=len(self.factory.pending),
            timeout=timeout,
        )
        if self.workers is not None:
            self.workers.drain()
        if self._handle_signals:
            self._take_over_signals()
        if self._clock is None:
            self.stop_now("no clock to wait with")
            return
        self._deadline = self._clock.seconds() + timeout
        self._check_drain()

    def _live(self) -> tuple[list[GameSession], list[FrontDoor]]:
        games: list[GameSession] = []
        https: list[FrontDoor] = []
        for session in self.registry.snapshot()[1]:
            if isinstance(session, GameSession):
                games.append(session)
            elif isinstance(session, FrontDoor):
                https.append(session)
        return games, https

    def _check_drain(self) -> None:
        assert self._clock is not None
        self._drain_call = None
        if self._drained is None or self._drained.called:
            return
        games, https = self._live()
        for connection in https:
            connection.drain()
        for session in games:
            if session.phase is Phase.WAITING:
                # No slot is coming: a waiting player hears the busy line now.
                session.close(CloseReason.SHUTDOWN)
        workers_done = self.workers is None or self.workers.finished
        if not games and not https and not self.factory.pending and workers_done:
            self._log.info("drained: every session has ended")
            self._done()
            return
        if not self._closing and self._clock.seconds() >= self._deadline:
            self._closing = True
            self._log.info(
                "drain timeout ({timeout:g} s): closing {games} game sessions still open",
                timeout=self.config.drain_timeout,
                games=len(games),
                closed=len(games),
            )
            for session in games:
                session.close(CloseReason.DRAIN_TIMEOUT)
            for front in list(self.factory.pending):
                if front.transport is not None:
                    front.transport.loseConnection()
            self._deadline = self._clock.seconds() + FLUSH_GRACE
        elif self._closing and self._clock.seconds() >= self._deadline:
            self._log.info(
                "drain: {count} connections did not finish closing; stopping anyway",
                count=len(games) + len(https),
            )
            self._done()
            return
        self._drain_call = self._clock.callLater(DRAIN_POLL, self._check_drain)

    def _done(self) -> None:
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        if getattr(self._clock, "_exitSignal", None) is not None:
            # twistd and twist end by raising again the signal that stopped
            # the reactor (Twisted's _ISupportsExitSignalCapturing), so the
            # exit status would say "killed by SIGTERM".  A drain that ran
            # its course is a clean stop: exit status 0.
            self._clock._exitSignal = None  # type: ignore[union-attr]
        if self._drained is not None and not self._drained.called:
            self._drained.callback(None)

    def stop_now(self, why: str) -> None:
        """
        Close every session at once and finish stopping.
        """
        games, https = self._live()
        self._log.info(
            "stopping now ({why}): closing {games} game sessions and {https} HTTP connections",
            why=why,
            games=len(games),
            https=len(https),
        )
        for session in games:
            session.close(CloseReason.SHUTDOWN)
        for connection in [*https, *self.factory.pending]:
            if connection.transport is not None:
                connection.transport.loseConnection()
        if self.workers is not None:
            self.workers.stop_now()
        self._done()

    def _take_over_signals(self) -> None:
        """
        While draining, a second SIGTERM or SIGINT stops at once (Twisted's
        own handlers would only try to stop the reactor a second time).
        """
        clock = self._clock

        def second(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            if clock is not None and hasattr(clock, "callFromThread"):
                clock.callFromThread(self.stop_now, f"a second {name}")

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, second)
