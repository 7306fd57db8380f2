"""
The health checks of every pool: L{PoolHealth}, a service holding one
L{HealthChecker} per pool whose C{health-interval} is not 0.

Each pool has its own interval and checks (an HTTP pool's C{GET}, a game
pool's send/expect), so each gets its own checker; a reload starts the
checks of a pool that gained them (or was added), stops those of a pool that
lost them (or was removed), and gives the others their new settings, with
their backends' health records kept.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime

from gateway.pool.health import HealthCheck, HealthChecker
from gateway.pool.pools import Pools

__all__ = ["PoolHealth", "PoolChecks"]

PoolChecks = Mapping[str, tuple[float, Mapping[str, HealthCheck], HealthCheck]]
"""What every pool's checks are: by pool name, the interval (0: none), the
checks of backends that have their own (by name), and the pool's check."""


class PoolHealth(MultiService):
    """
    One health checker per checked pool.

    @ivar checkers: the running checkers, by pool name.
    """

    def __init__(self, pools: Pools, clock: IReactorTime, *, fall: int) -> None:
        """
        @param fall: failed probes in a row that take a backend down.
        """
        super().__init__()
        self.setName("health")
        self._pools = pools
        self._clock = clock
        self._fall = fall
        self.checkers: dict[str, HealthChecker] = {}

    def configure(self, wanted: PoolChecks) -> list[str]:
        """
        Check the pools as C{wanted} says, from now on.

        @return: what changed, in words (checks started or stopped).
        """
        changes = []
        for name, (interval, checks, default) in wanted.items():
            pool = self._pools.pool(name)
            checker = self.checkers.get(name)
            if not interval or pool is None:
                if checker is not None:
                    self._stop(name)
                    changes.append(f"pool {name}: health checks off")
            elif checker is None:
                checker = HealthChecker(
                    pool,
                    self._clock,
                    interval=interval,
                    fall=self._fall,
                    checks=checks,
                    default_check=default,
                )
                checker.setName(f"health {name}")
                self.checkers[name] = checker
                checker.setServiceParent(self)  # started now if this is running
                changes.append(f"pool {name}: health checks every {interval:g} s")
            else:
                checker.reconfigure(
                    interval=interval, checks=checks, default_check=default, preamble=b""
                )
        for name in [name for name in self.checkers if name not in wanted]:
            self._stop(name)
        return changes

    def _stop(self, name: str) -> None:
        checker = self.checkers.pop(name)
        checker.disownServiceParent()
