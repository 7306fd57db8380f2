"""
Active health checks of the game backends.

A L{HealthChecker} is a service that probes every backend in the pool when it
starts and then every C{interval} seconds.  A probe (L{gateway.pool.probe.Probe})
is one short connection made the way a game session makes one: connected (TLS
handshake included), then, if the backend's L{HealthCheck} says so, a request
sent and an expected answer awaited, all within the probe's timeout.

Each result goes to the backend's L{HealthState}, a plain object that decides
when the backend's state changes: down after C{fall} failed probes in a row
while it is up, up after C{rise} passing probes in a row while it is down (so
one lost probe does not flap a backend), and never while an operator has it
draining.  A change goes through L{Pool.set_state}, the one place states
change, with the reason: C{"health check failed 3 times: Connection
refused"}, C{"health check passed 2 times"}.

Probes of different backends run side by side and each backend has at most one
probe in flight: a backend whose last probe is still running when a round
comes is skipped in that round, so a slow backend delays no other.  Backends
added to the pool are probed from the next round on; removed ones are
forgotten (a probe of theirs still running is aborted).  Nothing is logged for
a passing probe; a failed one is logged at debug level with its reason, and
the pool logs every change of state.  A probe that cannot be made for want of
the gateway's own resources (out of file descriptors, say: see
L{gateway.session.backendlink.LOCAL_ERRNOS}) has no result and leaves the
backend's record as it was; the first such probe of a backend is logged as a
warning, and the next probe that is made again at info level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.pool.backends import Backend, BackendState
from gateway.pool.probe import HealthCheck, Probe

if TYPE_CHECKING:
    from gateway.pool.backends import Pool

# HealthCheck is defined with the probe that carries it out, and exported
# here too: the checker's settings are made of them.
__all__ = ["DEFAULT_TIMEOUT", "HealthCheck", "HealthChecker", "HealthState"]

DEFAULT_TIMEOUT = 5.0
"""Seconds a probe may take at most by default (less when the interval is shorter)."""


class HealthState:
    """
    The health-check record of one backend: runs of passing and failing probes,
    and the decision when its state changes.

    The runs count probes since the backend's state last changed, whoever
    changed it: a backend marked down by passive detection, or enabled by an
    operator, starts a fresh run, so it takes C{rise} passing probes after
    being marked down to come back (earlier passes do not count).  A change
    is seen as a state different from the one at the previous probe, so a
    change undone before the next probe (down, up, down again) goes unseen.

    @ivar rise: passing probes in a row that bring a down backend up.
    @ivar fall: failed probes in a row that take an up backend down.
    @ivar successes: passing probes in a row so far.
    @ivar failures: failed probes in a row so far.
    """

    def __init__(self, rise: int, fall: int) -> None:
        """
        @raise ValueError: C{rise} or C{fall} is less than 1.
        """
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, not {rise} and {fall}")
        self.rise = rise
        self.fall = fall
        self.successes = 0
        self.failures = 0
        self._seen: BackendState | None = None

    def record(self, ok: bool, current: BackendState) -> BackendState | None:
        """
        Count one probe's result.

        @param ok: whether the probe passed.
        @param current: the backend's state now.
        @return: the state the backend is to change to, or L{None} for none.
        """
        if current is not self._seen:
            # Someone else changed the state (or this is the first probe):
            # the runs start again from here.
            self._seen = current
            self.successes = self.failures = 0
        if ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        change: BackendState | None = None
        if current is BackendState.UP and self.failures >= self.fall:
            change = BackendState.DOWN
        elif current is BackendState.DOWN and self.successes >= self.rise:
            change = BackendState.UP
        # DRAINING belongs to operators: probed, never changed here.
        if change is not None:
            self._seen = change
        return change


def _times(count: int) -> str:
    return f"{count} time" if count == 1 else f"{count} times"


class HealthChecker(Service):
    """
    Probes every backend in the pool every C{interval} seconds and changes
    their states through the pool as their L{HealthState}s decide.

    @ivar interval: seconds between rounds of probes.
    @ivar rise: passing probes in a row that bring a down backend up.
    @ivar fall: failed probes in a row that take an up backend down.
    @ivar timeout: seconds a probe may take, unless its L{HealthCheck} says.
    """

    _log = Logger()

    def __init__(
        self,
        pool: Pool,
        clock: IReactorTime,
        *,
        interval: float,
        rise: int = 2,
        fall: int = 3,
        timeout: float | None = None,
        checks: Mapping[str, HealthCheck] | None = None,
        default_check: HealthCheck | None = None,
        preamble: bytes = b"",
    ) -> None:
        """
        @param pool: the backends, and the place their states change.
        @param clock: for the rounds and the probes' timeouts.
        @param timeout: L{None} for C{min(interval, DEFAULT_TIMEOUT)}.
        @param checks: the check of each backend, by name; a backend without
            one gets C{default_check}.
        @param default_check: by default a TCP connect (a TLS handshake for
            C{tls:} backends).
        @param preamble: bytes every probe writes first (a PROXY header for
            backends behind C{--proxy-protocol}, so they do not log errors).
        @raise ValueError: a setting is out of range.
        """
        if not interval > 0:
            raise ValueError(f"health check interval must be positive, not {interval!r}")
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, not {rise} and {fall}")
        if timeout is None:
            timeout = min(interval, DEFAULT_TIMEOUT)
        elif not timeout > 0:
            raise ValueError(f"health check timeout must be positive, not {timeout!r}")
        self._pool = pool
        self._clock = clock
        self.interval = interval
        self.rise = rise
        self.fall = fall
        self.timeout = timeout
        self._checks: dict[str, HealthCheck] = dict(checks or {})
        self._default_check = default_check or HealthCheck()
        self._preamble = preamble
        self._fast: dict[Backend, IDelayedCall] = {}
        self._states: dict[Backend, HealthState] = {}
        self._probes: dict[Backend, Probe] = {}
        self._short: set[Backend] = set()
        self._loop: LoopingCall | None = None
        self.setName("health")

    def reconfigure(
        self,
        *,
        interval: float,
        checks: Mapping[str, HealthCheck],
        default_check: HealthCheck,
        preamble: bytes,
    ) -> None:
        """
        Apply new settings (a reload): the checks from the next probe on, a
        new interval from now (the backends' health records are kept).

        @raise ValueError: the interval is not positive.
        """
        if not interval > 0:
            raise ValueError(f"health check interval must be positive, not {interval!r}")
        self._checks = dict(checks)
        self._default_check = default_check
        self._preamble = preamble
        if interval != self.interval:
            self.interval = interval
            loop, self._loop = self._loop, None
            if loop is not None and loop.running:
                loop.stop()
                self._loop = LoopingCall(self._round)
                self._loop.clock = self._clock
                self._loop.start(interval, now=False).addErrback(self._loop_failed)

    def health(self, backend: Backend) -> HealthState | None:
        """
        The health-check record of C{backend}, once it has been probed.
        """
        return self._states.get(backend)

    def in_flight(self) -> tuple[Backend, ...]:
        """
        The backends whose probe is running now.
        """
        return tuple(self._probes)

    @override
    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self._round)
        loop.clock = self._clock
        self._loop = loop
        loop.start(self.interval, now=True).addErrback(self._loop_failed)

    @override
    def stopService(self) -> None:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        probes = list(self._probes.values())
        self._probes.clear()
        self._states.clear()
        fast, self._fast = self._fast, {}
        for call in fast.values():
            if call.active():
                call.cancel()
        for probe in probes:
            self._abort(probe)

    def _loop_failed(self, failure: Failure) -> None:
        # _round catches everything; this is the last line of defence.
        self._log.failure("health checks stopped", failure)

    def _round(self) -> None:
        """
        Forget backends that left the pool, and probe each backend that has
        no probe running.
        """
        backends = self._pool.backends
        present = set(backends)
        for gone in [b for b in self._probes if b not in present]:
            self._abort(self._probes.pop(gone))
        for gone in [b for b in self._states if b not in present]:
            del self._states[gone]
        self._short &= present
        for backend in backends:
            if backend not in self._probes:
                self._start_probe(backend)

    def _start_probe(self, backend: Backend) -> None:
        """
        Probe C{backend}; a probe that cannot even start is logged, and the
        other backends' probes go on.
        """
        try:
            self._probe(backend)
        except Exception:
            self._probes.pop(backend, None)
            self._log.failure("could not start a health check of {backend}", backend=backend.name)

    def _probe(self, backend: Backend) -> None:
        if backend not in self._states:
            self._states[backend] = HealthState(self.rise, self.fall)
        check = self._checks.get(backend.name, self._default_check)
        probe = Probe(
            backend,
            check,
            check.timeout if check.timeout is not None else self.timeout,
            self._clock,
            self._record,
            self._finished,
            check.preamble if check.preamble is not None else self._preamble,
        )
        self._probes[backend] = probe
        probe.start()

    def _probe_soon(self, backend: Backend) -> None:
        if backend in self._fast:
            return

        def probe_again() -> None:
            del self._fast[backend]
            if self.running and backend not in self._probes and self._pool.get(backend.name):
                self._start_probe(backend)

        self._fast[backend] = self._clock.callLater(self.interval / 4, probe_again)

    def _finished(self, probe: Probe) -> None:
        backend = probe.backend
        if self._probes.get(backend) is probe:
            del self._probes[backend]
        # A shortage is logged when it starts and when it is over, not once
        # per probe (a probe per backend every interval).
        if probe.short is not None and backend not in self._short:
            self._short.add(backend)
            self._log.warn(
                "health checks of {backend} cannot be made: the gateway is short of "
                "resources: {reason}; its state stays as it is",
                backend=backend.name,
                reason=probe.short,
            )
        elif probe.passed is not None and backend in self._short:
            self._short.discard(backend)
            self._log.info("health checks of {backend} are made again", backend=backend.name)

    def _abort(self, probe: Probe) -> None:
        try:
            probe.abort()
        except Exception:
            self._log.failure(
                "could not abort the health check of {backend}", backend=probe.backend.name
            )

    def _record(self, probe: Probe, passed: bool, reason: str) -> None:
        """
        Count a probe's result and change the backend's state if it is due.
        """
        backend = probe.backend
        try:
            health = self._states.get(backend)
            if health is None or self._pool.get(backend.name) is not backend:
                return  # removed from the pool (or the checker stopped) meanwhile
            if not passed:
                backend.check_failures += 1
            change = health.record(passed, backend.state)
            if not passed and change is None and backend.state is BackendState.UP:
                # Failing but not down yet: probe again soon (HAProxy's
                # "fastinter"), so a dead backend is down after about half an
                # interval more, not after `fall` whole intervals.
                self._probe_soon(backend)
            if change is BackendState.DOWN:
                self._pool.set_state(
                    backend, change, f"health check failed {_times(health.failures)}: {reason}"
                )
            elif change is BackendState.UP:
                self._pool.set_state(
                    backend, change, f"health check passed {_times(health.successes)}"
                )
        except Exception:
            self._log.failure("could not record a health check of {backend}", backend=backend.name)
