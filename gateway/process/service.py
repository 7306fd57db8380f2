"""
The service tree: a validated L{GatewayConfig} in, one C{MultiService} out.

L{make_service} only assembles: it builds endpoints from their strings, the
pool, the HTTP site and the front door's factory, and puts a listener service
per C{--listen} under one L{GatewayService}.  Nothing is bound until twistd
starts the tree.  The reactor is fetched here, lazily, and passed down; no
other module imports it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    clientFromString,
    serverFromString,
    wrapServerTLS,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.config import BackendSpec, ConfigError, GatewayConfig
from gateway.front.admission import AddressGate, CapFactory, CapState, RefusalFactory, Responder
from gateway.front.door import FrontDoor, GatewayFactory
from gateway.front.limits import AddressCap, AddressLimits, AddressRate, Refusal, TotalCap
from gateway.front.pemfolder import FolderError
from gateway.front.proxyheader import HAPROXY_PREFIX, ProxyHeaderFactory, proxy_header
from gateway.front.tls import SNICertificates, is_tls_front, tls_front_endpoint
from gateway.http.site import make_site
from gateway.interfaces import IAddressPolicy
from gateway.ops.access import AccessLogFile, access_log_only
from gateway.ops.admin import AdminState, make_admin_site
from gateway.ops.registry import Counters, RefusalLog, SessionRegistry
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.balance import make_balancer
from gateway.pool.health import HealthCheck, HealthChecker
from gateway.process.handover import (
    Handover,
    HandoverLostError,
    HandoverRefusedError,
    HandoverServer,
    take_over,
)
from gateway.process.workers import Dispatcher, TLSRefusals, WorkerPool
from gateway.session.lifecycle import CloseReason
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings

__all__ = ["DemoBackends", "FrontListener", "GatewayService", "StartupError", "make_service"]

PASSIVE_FALL = 3
"""Failed connection attempts in a row that mark a backend down at once."""

DEMO_BACKENDS = ("demo-a", "demo-b")
"""Names of the demo game servers that C{--demo} runs in-process."""


class StartupError(SystemExit, Exception):
    """
    Start-up cannot go on (a front cannot be bound).

    A SystemExit, so that C{twistd -n} exits without a traceback; also an
    Exception, so that a daemonizing twistd (which catches Exception in the
    child) reports it to the parent process, which then exits non-zero
    instead of waiting forever.  L{GatewayService} writes its one line to
    standard error and makes the exit status 2 (L{_startup_errors}), like a
    bad option's.
    """


@contextmanager
def _startup_errors() -> Iterator[None]:
    """
    A L{StartupError} leaving this block is written to standard error (one
    line; twistd's log has it too) and ends the process with status 2.
    """
    try:
        yield
    except StartupError as error:
        if error.code != 2:
            sys.stderr.write(f"{error}\n")
            sys.stderr.flush()
            error.code = 2
        raise


class FrontListener(Service):
    """
    One public front: listens on its endpoint while the service runs.

    It binds in C{privilegedStartService} (before twistd drops privileges, so
    ports below 1024 work) and a port that cannot be bound stops start-up with
    one line naming the option, instead of a traceback or a gateway that runs
    on without its port.

    @ivar description: the endpoint string, as configured.
    @ivar port: the listening port once bound, else L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        cap_state: CapState | None = None,
        option: str = "--listen",
    ) -> None:
        """
        @param cap_state: the total cap, which pauses and resumes this front's
            accepting in queue mode.
        @param option: the option the endpoint came from, for error messages.
        """
        self.option = option
        self.description = description
        self._endpoint = endpoint
        self._factory = factory
        self._cap_state = cap_state
        self.port: IListeningPort | None = None
        self.handed_over = False
        self.adopted = False
        self.setName(f"{option.lstrip('-')} {description}")

    def adopt(self, reactor: Any, fd: int, family: int) -> None:
        """
        Listen on an already listening socket (taken over from the gateway
        this one replaces) instead of binding a new one.
        """
        self._endpoint = _adopting(self._endpoint, reactor, fd, family)
        self.adopted = True

    def clear_stale(self) -> None:
        """
        A UNIX front left by a gateway that died: remove its socket and lock
        file when nobody listens at its path and the lock names a process
        that is gone or a zombie, so that this front can be bound.  (Twisted
        breaks a lock only once its process is gone, and a killed gateway
        stays a zombie until its parent reaps it: a new gateway started by
        a hand-over that the death broke would otherwise lose that race.)
        """
        if not isinstance(self._endpoint, UNIXServerEndpoint):
            return
        path = self._endpoint._address
        if not isinstance(path, str) or path.startswith("\0"):
            return
        try:
            holder = int(os.readlink(path + ".lock"))
        except (OSError, ValueError):
            holder = 0
        if (holder and _running(holder)) or _answering(path):
            return
        for stale in (path + ".lock", path):
            if os.path.lexists(stale):
                os.unlink(stale)
        self._log.info("removed the stale socket {path} of process {pid}", path=path, pid=holder)

    def hand_over(self) -> None:
        """
        Another process accepts on this front's socket now: stop accepting
        here, but keep the socket open (closing it is the new process's
        business; nothing in its queue may be lost).
        """
        port = self.port
        if port is None or self.handed_over:
            return
        self.handed_over = True
        if self._cap_state is not None:
            self._cap_state.remove_port(port)
        port.stopReading()  # type: ignore[attr-defined]

    def take_back(self) -> None:
        """
        The process this front was handed over to went away before it
        finished taking over: accept here again.
        """
        port = self.port
        if port is None or not self.handed_over:
            return
        self.handed_over = False
        port.startReading()  # type: ignore[attr-defined]
        if self._cap_state is not None:
            self._cap_state.add_port(port)  # paused again if the cap is full

    @override
    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        outcome: list[IListeningPort | Failure] = []
        listening: Deferred[IListeningPort] = self._endpoint.listen(self._factory)
        listening.addBoth(outcome.append)
        if not outcome:
            # An endpoint that binds later (none of Twisted's do): keep going.
            listening.addCallback(self._bound)
            return
        result = outcome[0]
        if isinstance(result, Failure):
            raise StartupError(
                f"gateway: error: {self.option} {self.description}: {result.getErrorMessage()}"
            )
        self._bound(result)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if self._cap_state is not None:
            self._cap_state.add_port(port)
        self._log.info("listening on {front}", front=self.description)
        return port

    @override
    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        if self.handed_over:
            # Only close our descriptor: stopListening would shut the shared
            # socket down (TCP) or remove its path (UNIX) under the new process.
            port.socket.close()  # type: ignore[attr-defined]
            return None
        if self._cap_state is not None:
            self._cap_state.remove_port(port)
        return port.stopListening()


