"""
The service tree: a validated L{GatewayConfig} in, one C{MultiService} out.

L{make_service} only assembles: it builds endpoints from their strings, the
pool, the HTTP site and the front door's factory, and puts a listener service
per C{--listen} under one L{GatewayService}.  Nothing is bound until twistd
starts the tree.  The reactor is fetched here, lazily, and passed down; no
other module imports it.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.access import AccessLogFile
from gateway.admin import AdminState, make_admin_site
from gateway.admission import AddressGate, CapFactory, CapState, RefusalFactory, Responder
from gateway.balance import make_balancer
from gateway.config import GatewayConfig
from gateway.front import GatewayFactory
from gateway.health import HealthCheck, HealthChecker
from gateway.interfaces import IAddressPolicy
from gateway.limits import AddressCap, AddressLimits, AddressRate, Refusal, TotalCap
from gateway.pool import Backend, Pool
from gateway.proxyheader import HAPROXY_PREFIX, ProxyHeaderFactory, proxy_header
from gateway.registry import Counters, RefusalLog, SessionRegistry
from gateway.web import make_site

__all__ = ["DemoBackends", "FrontListener", "GatewayService", "StartupError", "make_service"]

PASSIVE_FALL = 3
"""Failed connection attempts in a row that mark a backend down at once."""

DEMO_BACKENDS = ("demo-a", "demo-b")
"""Names of the demo game servers that C{--demo} runs in-process."""


class StartupError(SystemExit, Exception):
    """
    Start-up cannot go on (a front cannot be bound).

    A SystemExit, so that C{twistd -n} prints its one-line message and exits
    without a traceback; also an Exception, so that a daemonizing twistd (which
    catches Exception in the child) reports it to the parent process, which
    then exits non-zero instead of waiting forever.
    """


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
        self.setName(f"{option.lstrip('-')} {description}")

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
        if self._cap_state is not None:
            self._cap_state.remove_port(port)
        return port.stopListening()


class GatewayService(MultiService):
    """
    The root of the gateway's service tree.

    @ivar config: the configuration it was built from.
    @ivar pool: the game backends.
    @ivar factory: the front door's factory, shared by every listener.
    @ivar listeners: one per public front, in configured order.
    @ivar admin: the admin endpoint's listener, unless turned off.
    @ivar counters: accepted, queued and refused connections.
    @ivar cap_state: the total cap and its held queue.
    """

    def __init__(
        self,
        config: GatewayConfig,
        pool: Pool,
        factory: GatewayFactory,
        counters: Counters,
        cap_state: CapState,
    ) -> None:
        super().__init__()
        self.config = config
        self.pool = pool
        self.factory = factory
        self.counters = counters
        self.cap_state = cap_state
        self.listeners: list[FrontListener] = []
        self.admin: FrontListener | None = None


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


def make_service(config: GatewayConfig, reactor: Any = None) -> GatewayService:
    """
    Assemble the gateway for C{config}.

    @param reactor: the reactor to run on; the global one when L{None}.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    pool = Pool(
        (
            Backend(
                name=spec.name,
                description=spec.endpoint,
                endpoint=clientFromString(reactor, spec.endpoint),
                weight=spec.weight,
            )
            for spec in config.backends
        ),
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
        sniff_timeout=config.sniff_timeout,
        connect_timeout=config.connect_timeout,
        idle_timeout=config.idle_timeout,
        fin_timeout=config.fin_timeout,
        session_key=re.compile(config.session_key.encode()) if config.session_key else None,
        retries=config.retries,
        counters=counters,
        proxy_version=config.proxy_protocol,
        registry=registry,
        refusals=refusals,
        busy_message=config.busy_message,
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
    policies: list[IAddressPolicy] = []
    if config.max_per_ip:
        policies.append(AddressCap(config.max_per_ip))
    if config.rate_per_ip:
        policies.append(AddressRate(config.rate_per_ip, config.rate_burst))
    gate = AddressGate(
        factory,
        AddressLimits(policies) if policies else None,
        clock=reactor,
        refusals=refusals,
        responder=responder,
    )
    top = GatewayService(config, pool, factory, counters, cap_state)
    if config.demo:
        DemoBackends(pool, reactor, DEMO_BACKENDS).setServiceParent(top)
    if config.health_interval:
        # After the demo backends, so that its first round sees them.
        preamble = b""
        if config.proxy_protocol != "off":
            # A backend that expects a PROXY header gets one from the probes
            # too (without addresses: LOCAL in v2, UNKNOWN in v1).
            nobody = UNIXAddress(None)
            preamble = proxy_header(config.proxy_protocol, nobody, nobody)
        HealthChecker(
            pool,
            reactor,
            interval=config.health_interval,
            fall=PASSIVE_FALL,
            default_check=HealthCheck(send=config.health_send, expect=config.health_expect),
            preamble=preamble,
        ).setServiceParent(top)
    for description in config.listen:
        inner: Factory = gate
        refusal: Factory | None = None
        endpoint_text = description
        if description.startswith(HAPROXY_PREFIX):
            # Our own PROXY header reader (see gateway.proxyheader) instead
            # of Twisted's haproxy: endpoint wrapper; refusals at the total
            # cap read the header too, to answer and log the real client.
            endpoint_text = description[len(HAPROXY_PREFIX) :]
            inner = ProxyHeaderFactory(
                gate, clock=reactor, timeout=config.header_timeout, refusals=refusals
            )
            refusal = ProxyHeaderFactory(
                RefusalFactory(responder, Refusal.TOTAL_CAP, refusals),
                clock=reactor,
                timeout=config.header_timeout,
                refusals=refusals,
            )
        listener = FrontListener(
            description,
            serverFromString(reactor, endpoint_text),
            CapFactory(cap_state, inner, refusal),
            cap_state,
        )
        top.listeners.append(listener)
        listener.setServiceParent(top)
    if config.admin is not None:
        state = AdminState(pool, registry, counters, clock=reactor, token=config.admin_token)
        admin = FrontListener(
            config.admin,
            serverFromString(reactor, config.admin),
            make_admin_site(state, reactor),
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
    if config.access_log is not None:
        AccessLogFile(config.access_log).setServiceParent(top)
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
