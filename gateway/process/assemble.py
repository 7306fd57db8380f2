"""
The service tree: a validated L{GatewayConfig} in, one L{GatewayService} out.

L{make_service} only assembles: it builds endpoints from their strings, the
pool, the HTTP site, the front door's factory and each front's chain, the
admin endpoint and the optional services, and hands them to the service's
constructor.  Nothing is bound until twistd starts the tree.  The reactor is
fetched here, lazily, and passed down; no other module imports it.

A process has one of three roles: C{single} (one process does everything),
C{acceptor} (it listens, admits, and hands connections to worker processes:
see L{gateway.process.workerpool}) or C{worker} (it serves what an acceptor
hands it: no fronts, admin endpoint, health checks, hand-over nor access log
file of its own).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from typing_extensions import override

from gateway.config import GatewayConfig
from gateway.front.admission import AddressGate, CapFactory, CapState, RefusalFactory, Responder
from gateway.front.chain import connection_chain, split_front
from gateway.front.door import FrontDoor, GatewayFactory
from gateway.front.limits import AddressLimits, Refusal, TotalCap
from gateway.front.tls import SNICertificates
from gateway.http.connections import BackendConnections
from gateway.http.site import HTTPSite, make_site
from gateway.ops.access import AccessLogFile, access_log_only, access_log_starts
from gateway.ops.registry import Counters, RefusalLog, SessionRegistry
from gateway.ops.status import AdminState
from gateway.pool.pools import Pools
from gateway.pool.watch import PoolHealth
from gateway.process.dispatch import Dispatcher, TLSRefusals
from gateway.process.handover import HandoverServer
from gateway.process.listener import FrontListener, server_endpoint
from gateway.process.parts import (
    PASSIVE_FALL,
    Parts,
    address_policies,
    cache_policy_of,
    http_root_of,
    pool_health,
    pool_of,
    pool_settings_of,
    route_targets,
    websocket_paths_of,
)
from gateway.process.reload import Reloader
from gateway.process.service import GatewayService
from gateway.process.summary import StartSummary
from gateway.process.takeover import TakeOver
from gateway.process.workerpool import WorkerPool
from gateway.session.settings import SessionSettings

if TYPE_CHECKING:
    from twisted.web.server import Request

    from gateway.cluster.admission import SharedLimits
    from gateway.cluster.node import ClusterNode

__all__ = ["make_service"]

_log = Logger()


def make_service(
    config: GatewayConfig,
    reactor: Any = None,
    rebuild: Callable[[], GatewayConfig] | None = None,
    *,
    role: str | None = None,
) -> GatewayService:
    """
    Assemble the gateway for C{config}.

    @param reactor: the reactor to run on; the global one when L{None}
        (then the service also handles SIGHUP and a second SIGTERM).
    @param rebuild: reads the configuration again (for SIGHUP).
    @param role: C{single}, C{acceptor} or C{worker} (see the module's
        docstring).  By default, C{acceptor} if C{config.workers} is more
        than 1, else C{single}.
    """
    if role is None:
        role = "acceptor" if config.workers > 1 else "single"
    handle_signals = reactor is None
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    core = _core(config, reactor)
    served = role != "worker"
    # First: stopped last, once no request uses the connections.
    children: list[IService] = [_Closing(core.connections)]
    workers = None
    if role == "acceptor":
        workers = WorkerPool(config.workers, reactor, core.pools, lambda: reloader.config)
    health = cluster = None
    if served:
        backend_services, health, cluster = _backend_services(config, core, reactor)
        children.extend(backend_services)
    listeners = _fronts(config, core, workers, cluster) if served else []
    children.extend(listeners)
    if workers is not None:
        # After the fronts: stopped first, before they are (a drain stops
        # the fronts itself, before anything else).
        children.append(workers)
    admin = state = admin_site = None
    if config.admin is not None and served:
        admin, state, admin_site = _admin(config, core, workers, cluster)
        children.append(admin)
    access_log = _access_log(config, served, reactor)
    if access_log is not None:
        children.append(access_log)
    takeover = None
    if config.handover is not None and served:
        fronts = [*listeners, *([admin] if admin else [])]
        server = _handover_server(config.handover, reactor, fronts)
        children.append(server)
        takeover = TakeOver(config.handover, fronts, server, reactor)
    if served:
        children.append(StartSummary(config, listeners, admin))
    parts = core.parts(
        health=health, admin_state=state, admin_site=admin_site, access_log=access_log
    )
    reloader = Reloader(config, parts, rebuild, quiet_certificates=not served)
    service = GatewayService(
        reloader,
        counters=core.counters,
        registry=core.registry,
        refusals=core.refusals,
        clock=reactor,
        handle_signals=handle_signals,
        listeners=listeners,
        admin=admin,
        workers=workers,
        takeover=takeover,
        role=role,
    )
    for child in children:
        child.setServiceParent(service)
    return service


def _backend_services(
    config: GatewayConfig, core: _Core, reactor: Any
) -> tuple[list[IService], PoolHealth, ClusterNode | None]:
    """
    The demo game servers (with C{--demo}), then the health checks (after
    them, so that the first round sees them), then the cluster membership
    (with C{--cluster}; before the fronts, so that with
    C{--cluster-required} a Redis that cannot be used stops the start before
    anything listens).
    """
    children: list[IService] = []
    if config.demo:
        # Imported here: the demo's game servers only with --demo (start-up
        # memory, issue 18).
        from gateway.demo.backends import DEMO_BACKENDS, DemoBackends

        children.append(
            DemoBackends(core.pools.game, reactor, DEMO_BACKENDS, config.demo_max_sessions)
        )
    health = PoolHealth(core.pools, reactor, fall=PASSIVE_FALL)
    health.configure(pool_health(config))
    children.append(health)
    cluster = _cluster(config, core) if config.cluster is not None else None
    if cluster is not None:
        children.append(cluster)
    return children, health, cluster


def _access_log(config: GatewayConfig, served: bool, reactor: Any) -> AccessLogFile | None:
    """
    Route the access events as configured, and make the access log file's
    service if one is configured (not in a worker: the acceptor writes it).
    """
    access_log_only(config.access_log_only)
    access_log_starts(config.access_log_starts)
    if config.access_log is None or not served:
        return None
    return AccessLogFile(config.access_log, reactor)


@dataclass(frozen=True, slots=True)
class _Core:
    """
    What every role has, built first: the pool, the counters and the
    children list, the refusal log, the HTTP site, the front door's factory,
    the total cap and the refusals' answers; and the lists that the fronts
    fill (their address gates, their TLS certificates).
    """

    reactor: Any
    pools: Pools
    factory: GatewayFactory
    site: HTTPSite
    cap_state: CapState
    responder: Responder
    counters: Counters
    registry: SessionRegistry
    refusals: RefusalLog
    connections: BackendConnections
    gates: list[AddressGate] = field(default_factory=list)
    certificates: list[SNICertificates] = field(default_factory=list)

    def parts(
        self,
        *,
        health: PoolHealth | None,
        admin_state: AdminState | None,
        admin_site: HTTPSite | None,
        access_log: AccessLogFile | None,
    ) -> Parts:
        """
        What a reload reconfigures: these parts and the optional ones given.
        """
        return Parts(
            reactor=self.reactor,
            pools=self.pools,
            factory=self.factory,
            site=self.site,
            cap_state=self.cap_state,
            gates=self.gates,
            responder=self.responder,
            health=health,
            admin_state=admin_state,
            access_log=access_log,
            admin_site=admin_site,
            certificates=self.certificates,
            connections=self.connections,
        )


def _core(config: GatewayConfig, reactor: Any) -> _Core:
    """
    The parts every role has (see L{_Core}).
    """
    pools = Pools(pool_of(config.game_pool, config, reactor))
    for spec in config.pools:
        pools.add_pool(pool_of(spec, config, reactor))
    counters = Counters()
    registry = SessionRegistry(reactor)
    connections = BackendConnections(reactor)
    refusals = RefusalLog(reactor, counters)
    site = make_site(
        http_root_of(config),
        listing=config.http_listing,
        reactor=reactor,
        header_timeout=config.header_timeout,
        refusals=refusals,
        websocket_paths=websocket_paths_of(config),
        routes=route_targets(config, pools, connections),
        cache=cache_policy_of(config),
        fast_path=config.http_fast_path,
    )
    if config.websocket or any(route.bridge for route in config.routes):
        # The bridge is used: loaded now, not by the first browser's request
        # (the import takes the reactor for some milliseconds).
        import gateway.front.websocket  # noqa: F401
    factory = GatewayFactory(
        upgrade=_websocket_upgrade,
        site=site,
        chooser=pools.game,
        pools=pools.pool,
        pool_settings=pool_settings_of(config),
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
    return _Core(
        reactor,
        pools,
        factory,
        site,
        cap_state,
        responder,
        counters,
        registry,
        refusals,
        connections,
    )


def _websocket_upgrade(door: FrontDoor, request: Request, pool: str) -> bytes | int:
    """
    The front door's answer to a request on a C{--websocket} path
    (L{gateway.front.websocket.answer_upgrade}).
    """
    # Imported here: wsproto, h11 and the WebSocket session only where
    # WebSockets are used (start-up memory, issue 18); loaded at start when
    # the configuration has a bridge (_core), else at the first such request
    # (a path added by a reload).
    from gateway.front.websocket import answer_upgrade

    return answer_upgrade(door, request, pool)


class _Closing(Service):
    """
    Closes the proxied routes' keep-alive connections when the gateway stops.
    """

    def __init__(self, connections: BackendConnections) -> None:
        self._connections = connections

    @override
    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._connections.close()


def _fronts(
    config: GatewayConfig, core: _Core, workers: WorkerPool | None, cluster: ClusterNode | None
) -> list[FrontListener]:
    """
    One listener per C{--listen} front, each with its chain: total cap, then
    (PROXY header reader, address gate, front door) in a single process; in
    an acceptor, an address gate per front whose end hands the connection to
    a worker, and TLS spoken only to refuse (the worker speaks it).  In a
    cluster the address gates ask the cluster's shared limits.
    """
    reactor, refusals = core.reactor, core.refusals
    limits = address_policies(config, None)
    together = cluster.limits if cluster is not None else None
    shared = None if workers is not None else _gate(core, core.factory, limits, together)
    listeners = []
    for index, description in enumerate(config.listen):
        proxy, text = split_front(description)
        endpoint = server_endpoint(reactor, text, "--listen", core.certificates)
        creator: SNICertificates | None = None
        if workers is not None:
            gate = _gate(core, Dispatcher(workers, index), limits, together)
            creator = getattr(endpoint, "connectionCreator", None)
            if creator is not None:
                # TLS is the worker's business: the acceptor listens on the
                # plain socket under it, and speaks TLS only to refuse.
                endpoint = cast(Any, endpoint).endpoint
            admitted: Factory = gate if creator is None else TLSRefusals(gate, creator)
        else:
            assert shared is not None
            admitted = shared
        inner = connection_chain(
            admitted,
            proxy=proxy,
            tls=None,
            clock=reactor,
            header_timeout=config.header_timeout,
            refusals=refusals,
        )
        refusal = connection_chain(
            RefusalFactory(core.responder, Refusal.TOTAL_CAP, refusals),
            proxy=proxy,
            tls=creator,
            clock=reactor,
            header_timeout=config.header_timeout,
            refusals=refusals,
        )
        cap = CapFactory(core.cap_state, inner, refusal)
        listeners.append(FrontListener(description, endpoint, cap, core.cap_state))
    return listeners


def _gate(
    core: _Core, inner: Factory, limits: AddressLimits | None, shared: SharedLimits | None
) -> AddressGate:
    """
    An address gate in front of C{inner}, listed in C{core.gates} so that a
    reload gives it new limits; C{shared} decides in a cluster.
    """
    gate = AddressGate(
        inner,
        limits,
        clock=core.reactor,
        refusals=core.refusals,
        responder=core.responder,
        shared=shared,
    )
    core.gates.append(gate)
    return gate


def _cluster(config: GatewayConfig, core: _Core) -> ClusterNode:
    """
    This node's membership of the cluster (C{--cluster}).
    """
    assert config.cluster is not None
    # Imported here: txredisapi imports the reactor when it is loaded, and the
    # gateway's modules must not install one before twistd's -r has.
    from gateway.cluster.node import ClusterNode

    reactor = core.reactor
    node = ClusterNode(
        config.cluster,
        reactor,
        core.pools,
        core.registry,
        ttl=config.cluster_ttl,
        timeout=config.cluster_timeout,
        address=config.listen[0] if config.listen else "",
        started=reactor.seconds(),
        required=config.cluster_required,
        affinity_ttl=config.affinity_ttl,
        max_sessions=config.cluster_max_sessions,
    )
    core.pools.share_affinity(node.affinity)
    core.pools.share_seats(node.seats)
    return node


def _admin(
    config: GatewayConfig, core: _Core, workers: WorkerPool | None, cluster: ClusterNode | None
) -> tuple[FrontListener, AdminState, HTTPSite]:
    """
    The admin endpoint (never a public front): its listener, the state its
    documents read and its site.
    """
    assert config.admin is not None
    # Imported here: the admin site and its /metrics (prometheus_client) only
    # with --admin (start-up memory, issue 18).
    from gateway.ops.admin import make_admin_site

    reactor = core.reactor
    state = AdminState(
        core.pools,
        core.registry,
        core.counters,
        clock=reactor,
        token=config.admin_token,
        hosts=config.admin_hosts,
        workers=workers,
        config=config,
        cluster=cluster,
    )
    site = make_admin_site(
        state, reactor, header_timeout=config.header_timeout, refusals=core.refusals
    )
    if config.admin_token is None and not _local_only(config.admin):
        _log.warn(
            "the admin endpoint {admin} is not on loopback and has no --admin-token: "
            "whoever reaches it can drain backends",
            admin=config.admin,
        )
    listener = FrontListener(
        config.admin,
        server_endpoint(reactor, config.admin, "--admin", core.certificates),
        site,
        option="--admin",
    )
    return listener, state, site


def _handover_server(path: str, reactor: Any, fronts: list[FrontListener]) -> HandoverServer:
    """
    The hand-over socket at C{path}: gives C{fronts}' listening sockets to
    the process that replaces this one.
    """

    def listening() -> list[tuple[str, IListeningPort]]:
        return [(f.description, f.port) for f in fronts if f.port and not f.handed_over]

    def given(ports: list[tuple[str, IListeningPort]]) -> list[FrontListener]:
        return [f for f in fronts if any(port is f.port for _, port in ports)]

    def stop_accepting(ports: list[tuple[str, IListeningPort]]) -> None:
        for front in given(ports):
            front.hand_over()

    def resume_accepting(ports: list[tuple[str, IListeningPort]]) -> None:
        for front in given(ports):
            front.take_back()

    return HandoverServer(path, reactor, listening, stop_accepting, resume_accepting)


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