def _running(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            state = stat_file.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _answering(path: str) -> bool:
    """
    Whether something listens at the UNIX socket C{path} (a missing path
    or a refused connection count as not; any other error as yes).
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as error:
        return not isinstance(error, (ConnectionRefusedError, FileNotFoundError))
    finally:
        probe.close()
    return True


DRAIN_POLL = 0.1
"""Seconds between looks at the sessions left while draining."""

FLUSH_GRACE = 2.0
"""Seconds closed sessions get to flush before the process goes on stopping."""


def _adopting(endpoint: IStreamServerEndpoint, reactor: Any, fd: int, family: int) -> Any:
    """
    C{endpoint}, listening on the socket C{fd} instead of binding: the
    socket itself for TCP and UNIX endpoints; for Twisted's C{tls:} endpoint
    (TLS over a TCP endpoint, with public C{endpoint} and
    C{connectionCreator} attributes) the same TLS over the socket.

    @raise ValueError: another kind of endpoint (C{ssl:}, a plugin's), whose
        protocol on top of the socket cannot be rebuilt here.
    """
    adopted = AdoptedStreamServerEndpoint(reactor, fd, family)
    if isinstance(
        endpoint,
        (TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint, AdoptedStreamServerEndpoint),
    ):
        return adopted
    creator = getattr(endpoint, "connectionCreator", None)
    if creator is not None and isinstance(
        getattr(endpoint, "endpoint", None), (TCP4ServerEndpoint, TCP6ServerEndpoint)
    ):
        return wrapServerTLS(creator, adopted, getattr(endpoint, "clock", None))
    raise ValueError(
        f"cannot take over a front of type {type(endpoint).__name__}: "
        "only tcp:, tcp6:, unix:, tls: and haproxy: fronts (use tls: instead of ssl:)"
    )


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

    @ivar config: the configuration it was built from.
    @ivar pool: the game backends.
    @ivar factory: the front door's factory, shared by every listener.
    @ivar listeners: one per public front, in configured order.
    @ivar admin: the admin endpoint's listener, unless turned off.
    @ivar counters: accepted, queued and refused connections.
    @ivar cap_state: the total cap and its held queue.
    @ivar registry: the live sessions.
    @ivar draining: whether a drain has begun.
    """

    _log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        pool: Pool,
        factory: GatewayFactory,
        counters: Counters,
        cap_state: CapState,
        *,
        registry: SessionRegistry | None = None,
        clock: IReactorTime | None = None,
        handle_signals: bool = False,
    ) -> None:
        """
        @param clock: for the drain's timers (required to drain).
        @param handle_signals: while draining, take over SIGTERM and SIGINT
            so that a second one closes everything at once (only for the
            real reactor, in the main thread).
        """
        super().__init__()
        self.config = config
        self.pool = pool
        self.factory = factory
        self.counters = counters
        self.cap_state = cap_state
        self.registry = registry if registry is not None else SessionRegistry()
        self.listeners: list[FrontListener] = []
        self.admin: FrontListener | None = None
        self._clock = clock
        self._handle_signals = handle_signals
        self.parts: _Parts | None = None
        self.rebuild: Callable[[], GatewayConfig] | None = None
        self.handover: Handover | None = None
        self.handover_server: HandoverServer | None = None
        self._took_over = False
        self._hangup_installed = False
        self._leaving: dict[str, Backend] = {}
        self._leave_call: IDelayedCall | None = None
        self._drained: Deferred[None] | None = None
        self._drain_call: IDelayedCall | None = None
        self._deadline = 0.0
        self._closing = False
        self.workers: WorkerPool | None = None
        self.refusals: RefusalLog | None = None
        self.role = "single"

    @override
    def privilegedStartService(self) -> None:
        with _startup_errors():
            self._install_hangup()
            self._take_over()
            super().privilegedStartService()

    def _take_over(self) -> None:
        """
        With --handover, take over the listening sockets of the gateway
        running there (once; twist never calls privilegedStartService, so
        startService calls this too).
        """
        if self.config.handover is None or self._took_over or self.role == "worker":
            return
        self._took_over = True
        try:
            self.handover = take_over(self.config.handover)
        except HandoverRefusedError as error:
            # Another process takes (or took) the sockets: bind nothing.
            raise StartupError(f"gateway: error: --handover: {error}") from None
        except HandoverLostError as error:
            # Nothing received: bind every front (if the old process still
            # holds a port, that bind fails with one line, status 2).
            self._log.warn(
                "hand-over from {path} failed ({reason}): took nothing over, binding every front",
                path=self.config.handover,
                reason=str(error),
            )
        fronts = self.fronts()
        for listener in fronts:
            taken = None if self.handover is None else self.handover.take(listener.description)
            if taken is None:
                # Bound here: a gateway that died may have left it behind.
                listener.clear_stale()
                continue
            try:
                listener.adopt(self._clock, *taken)
            except ValueError as error:
                os.close(taken[0])
                raise StartupError(f"gateway: error: --handover: {error}") from None
        if self.handover is None:
            return
        self._log.info(
            "taking over from process {pid}: {count} listening sockets",
            pid=self.handover.peer_pid,
            count=sum(listener.adopted for listener in fronts),
        )
        for description in self.handover.close_unused():
            self._log.info(
                "the old process listens on {front}, which this one does not: it keeps it",
                front=description,
            )

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
        with _startup_errors():
            self._install_hangup()
            self._take_over()
            handover, self.handover = self.handover, None
            server = self.handover_server
            if handover is not None and server is not None:
                server.hold = True  # PATH is the old process's until it answers
            super().startService()
        if handover is not None:
            # Everything else runs now; only then does the old process stop.
            adopted = [f.description for f in self.fronts() if f.adopted]
            try:
                handover.ready(adopted)
            except HandoverLostError as error:
                # It died or hangs: this process accepts on every front anyway.
                self._log.warn(
                    "process {pid} did not confirm the hand-over ({reason}): "
                    "accepting on every front anyway",
                    pid=handover.peer_pid,
                    reason=str(error),
                )
            else:
                self._log.info("process {pid} no longer accepts", pid=handover.peer_pid)
        try:
            if server is not None and server.hold:
                server.hold = False
                server.listen()
        finally:
            if handover is not None:
                # Only now: the old process answers other takers until PATH is ours.
                handover.close()

    def fronts(self) -> list[FrontListener]:
        """
        Every listener this gateway owns: the public fronts and the admin endpoint.
        """
        return [*self.listeners, *([self.admin] if self.admin else [])]

    def reload(self) -> bool:
        """
        Read the configuration again (SIGHUP) and apply what changed: backends
        added enter the pool, removed ones drain (their sessions go on) and
        leave once they have none, and changed limits, timeouts, balancing,
        health checks, the admin token and the access log apply to what comes
        next.  An invalid configuration changes nothing and is logged.
        Settings that need new listening sockets (listen, admin, demo) are
        kept as they are, and that is logged.

        @return: whether the new configuration was applied.
        """
        if self.rebuild is None or self.parts is None:
            self._log.warn("reload: nothing to reload from")
            return False
        if self.draining:
            self._log.warn("reload ignored: the gateway is draining")
            return False
        source = self.config.config_file or "the command line"
        try:
            new = self.rebuild()
        except ConfigError as error:
            self._log.error(
                "reload refused, the running configuration stays: {error}", error=str(error)
            )
            return False
        except Exception:
            self._log.failure("reload refused, the running configuration stays")
            return False
        changes = _apply(self, self.parts, new)
        if self.workers is not None:
            self.workers.reconfigure()
        self._log.info(
            "reloaded {source}: {changes}",
            source=source,
            changes="; ".join(changes) if changes else "nothing changed",
        )
        return True

    def leave_when_empty(self, backend: Backend) -> None:
        """
        Take a removed backend out of the pool once its last session ended.
        """
        self._leaving[backend.name] = backend
        if self._leave_call is None:
            self._check_leaving()

    def leaving(self, name: str) -> bool:
        """
        Whether the backend C{name} is draining to leave the pool.
        """
        return name in self._leaving

    def _check_leaving(self) -> None:
        self._leave_call = None
        for name, backend in list(self._leaving.items()):
            if backend.state is not BackendState.DRAINING:
                del self._leaving[name]  # enabled again by an operator
            elif backend.active == 0:
                del self._leaving[name]
                if backend in self.pool.backends:
                    self.pool.remove(backend)
                self._log.info(
                    "backend {backend} left the pool (removed from the configuration, "
                    "no sessions left)",
                    backend=name,
                )
        if self._leaving and self._clock is not None:
            self._leave_call = self._clock.callLater(1.0, self._check_leaving)

    def come_back(self, name: str) -> Backend | None:
        """
        A backend being removed that the configuration names again.
        """
        return self._leaving.pop(name, None)

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
            self._stop_now("no clock to wait with")
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

    def _stop_now(self, why: str) -> None:
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
                clock.callFromThread(self._stop_now, f"a second {name}")

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, second)


