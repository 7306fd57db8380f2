"""
The parts of a running gateway that a configuration sets, and how each is
made from a L{GatewayConfig}: used alike when the gateway is assembled
(L{gateway.process.assemble}) and when a reload changes it
(L{gateway.process.reload}), so that a setting is read in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import clientFromString

from gateway.config import BackendSpec, GatewayConfig, PoolSpec, RouteSpec
from gateway.front.admission import AddressGate, CapState, Responder
from gateway.front.door import GatewayFactory
from gateway.front.limits import AddressCap, AddressLimits, AddressRate
from gateway.front.proxyheader import proxy_header
from gateway.front.tls import SNICertificates
from gateway.http.connections import BackendConnections
from gateway.http.site import RouteTarget, WebSocketBridge
from gateway.http.static import CachePolicy, StaticRoot
from gateway.interfaces import IAddressPolicy
from gateway.ops.access import AccessLogFile
from gateway.ops.status import AdminState
from gateway.pool.backends import Backend, Pool
from gateway.pool.balance import make_balancer
from gateway.pool.health import HealthCheck
from gateway.pool.pools import Pools
from gateway.pool.room import RoomSettings
from gateway.pool.watch import PoolHealth
from gateway.session.leanlink import bare_address
from gateway.session.settings import SessionSettings

__all__ = [
    "pool_settings_of",
    "route_targets",
    "PASSIVE_FALL",
    "Parts",
    "address_policies",
    "backend_of",
    "default_check",
    "health_checks",
    "pool_health",
    "pool_of",
    "cache_policy_of",
    "http_root_of",
    "websocket_paths_of",
    "probe_preamble",
]

PASSIVE_FALL = 3
"""Failed connection attempts in a row that mark a backend down at once."""


@dataclass
class Parts:
    """
    What a reload reconfigures, as assembled for one process.

    @ivar reactor: the reactor the parts run on (backend endpoints are
        built on it).
    @ivar gates: every address gate of the process's fronts (one shared
        gate, or one per front in an acceptor); they share one
        L{AddressLimits}.
    @ivar site: the HTTP site of the fronts.
    @ivar admin_site: the admin endpoint's site, if it has one.
    @ivar certificates: the connection creators of the C{tls:} fronts (and
        admin endpoint), whose PEM folders a reload reads again.
    @ivar connections: the keep-alive connections of the proxied routes.
    """

    reactor: Any
    pools: Pools
    factory: GatewayFactory
    site: Any
    cap_state: CapState
    gates: list[AddressGate]
    responder: Responder
    health: PoolHealth | None = None
    admin_state: AdminState | None = None
    access_log: AccessLogFile | None = None
    admin_site: Any = None
    certificates: list[SNICertificates] = field(default_factory=list)
    connections: BackendConnections | None = None

    @property
    def pool(self) -> Pool:
        """
        The game pool.
        """
        return self.pools.game


def pool_of(spec: PoolSpec, config: GatewayConfig, reactor: Any) -> Pool:
    """
    A pool for a configured one, with its backends.
    """
    pool = Pool(
        (backend_of(b, reactor) for b in config.backends if b.pool == spec.name),
        make_balancer(spec.balance),
        # Passive detection only with health checks: they bring a backend back.
        fall=PASSIVE_FALL if spec.health_interval else 0,
        name=spec.name,
        clock=reactor,
    )
    pool.room.configure(RoomSettings.from_config(config), reactor)
    return pool


def backend_of(spec: BackendSpec, reactor: Any) -> Backend:
    """
    A pool backend for a configured one.
    """
    return Backend(
        name=spec.name,
        description=spec.endpoint,
        endpoint=clientFromString(reactor, spec.endpoint),
        weight=spec.weight,
        proxy_protocol=spec.proxy_protocol,
        pool=spec.pool,
        max_sessions=spec.max_sessions,
        address=bare_address(spec.endpoint),
    )


def pool_settings_of(config: GatewayConfig) -> dict[str, SessionSettings]:
    """
    The settings of sessions to each named pool (bridges to it).
    """
    base = SessionSettings.from_config(config)
    return {spec.name: base.for_pool(spec) for spec in config.pools}


def route_targets(
    config: GatewayConfig,
    pools: Pools,
    connections: BackendConnections,
    old: Sequence[tuple[RouteSpec, RouteTarget]] = (),
) -> list[tuple[RouteSpec, RouteTarget]]:
    """
    What serves each of the file's routes.  A reload keeps, by route name,
    the request rates whose settings did not change and the proxies (given
    their new settings), so requests in flight finish as they started.
    """
    kept = {spec.name: target for spec, target in old}
    specs = {spec.name: spec for spec in config.pool_specs()}
    targets = []
    for spec in config.routes:
        before = kept.get(spec.name)
        rate = _route_rate(spec, before.rate if before is not None else None)
        target: RouteTarget
        if spec.root is not None:
            root = StaticRoot(spec.root, listing=spec.listing, cache=cache_policy_of(config))
            target = RouteTarget(root, tree=True, rate=rate)
        elif spec.bridge is not None:
            target = RouteTarget(WebSocketBridge(spec.bridge), rate=rate)
        else:
            assert spec.pool is not None
            # Imported here: the proxy and Twisted's HTTP client only with a
            # proxied route (start-up memory, issue 18).
            from gateway.http.proxy import HTTPProxy

            pool, pool_spec = pools.pool(spec.pool), specs[spec.pool]
            assert pool is not None  # made from this configuration before the routes
            strip = spec.path if spec.strip_prefix else None
            proxy = before.resource if before is not None else None
            if isinstance(proxy, HTTPProxy):
                proxy.reconfigure(
                    pool,
                    strip_prefix=strip,
                    timeout=spec.timeout,
                    connect_timeout=pool_spec.connect_timeout,
                    retries=pool_spec.retries,
                )
            else:
                proxy = HTTPProxy(
                    spec.name,
                    pool,
                    connections=connections,
                    strip_prefix=strip,
                    timeout=spec.timeout,
                    connect_timeout=pool_spec.connect_timeout,
                    retries=pool_spec.retries,
                )
            target = RouteTarget(proxy, rate=rate, body_limit=spec.max_body)
        targets.append((spec, target))
    return targets


def _route_rate(spec: RouteSpec, old: AddressRate | None) -> AddressRate | None:
    """
    A route's request rate: the old table if its settings did not change
    (its addresses keep their buckets), else a new one.
    """
    if not spec.rate_per_ip:
        return None
    if (
        old is None
        or old.rate != spec.rate_per_ip
        or (spec.rate_burst is not None and old.burst != spec.rate_burst)
    ):
        return AddressRate(spec.rate_per_ip, spec.rate_burst)
    return old


def websocket_paths_of(config: GatewayConfig) -> frozenset[bytes]:
    """
    The request paths of the WebSocket bridge, as the HTTP site matches them.
    """
    return frozenset(path.encode() for path in config.websocket)


def http_root_of(config: GatewayConfig) -> str | None:
    """
    The folder the HTTP side serves: C{--http-root}, or the demo's page
    under C{--demo}, or none.
    """
    if config.http_root is None and config.demo:
        from gateway.demo import SITE_DIR

        return SITE_DIR
    return config.http_root


def address_policies(config: GatewayConfig, old: AddressLimits | None) -> AddressLimits | None:
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
        cap.resize(config.max_per_ip)
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


def probe_preamble(version: str) -> bytes:
    """
    What a health probe writes first for a backend that expects a PROXY
    header: one without addresses (LOCAL in v2, UNKNOWN in v1).
    """
    if version == "off":
        return b""
    nobody = UNIXAddress(None)
    return proxy_header(version, nobody, nobody)


def default_check(spec: PoolSpec) -> HealthCheck:
    """
    The health check of a pool's backends that have none of their own.
    """
    return HealthCheck(
        send=spec.health_send,
        expect=spec.health_expect,
        preamble=probe_preamble(spec.proxy_protocol),
        http_path=spec.health_path.encode("ascii") if spec.health_path is not None else None,
        http_status=spec.health_status,
        http_host=spec.health_host.encode("ascii") if spec.health_host is not None else None,
    )


def health_checks(config: GatewayConfig, spec: PoolSpec) -> dict[str, HealthCheck]:
    """
    The health checks of the pool's backends that have their own (a
    send/expect check or a PROXY setting of their own in the config file),
    by name.
    """
    checks = {}
    for backend in config.backends:
        if backend.pool != spec.name or (
            backend.health_send is None
            and backend.health_expect is None
            and not backend.proxy_protocol
        ):
            continue
        checks[backend.name] = dataclasses.replace(
            default_check(spec),
            send=spec.health_send if backend.health_send is None else backend.health_send,
            expect=spec.health_expect if backend.health_expect is None else backend.health_expect,
            preamble=probe_preamble(backend.proxy_protocol or spec.proxy_protocol),
        )
    return checks


def pool_health(
    config: GatewayConfig,
) -> dict[str, tuple[float, dict[str, HealthCheck], HealthCheck]]:
    """
    What every pool's health checks are: by pool name, the interval (0:
    none), the backends' own checks and the pool's.
    """
    return {
        spec.name: (spec.health_interval, health_checks(config, spec), default_check(spec))
        for spec in config.pool_specs()
    }


def cache_policy_of(config: GatewayConfig) -> CachePolicy:
    """
    The caching headers of static files (C{--cache-control},
    C{--cache-immutable}).
    """
    return CachePolicy.from_settings(config.cache_control, config.cache_immutable)
