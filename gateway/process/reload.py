"""
Reloading the configuration (SIGHUP in a single process or the acceptor; a
configuration message in a worker): L{Reloader} reads it again and applies
what changed to the running parts, and L{Departures} takes the backends the
new configuration removed out of the pool once their last session ended.

What a reload changes applies to what comes next: backends added enter the
pool, removed ones drain (their sessions go on) and leave once they have
none; limits, timeouts, balancing, health checks, the admin token, TLS
folders and the access log take their new values.  Open sessions are
untouched.  Settings that need new listening sockets are kept as they were,
and that is said in the log line that lists the changes.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.config import BackendSpec, ConfigError, GatewayConfig
from gateway.front.tls import SNICertificates
from gateway.http.site import make_site
from gateway.ops.access import access_log_only, access_log_starts
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.balance import make_balancer
from gateway.pool.pools import Pools
from gateway.pool.probe import quote_bytes
from gateway.pool.room import RoomSettings
from gateway.process.parts import (
    PASSIVE_FALL,
    Parts,
    address_policies,
    backend_of,
    cache_policy_of,
    http_root_of,
    pool_health,
    pool_settings_of,
    route_targets,
    websocket_paths_of,
)
from gateway.session.settings import SessionSettings

__all__ = ["RESTART_ONLY", "Departures", "Reloader"]

RESTART_ONLY = (
    "listen",
    "admin",
    "demo",
    "handover",
    "workers",
    "log_format",
    "cluster",
    "cluster_ttl",
    "cluster_timeout",
    "cluster_max_sessions",
    "affinity_ttl",
)
"""Settings a reload cannot change: they need new listening sockets (or, for
the cluster, a node that every other node sees the same way)."""


class Departures:
    """
    Backends removed from the configuration, draining until their last
    session ends; then they leave their pool (checked every second), and a
    pool the configuration removed leaves with its last backend.

    @ivar wanted_pools: the pools the configuration has.
    """

    _log = Logger()

    def __init__(self, pools: Pools, clock: IReactorTime | None) -> None:
        self._pools = pools
        self._clock = clock
        self.wanted_pools: set[str] = {pool.name for pool in pools.pools}
        self._leaving: dict[str, Backend] = {}
        self._call: IDelayedCall | None = None

    def leave_when_empty(self, backend: Backend) -> None:
        """
        Take C{backend} out of the pool once its last session ended.
        """
        self._leaving[backend.name] = backend
        if self._call is None:
            self._check()

    def leaving(self, name: str) -> bool:
        """
        Whether the backend C{name} is draining to leave the pool.
        """
        return name in self._leaving

    def come_back(self, name: str) -> Backend | None:
        """
        A backend being removed that the configuration names again.
        """
        return self._leaving.pop(name, None)

    def _check(self) -> None:
        self._call = None
        for name, backend in list(self._leaving.items()):
            if backend.state is not BackendState.DRAINING:
                del self._leaving[name]  # enabled again by an operator
            elif backend.active == 0:
                del self._leaving[name]
                pool = self._pools.owner(backend)
                if pool is not None:
                    pool.remove(backend)
                self._log.info(
                    "backend {backend} left the pool (removed from the configuration, "
                    "no sessions left)",
                    backend=name,
                )
                if pool is not None and not pool.backends and pool.name not in self.wanted_pools:
                    self._pools.remove_pool(pool.name)
                    self._log.info("pool {pool} removed (its last backend left)", pool=pool.name)
        if self._leaving and self._clock is not None:
            self._call = self._clock.callLater(1.0, self._check)


class Reloader:
    """
    The running configuration of one process, and how a new one is applied.

    @ivar config: the configuration in force.
    @ivar parts: what a reload reconfigures.
    """

    _log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        parts: Parts,
        rebuild: Callable[[], GatewayConfig] | None = None,
        *,
        quiet_certificates: bool = False,
    ) -> None:
        """
        @param rebuild: reads the configuration again (the command line
            over the config file); L{None}: nothing to reload from.
        @param quiet_certificates: do not log a TLS folder that went bad
            (a worker: its acceptor logs it).
        """
        self.config = config
        self.parts = parts
        self._rebuild = rebuild
        self._quiet_certificates = quiet_certificates
        self.departures = Departures(parts.pools, parts.reactor)

    def watch_certificates(self, creator: SNICertificates) -> None:
        """
        Read C{creator}'s PEM folder again at every reload.
        """
        self.parts.certificates.append(creator)

    def reload(self) -> bool:
        """
        Read the configuration again and apply what changed (one log line
        lists it); an invalid configuration changes nothing and is logged.

        @return: whether the new configuration was applied.
        """
        if self._rebuild is None:
            self._log.warn("reload: nothing to reload from")
            return False
        source = self.config.config_file or "the command line"
        try:
            new = self._rebuild()
        except ConfigError as error:
            self._log.error(
                "reload refused, the running configuration stays: {error}", error=str(error)
            )
            return False
        except Exception:
            self._log.failure("reload refused, the running configuration stays")
            return False
        changes = self.apply(new)
        self._log.info(
            "reloaded {source}: {changes}",
            source=source,
            changes="; ".join(changes) if changes else "nothing changed",
        )
        return True

    def apply(self, new: GatewayConfig) -> list[str]:
        """
        Apply C{new} to the running parts.

        @return: what changed, in words.
        """
        old = self.config
        changes: list[str] = []
        new = self._keep_restart_only(old, new, changes)
        self._apply_backends(old, new, changes)
        self._apply_rooms(new)
        self._apply_admission(new)
        self._apply_front(old, new)
        self._apply_health(new, changes)
        new = self._apply_ops(old, new, changes)
        changes.extend(_differences(old, new))
        self.config = new
        return changes

    def _keep_restart_only(
        self, old: GatewayConfig, new: GatewayConfig, changes: list[str]
    ) -> GatewayConfig:
        for name in RESTART_ONLY:
            if getattr(old, name) != getattr(new, name):
                changes.append(f"{name} changed, which needs a restart: kept as it was")
                new = dataclasses.replace(new, **{name: getattr(old, name)})
        return new

    def _apply_pools(self, old: GatewayConfig, new: GatewayConfig, changes: list[str]) -> None:
        """
        Pools added, and every pool's balancing and passive detection.
        """
        pools, before = self.parts.pools, {spec.name: spec for spec in old.pool_specs()}
        for spec in new.pool_specs():
            pool = pools.pool(spec.name)
            if pool is None:
                pool = Pool((), make_balancer(spec.balance), name=spec.name)
                pools.add_pool(pool)
                changes.append(f"pool {spec.name} added")
            previous = before.get(spec.name)
            if previous is not None and spec.name != "game":
                changes.extend(
                    f"pool {spec.name} {f.name.replace('_', '-')} "
                    f"{getattr(previous, f.name)!r} -> {getattr(spec, f.name)!r}"
                    for f in dataclasses.fields(spec)
                    if getattr(previous, f.name) != getattr(spec, f.name)
                )
            pool.reconfigure(
                balancer=None
                if previous is not None and previous.balance == spec.balance
                else make_balancer(spec.balance),
                # Passive detection only with health checks: they bring a backend back.
                fall=PASSIVE_FALL if spec.health_interval else 0,
            )
        self.departures.wanted_pools = {spec.name for spec in new.pool_specs()}
        for name in before.keys() - self.departures.wanted_pools:
            changes.append(f"pool {name} removed: its backends drain")
            gone = pools.pool(name)
            # No seat can come: its waiting players are told so now.
            for waiter in gone.room.turn_away() if gone is not None else ():
                waiter.dismiss(f"pool {name} was removed from the configuration")

    def _apply_backends(self, old: GatewayConfig, new: GatewayConfig, changes: list[str]) -> None:
        self._apply_pools(old, new, changes)
        pools, departures, reactor = self.parts.pools, self.departures, self.parts.reactor
        wanted = {spec.name for spec in new.backends}
        before = {spec.name: spec for spec in old.backends}
        for spec in new.backends:
            pool = pools.pool(spec.pool)
            assert pool is not None  # every backend's pool was just made
            backend = pools.get(spec.name)
            if backend is not None and backend.pool != spec.pool:
                # Moved: out of its old pool now (its sessions go on with it).
                departures.come_back(spec.name)
                owner = pools.owner(backend)
                if owner is not None:
                    owner.remove(backend)
                changes.append(
                    f"backend {spec.name} moved from pool {backend.pool} to {spec.pool}"
                )
                backend = None
            if backend is None:
                pool.add(backend_of(spec, reactor))
                changes.append(f"backend {spec.name} added")
                continue
            self._apply_backend(backend, spec, changes)
            self._note_checks(before.get(spec.name), spec, changes)
        keep: set[str] = set()
        if old.demo:
            # Imported here: the demo only with --demo (start-up memory, issue 18).
            from gateway.demo.backends import DEMO_BACKENDS

            keep = set(DEMO_BACKENDS)
        for backend in pools.backends:
            if backend.name in wanted or backend.name in keep or departures.leaving(backend.name):
                continue
            pools.set_state(backend, BackendState.DRAINING, "removed from the configuration")
            departures.leave_when_empty(backend)
            changes.append(f"backend {backend.name} removed: draining")

    @staticmethod
    def _note_checks(old: BackendSpec | None, spec: BackendSpec, changes: list[str]) -> None:
        """
        Say what changed in a kept backend's own health check and PROXY
        setting (applied by the health checks' and sessions' next use).
        """
        if old is None:
            return

        def shown(value: object) -> str:
            return quote_bytes(value) if isinstance(value, bytes) else repr(value)

        for name in ("health_send", "health_expect", "proxy_protocol"):
            if getattr(old, name) != getattr(spec, name):
                changes.append(
                    f"backend {spec.name} {name.replace('_', '-')} "
                    f"{shown(getattr(old, name))} -> {shown(getattr(spec, name))}"
                )

    def _apply_backend(self, backend: Backend, spec: BackendSpec, changes: list[str]) -> None:
        """
        A backend the configuration keeps: back if it was leaving, its new
        endpoint, weight and PROXY setting.
        """
        if self.departures.come_back(spec.name) is not None:
            self.parts.pools.set_state(backend, BackendState.UP, "back in the configuration")
            changes.append(f"backend {spec.name} back")
        description, endpoint, address = backend.description, backend.endpoint, backend.address
        if description != spec.endpoint:
            fresh = backend_of(spec, self.parts.reactor)
            description, endpoint, address = fresh.description, fresh.endpoint, fresh.address
            changes.append(f"backend {spec.name} now at {spec.endpoint}")
        if backend.weight != spec.weight:
            changes.append(f"backend {spec.name} weight {backend.weight} -> {spec.weight}")
        if backend.max_sessions != spec.max_sessions:
            changes.append(
                f"backend {spec.name} max-sessions {backend.max_sessions} -> {spec.max_sessions}"
            )
        backend.reconfigure(
            description=description,
            endpoint=endpoint,
            weight=spec.weight,
            max_sessions=spec.max_sessions,
            proxy_protocol=spec.proxy_protocol,
            address=address,
        )

    def _apply_rooms(self, new: GatewayConfig) -> None:
        """
        Every pool's waiting room gets the new settings (players waiting
        keep their place), and admits whoever a backend added or grown now
        has room for.
        """
        settings = RoomSettings.from_config(new)
        for pool in self.parts.pools.pools:
            pool.room.configure(settings, self.parts.reactor)

    def _apply_admission(self, new: GatewayConfig) -> None:
        parts = self.parts
        parts.cap_state.reconfigure(new.max_connections, new.overflow == "queue")
        if parts.gates:
            limits = address_policies(new, parts.gates[0].limits)
            for gate in parts.gates:
                gate.reconfigure(limits)
        parts.responder.reconfigure(new.busy_message)

    def _apply_front(self, old: GatewayConfig, new: GatewayConfig) -> None:
        parts = self.parts
        parts.factory.reconfigure(SessionSettings.from_config(new), pool_settings_of(new))
        connections = parts.connections
        assert connections is not None
        root = None
        if (
            new.http_root != old.http_root
            or new.http_listing != old.http_listing
            or cache_policy_of(new) != cache_policy_of(old)
        ):
            root = make_site(
                http_root_of(new),
                listing=new.http_listing,
                reactor=parts.reactor,
                cache=cache_policy_of(new),
            ).resource
        parts.site.reconfigure(
            header_timeout=new.header_timeout,
            root=root,
            websocket_paths=websocket_paths_of(new),
            routes=route_targets(new, parts.pools, connections, parts.site.routes.routes),
            fast_path=new.http_fast_path,
        )
        if parts.admin_site is not None:
            parts.admin_site.reconfigure(header_timeout=new.header_timeout)

    def _apply_health(self, new: GatewayConfig, changes: list[str]) -> None:
        if self.parts.health is not None:
            changes.extend(self.parts.health.configure(pool_health(new)))

    def _apply_ops(
        self, old: GatewayConfig, new: GatewayConfig, changes: list[str]
    ) -> GatewayConfig:
        parts = self.parts
        if parts.admin_state is not None:
            parts.admin_state.reconfigure(new.admin_token, new.admin_hosts, new)
        access_log_only(new.access_log_only)
        access_log_starts(new.access_log_starts)
        now = datetime.datetime.fromtimestamp(parts.reactor.seconds(), datetime.UTC)
        for creator in parts.certificates:
            changes.append(creator.reload(now, quiet=self._quiet_certificates))
        if parts.access_log is not None:
            # Reopened on every reload: this is also how log rotation works.
            parts.access_log.reopen(new.access_log or parts.access_log.path)
            if new.access_log is None:
                changes.append("access-log removed, which needs a restart: kept")
                new = dataclasses.replace(new, access_log=old.access_log)
        elif new.access_log is not None:
            changes.append("access-log added, which needs a restart: not written yet")
            new = dataclasses.replace(new, access_log=None)
        return new


def _differences(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """
    The settings that differ, in words (backends and restart-only settings
    are said by the steps that handle them; a token's value is never shown).
    """
    changes = []
    skip = {
        "backends",
        "pools",
        "routes",
        "config_file",
        "admin_token",
        "queue_classes",
        *RESTART_ONLY,
    }
    for field in dataclasses.fields(GatewayConfig):
        if field.name in skip:
            continue
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            changes.append(f"{field.name.replace('_', '-')} {before!r} -> {after!r}")
    if old.admin_token != new.admin_token:
        changes.append("admin token changed")
    if old.queue_classes != new.queue_classes:
        changes.append(
            "queue classes: " + (", ".join(c.name for c in new.queue_classes) or "none")
        )
    before = {route.name: route for route in old.routes}
    after = {route.name: route for route in new.routes}
    for name in after:
        if name not in before:
            changes.append(f"route {name} added")
        elif before[name] != after[name]:
            changes.append(f"route {name} changed")
    changes.extend(f"route {name} removed" for name in before if name not in after)
    return changes