class DemoBackends(Service):
    """
    The built-in demo game servers: listen on ephemeral loopback ports and put
    each into the pool as a backend.
    """

    _log = Logger()

    def __init__(self, pool: Pool, reactor: IReactorTCP, names: tuple[str, ...]) -> None:
        self._pool = pool
        self._reactor = reactor
        self._names = names
        self._ports: list[IListeningPort] = []
        self._backends: list[Backend] = []

    @override
    def startService(self) -> None:
        from gateway.demo import HiLoFactory

        super().startService()
        for name in self._names:
            factory = HiLoFactory(name)
            port = self._reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
            self._ports.append(port)
            number = port.getHost().port  # type: ignore[attr-defined]
            description = f"tcp:127.0.0.1:{number}"
            backend = Backend(
                name=name,
                description=description,
                endpoint=TCP4ClientEndpoint(self._reactor, "127.0.0.1", number),
            )
            self._pool.add(backend)
            self._backends.append(backend)
            self._log.info(
                "demo game server {name} listening on {endpoint}", name=name, endpoint=description
            )

    @override
    def stopService(self) -> Any:
        super().stopService()
        backends, self._backends = self._backends, []
        for backend in backends:
            self._pool.remove(backend)
        ports, self._ports = self._ports, []
        return gatherResults([maybeDeferred(port.stopListening) for port in ports])


@dataclass
class _Parts:
    """
    What a reload reconfigures, as built by L{make_service}.
    """

    reactor: Any
    factory: GatewayFactory
    site: Any
    cap_state: CapState
    gates: list[AddressGate]
    responder: Responder
    health: HealthChecker | None
    admin_state: AdminState | None
    access_log: AccessLogFile | None
    admin_site: Any = None
    certificates: list[SNICertificates] = dataclasses.field(default_factory=list)
    """The connection creators of the C{tls:} fronts (and admin endpoint),
    whose PEM folders a reload reads again."""


def _policies(config: GatewayConfig, old: AddressLimits | None) -> AddressLimits | None:
    """
    The per-address policies of C{config}, keeping the live counts of an
    existing per-address cap (its connections release into it).
    """
    cap = rate = None
    for policy in old.policies if old is not None else ():
        if isinstance(policy, AddressCap):
            cap = policy
        elif isinstance(policy, AddressRate):
            rate = policy
    policies: list[IAddressPolicy] = []
    if config.max_per_ip:
        if cap is None:
            cap = AddressCap(config.max_per_ip)
        cap.limit = config.max_per_ip
        policies.append(cap)
    if config.rate_per_ip:
        burst = config.rate_burst
        if (
            rate is None
            or rate.rate != config.rate_per_ip
            or (burst is not None and rate.burst != burst)
        ):
            # A new table: every address starts with a full bucket.
            rate = AddressRate(config.rate_per_ip, burst)
        policies.append(rate)
    return AddressLimits(policies) if policies else None


_RESTART_ONLY = ("listen", "admin", "demo", "handover", "workers")
"""Settings a reload cannot change: they need new listening sockets."""


def _apply(service: GatewayService, parts: _Parts, new: GatewayConfig) -> list[str]:
    """
    Apply C{new} to a running gateway; what changed, in words.
    """
    old = service.config
    changes: list[str] = []
    for name in _RESTART_ONLY:
        if getattr(old, name) != getattr(new, name):
            changes.append(f"{name} changed, which needs a restart: kept as it was")
            new = dataclasses.replace(new, **{name: getattr(old, name)})
    if bool(new.health_interval) != bool(old.health_interval):
        changes.append("health-interval turned on or off, which needs a restart: kept")
        new = dataclasses.replace(new, health_interval=old.health_interval)
    pool = service.pool
    # Backends, by name.
    wanted = {spec.name for spec in new.backends}
    for spec in new.backends:
        backend = pool.get(spec.name)
        if backend is None:
            pool.add(_backend(spec, parts.reactor))
            changes.append(f"backend {spec.name} added")
            continue
        if service.come_back(spec.name) is not None:
            pool.set_state(backend, BackendState.UP, "back in the configuration")
            changes.append(f"backend {spec.name} back")
        if backend.description != spec.endpoint:
            backend.description = spec.endpoint
            backend.endpoint = clientFromString(parts.reactor, spec.endpoint)
            changes.append(f"backend {spec.name} now at {spec.endpoint}")
        if backend.weight != spec.weight:
            changes.append(f"backend {spec.name} weight {backend.weight} -> {spec.weight}")
            backend.weight = spec.weight
        backend.proxy_protocol = spec.proxy_protocol
    keep = set(DEMO_BACKENDS) if old.demo else set()
    for backend in pool.backends:
        if backend.name in wanted or backend.name in keep or service.leaving(backend.name):
            continue
        pool.set_state(backend, BackendState.DRAINING, "removed from the configuration")
        service.leave_when_empty(backend)
        changes.append(f"backend {backend.name} removed: draining")
    if new.balance != old.balance:
        pool.balancer = make_balancer(new.balance)
    # Admission.
    parts.cap_state.reconfigure(new.max_connections, new.overflow == "queue")
    limits = _policies(new, parts.gates[0].limits)
    for gate in parts.gates:
        gate.limits = limits
    parts.responder.busy_message = new.busy_message
    # The front door, HTTP and the relay.
    parts.factory.reconfigure(SessionSettings.from_config(new))
    parts.site.header_timeout = new.header_timeout
    if parts.admin_site is not None:
        parts.admin_site.header_timeout = new.header_timeout
    if new.http_root != old.http_root or new.http_listing != old.http_listing:
        http_root = new.http_root
        if http_root is None and new.demo:
            from gateway.demo import SITE_DIR

            http_root = SITE_DIR
        parts.site.resource = make_site(
            http_root, listing=new.http_listing, reactor=parts.reactor
        ).resource
    if parts.health is not None:
        parts.health.reconfigure(
            interval=new.health_interval,
            checks=health_checks(new),
            default_check=HealthCheck(send=new.health_send, expect=new.health_expect),
            preamble=_probe_preamble(new.proxy_protocol),
        )
    pool.fall = PASSIVE_FALL if new.health_interval else 0
    # Admin and access log.
    if parts.admin_state is not None:
        parts.admin_state.token = new.admin_token
        parts.admin_state.hosts = new.admin_hosts
    access_log_only(new.access_log_only)
    now = datetime.datetime.fromtimestamp(parts.reactor.seconds(), datetime.UTC)
    for creator in parts.certificates:
        changes.append(creator.reload(now, quiet=service.role == "worker"))
    if parts.access_log is not None:
        # Reopened on every reload: this is also how log rotation works.
        parts.access_log.reopen(new.access_log or parts.access_log.path)
        if new.access_log is None:
            changes.append("access-log removed, which needs a restart: kept")
            new = dataclasses.replace(new, access_log=old.access_log)
    elif new.access_log is not None:
        changes.append("access-log added, which needs a restart: not written yet")
        new = dataclasses.replace(new, access_log=None)
    skip = {"backends", "config_file", "admin_token", *_RESTART_ONLY}
    for field in dataclasses.fields(GatewayConfig):
        if field.name in skip:
            continue
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            changes.append(f"{field.name.replace('_', '-')} {before!r} -> {after!r}")
    if old.admin_token != new.admin_token:
        changes.append("admin token changed")
    service.config = new
    return changes


def _server_endpoint(
    reactor: Any, description: str, option: str, certificates: list[SNICertificates]
) -> IStreamServerEndpoint:
    """
    The server endpoint of C{description}: a C{tls:} one with the gateway's
    own PEM folder reading (its connection creator added to
    C{certificates}), any other through L{serverFromString}.

    @raise StartupError: a C{tls:} folder cannot be served (it was checked
        with the options, but may have changed since).
    """
    if not is_tls_front(description):
        plain: IStreamServerEndpoint = serverFromString(reactor, description)
        return plain
    try:
        endpoint, creator = tls_front_endpoint(reactor, description, reactor)
    except (ValueError, FolderError) as error:
        raise StartupError(f"gateway: error: {option} {description}: {error}") from None
    certificates.append(creator)
    return endpoint


def _backend(spec: BackendSpec, reactor: Any) -> Backend:
    """
    A pool backend for a configured one.
    """
    return Backend(
        name=spec.name,
        description=spec.endpoint,
        endpoint=clientFromString(reactor, spec.endpoint),
        weight=spec.weight,
        proxy_protocol=spec.proxy_protocol,
    )


def _probe_preamble(version: str) -> bytes:
    """
    What a health probe writes first for a backend that expects a PROXY
    header: one without addresses (LOCAL in v2, UNKNOWN in v1).
    """
    if version == "off":
        return b""
    nobody = UNIXAddress(None)
    return proxy_header(version, nobody, nobody)


def health_checks(config: GatewayConfig) -> dict[str, HealthCheck]:
    """
    The health checks of the backends that have their own (a send/expect
    check or a PROXY setting of their own in the config file), by name.
    """
    checks = {}
    for spec in config.backends:
        if spec.health_send is None and spec.health_expect is None and not spec.proxy_protocol:
            continue
        checks[spec.name] = HealthCheck(
            send=config.health_send if spec.health_send is None else spec.health_send,
            expect=config.health_expect if spec.health_expect is None else spec.health_expect,
            preamble=None if spec.proxy_protocol is None else _probe_preamble(spec.proxy_protocol),
        )
    return checks


def make_service(
    config: GatewayConfig,
    reactor: Any = None,
    rebuild: Callable[[], GatewayConfig] | None = None,
    *,
    role: str | None = None,
) -> GatewayService:
    """
    Assemble the gateway for C{config}.

    @param reactor: the reactor to run on; the global one when L{None}.
    @param rebuild: reads the configuration again (for SIGHUP).
    @param role: C{single} (one process does everything), C{acceptor} (it
        listens, admits, and hands connections to worker processes: see
        L{gateway.process.workers}) or C{worker} (it serves what an acceptor hands
        it: no fronts, admin endpoint, health checks nor access log file of
        its own).  By default, C{acceptor} if C{config.workers} is more than
        1, else C{single}.
    """
    if role is None:
        role = "acceptor" if config.workers > 1 else "single"
    handle_signals = reactor is None
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    pool = Pool(
        (_backend(spec, reactor) for spec in config.backends),
        make_balancer(config.balance),
        # Passive detection only with health checks: they bring a backend back.
        fall=PASSIVE_FALL if config.health_interval else 0,
    )
    http_root = config.http_root
    if http_root is None and config.demo:
        from gateway.demo import SITE_DIR

        http_root = SITE_DIR
    counters = Counters()
    registry = SessionRegistry()
    refusals = RefusalLog(reactor, counters)
    site = make_site(
        http_root,
        listing=config.http_listing,
        reactor=reactor,
        header_timeout=config.header_timeout,
        refusals=refusals,
    )
    factory = GatewayFactory(
        site=site,
        chooser=pool,
        clock=reactor,
        settings=SessionSettings.from_config(config),
        counters=counters,
        registry=registry,
        refusals=refusals,
    )
    responder = Responder(
        reactor, busy_message=config.busy_message, wait=min(config.sniff_timeout, 2.0)
    )
    cap_state = CapState(
        TotalCap(config.max_connections),
        queue_mode=config.overflow == "queue",
        refusals=refusals,
        responder=responder,
    )
    limits = _policies(config, None)
    gates: list[AddressGate] = []
    certificates: list[SNICertificates] = []

    def gate_to(inner: Factory) -> AddressGate:
        gate = AddressGate(inner, limits, clock=reactor, refusals=refusals, responder=responder)
        gates.append(gate)
        return gate

    shared_gate = gate_to(factory) if role != "acceptor" else None
    top = GatewayService(
        config,
        pool,
        factory,
        counters,
        cap_state,
        registry=registry,
        clock=reactor,
        handle_signals=handle_signals,
    )
    top.refusals = refusals
    top.role = role
    access_log_only(config.access_log_only)
    if config.demo and role != "worker":
        DemoBackends(pool, reactor, DEMO_BACKENDS).setServiceParent(top)
    workers = None
    if role == "acceptor":
        workers = WorkerPool(config.workers, reactor, pool, lambda: top.config)
        top.workers = workers
    health = None
    if config.health_interval and role != "worker":
        # After the demo backends, so that its first round sees them.
        health = HealthChecker(
            pool,
            reactor,
            interval=config.health_interval,
            fall=PASSIVE_FALL,
            checks=health_checks(config),
            default_check=HealthCheck(send=config.health_send, expect=config.health_expect),
            preamble=_probe_preamble(config.proxy_protocol),
        )
        health.setServiceParent(top)
    for index, description in enumerate(config.listen if role != "worker" else ()):
        endpoint_text = description
        proxy = description.startswith(HAPROXY_PREFIX)
        if proxy:
            endpoint_text = description[len(HAPROXY_PREFIX) :]
        endpoint = _server_endpoint(reactor, endpoint_text, "--listen", certificates)
        creator = None
        if workers is not None:
            gate = gate_to(Dispatcher(workers, index))
            creator = getattr(endpoint, "connectionCreator", None)
            if creator is not None:
                # TLS is the worker's business: the acceptor listens on the
                # plain socket under it, and speaks TLS only to refuse.
                endpoint = cast(Any, endpoint).endpoint
        else:
            assert shared_gate is not None
            gate = shared_gate
        inner: Factory = gate if creator is None else TLSRefusals(gate, creator)
        refusal: Factory = RefusalFactory(responder, Refusal.TOTAL_CAP, refusals)
        if proxy:
            # Our own PROXY header reader (see gateway.front.proxyheader) instead
            # of Twisted's haproxy: endpoint wrapper; refusals at the total
            # cap read the header too, to answer and log the real client.
            inner = ProxyHeaderFactory(
                inner, clock=reactor, timeout=config.header_timeout, refusals=refusals
            )
            refusal = ProxyHeaderFactory(
                refusal, clock=reactor, timeout=config.header_timeout, refusals=refusals
            )
        if creator is not None:
            refusal = TLSMemoryBIOFactory(creator, False, refusal)  # type: ignore[assignment]
        listener = FrontListener(
            description,
            endpoint,
            CapFactory(cap_state, inner, refusal),
            cap_state,
        )
        top.listeners.append(listener)
        listener.setServiceParent(top)
    if workers is not None:
        # After the fronts: stopped first, before they are (a drain stops
        # the fronts itself, before anything else).
        workers.setServiceParent(top)
    state = None
    admin_site = None
    if config.admin is not None and role != "worker":
        state = AdminState(
            pool,
            registry,
            counters,
            clock=reactor,
            token=config.admin_token,
            hosts=config.admin_hosts,
            workers=workers,
        )
        admin_site = make_admin_site(
            state, reactor, header_timeout=config.header_timeout, refusals=refusals
        )
        admin = FrontListener(
            config.admin,
            _server_endpoint(reactor, config.admin, "--admin", certificates),
            admin_site,
            option="--admin",
        )
        top.admin = admin
        admin.setServiceParent(top)
        if config.admin_token is None and not _local_only(config.admin):
            _log.warn(
                "the admin endpoint {admin} is not on loopback and has no --admin-token: "
                "whoever reaches it can drain backends",
                admin=config.admin,
            )
    access_log = None
    if config.access_log is not None and role != "worker":
        access_log = AccessLogFile(config.access_log)
        access_log.setServiceParent(top)
    if config.handover is not None and role != "worker":
        fronts = top.fronts()

        def listening() -> list[tuple[str, IListeningPort]]:
            return [(f.description, f.port) for f in fronts if f.port and not f.handed_over]

        def stop_accepting(given: list[tuple[str, IListeningPort]]) -> None:
            for front in fronts:
                if any(port is front.port for _, port in given):
                    front.hand_over()

        def resume_accepting(given: list[tuple[str, IListeningPort]]) -> None:
            for front in fronts:
                if any(port is front.port for _, port in given):
                    front.take_back()

        server = HandoverServer(
            config.handover, reactor, listening, stop_accepting, resume_accepting
        )
        server.setServiceParent(top)
        top.handover_server = server
    top.parts = _Parts(
        reactor=reactor,
        factory=factory,
        site=site,
        cap_state=cap_state,
        gates=gates,
        responder=responder,
        health=health,
        admin_state=state,
        access_log=access_log,
        admin_site=admin_site,
        certificates=certificates,
    )
    top.rebuild = rebuild
    return top


_log = Logger()


def _local_only(description: str) -> bool:
    """
    Whether an endpoint string listens only where local processes reach it
    (a loopback interface or a UNIX socket).
    """
    if description.startswith("unix:"):
        return True
    # Colons inside a value are escaped: interface=\:\:1.
    match = re.search(r"(?:^|:)interface=((?:\\.|[^:\\])*)", description)
    if match is None:
        return False
    interface = match.group(1).replace("\\", "")
    return interface.startswith("127.") or interface in ("::1", "localhost")
