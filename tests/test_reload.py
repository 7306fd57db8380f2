"""
Reloading the configuration (SIGHUP) on a gateway built in memory: what
changes, what stays, and a bad configuration changing nothing.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent

from gateway.config import BackendSpec, ConfigError, GatewayConfig, PoolSpec, RouteSpec
from gateway.front.limits import AddressCap, AddressRate, Refusal
from gateway.pool.backends import BackendState
from gateway.process.assemble import make_service
from gateway.process.service import GatewayService

A = BackendSpec(name="a", endpoint="tcp:127.0.0.1:7001")
B = BackendSpec(name="b", endpoint="tcp:127.0.0.1:7002")
C = BackendSpec(name="c", endpoint="tcp:127.0.0.1:7003", weight=3)

BASE = GatewayConfig(
    listen=("tcp:0:interface=127.0.0.1",),
    backends=(A, B),
    admin=None,
    max_per_ip=5,
    config_file="/etc/gateway/gateway.toml",
)


class Source:
    """
    What a rebuild returns: a config, or an error (as a bad file would give).
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.next: GatewayConfig | ConfigError = config

    def __call__(self) -> GatewayConfig:
        if isinstance(self.next, ConfigError):
            raise self.next
        return self.next


def gateway(config: GatewayConfig = BASE) -> tuple[GatewayService, Source, MemoryReactorClock]:
    """
    A gateway built from C{config} on a memory reactor, not started.
    """
    reactor = MemoryReactorClock()
    source = Source(config)
    return make_service(config, reactor, rebuild=source), source, reactor


def lines(events: EventLoggingObserver) -> list[str]:
    """
    The formatted log.
    """
    return [formatEvent(e) for e in events]


def test_backends_added_and_removed(log_events: EventLoggingObserver) -> None:
    """
    A backend new in the configuration enters the pool up; one no longer in
    it drains (no new sessions) and leaves the pool once its sessions are
    gone; the reload is logged with what changed.
    """
    service, source, reactor = gateway()
    a = service.pool.get("a")
    assert a is not None
    a.active = 2  # two live sessions on a
    source.next = dataclasses.replace(BASE, backends=(B, C))
    assert service.reload()
    assert [b.name for b in service.pool.backends] == ["a", "b", "c"]
    assert a.state is BackendState.DRAINING
    c = service.pool.get("c")
    assert c is not None and c.state is BackendState.UP and c.weight == 3
    assert all(service.pool.choose() is not a for _ in range(10))
    reactor.advance(5)
    assert a in service.pool.backends  # still has sessions
    a.active = 0
    reactor.advance(1)
    assert [b.name for b in service.pool.backends] == ["b", "c"]
    text = lines(log_events)
    assert (
        "reloaded /etc/gateway/gateway.toml: backend c added; backend a removed: draining" in text
    )
    assert "backend a left the pool (removed from the configuration, no sessions left)" in text


def test_removed_backend_comes_back_before_leaving() -> None:
    """
    A backend removed, then named again by a second reload while it still
    drains, is back up and stays in the pool.
    """
    service, source, reactor = gateway()
    a = service.pool.get("a")
    assert a is not None
    a.active = 1
    source.next = dataclasses.replace(BASE, backends=(B,))
    service.reload()
    assert a.state is BackendState.DRAINING
    source.next = BASE
    service.reload()
    assert service.pool.get("a") is a
    assert a.state.value == "up"
    a.active = 0
    reactor.advance(5)
    assert a in service.pool.backends


def test_changed_backend_endpoint_and_weight() -> None:
    """
    A backend that keeps its name but changes endpoint or weight is changed
    in place (its live sessions keep their connections).
    """
    service, source, _ = gateway()
    moved = dataclasses.replace(A, endpoint="tcp:127.0.0.1:9001", weight=4)
    source.next = dataclasses.replace(BASE, backends=(moved, B))
    service.reload()
    a = service.pool.get("a")
    assert a is not None
    assert (a.description, a.weight, a.state) == ("tcp:127.0.0.1:9001", 4, BackendState.UP)
    # The TCP fast path connects to the new address too.
    assert a.address == (socket.AF_INET, ("127.0.0.1", 9001))
    source.next = dataclasses.replace(
        BASE, backends=(dataclasses.replace(A, endpoint="tcp:localhost:9002"), B)
    )
    service.reload()
    assert a.address is None  # a host name: the endpoint resolves it


def test_limits_and_timeouts_apply_to_what_comes_next() -> None:
    """
    Changed limits and timeouts reach the parts that use them; the per-address
    cap keeps its live counts (its connections release into it).
    """
    service, source, _ = gateway()
    parts = service.reloader.parts
    assert parts is not None and parts.gates[0].limits is not None
    [cap] = parts.gates[0].limits.policies
    assert isinstance(cap, AddressCap)
    cap.acquire("192.0.2.1", 0.0)
    source.next = dataclasses.replace(
        BASE,
        max_per_ip=9,
        rate_per_ip=2.0,
        max_connections=50,
        overflow="queue",
        sniff_timeout=0.5,
        idle_timeout=60.0,
        header_timeout=3.0,
        busy_message="later",
        balance="leastconn",
    )
    service.reload()
    assert parts.gates[0].limits is not None
    kept, rate = parts.gates[0].limits.policies
    assert kept is cap and cap.limit == 9
    # The connection counted before the reload still counts: 8 more fill it.
    for _ in range(8):
        cap.acquire("192.0.2.1", 0.0)
    assert not cap.allows("192.0.2.1", 0.0)
    assert isinstance(rate, AddressRate) and rate.rate == 2.0
    assert (parts.cap_state.cap.limit, parts.cap_state.queue_mode) == (50, True)
    settings = parts.factory.settings
    assert (settings.sniff_timeout, settings.idle_timeout) == (0.5, 60.0)
    assert parts.site.header_timeout == 3.0
    assert parts.responder.busy_message == "later"
    assert type(service.pool.balancer).__name__ == "LeastConnections"
    assert service.config.max_per_ip == 9


def test_bad_configuration_changes_nothing(log_events: EventLoggingObserver) -> None:
    """
    A reload whose configuration is invalid is refused with the error in the
    log, and everything stays as it was.
    """
    service, source, _ = gateway()
    source.next = ConfigError("/etc/gateway/gateway.toml: max-per-ip: must not be negative")
    assert not service.reload()
    assert service.config == BASE
    assert [b.name for b in service.pool.backends] == ["a", "b"]
    assert (
        "reload refused, the running configuration stays: "
        "/etc/gateway/gateway.toml: max-per-ip: must not be negative"
    ) in lines(log_events)


def test_restart_only_settings_are_kept(log_events: EventLoggingObserver) -> None:
    """
    A changed listen or admin endpoint needs new sockets: the reload keeps
    the running ones, says so, and applies the rest.
    """
    service, source, _ = gateway()
    source.next = dataclasses.replace(BASE, listen=("tcp:9999",), max_per_ip=7)
    service.reload()
    assert service.config.listen == BASE.listen
    assert service.config.max_per_ip == 7
    assert any(
        "listen changed, which needs a restart: kept as it was" in line
        for line in lines(log_events)
    )


def test_reload_while_draining_is_ignored(log_events: EventLoggingObserver) -> None:
    """
    Once a drain has begun, a reload does nothing.
    """
    service, source, _ = gateway()
    service.stopService()
    source.next = dataclasses.replace(BASE, max_per_ip=1)
    assert not service.reload()
    assert service.config.max_per_ip == 5


def test_http_root_change_serves_the_new_folder(tmp_path: Path) -> None:
    """
    A new http-root is served from the next request on.
    """
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    service, source, _ = gateway(dataclasses.replace(BASE, http_root=str(first)))
    source.next = dataclasses.replace(BASE, http_root=str(second))
    service.reload()
    parts = service.reloader.parts
    assert parts is not None
    assert parts.site.resource.path == str(second)


def test_proxy_protocol_of_a_backend_changes() -> None:
    """
    A backend's own PROXY setting changed in the file applies to its next
    sessions.
    """
    service, source, _ = gateway()
    source.next = dataclasses.replace(
        BASE, backends=(dataclasses.replace(A, proxy_protocol="v2"), B)
    )
    service.reload()
    a = service.pool.get("a")
    assert a is not None and a.proxy_protocol == "v2"


def test_demo_backends_survive_a_reload() -> None:
    """
    Under --demo, the built-in game servers are not in the file; a reload
    keeps them in rotation instead of draining them.
    """
    demo = dataclasses.replace(BASE, backends=(), demo=True)
    service, source, reactor = gateway(demo)
    service.startService()
    try:
        assert {b.name for b in service.pool.backends} == {"demo-a", "demo-b"}
        source.next = dataclasses.replace(demo, max_per_ip=3)
        service.reload()
        assert all(b.state is BackendState.UP for b in service.pool.backends)
        assert len(service.pool.backends) == 2
    finally:
        service.stopService()
        reactor.advance(10)


def test_stopping_logs_the_refusal_summary_still_due(log_events: EventLoggingObserver) -> None:
    """
    A gateway that stops before its refusal window ends still logs the
    summary of the refusals it did not log one by one (they are not lost
    from the log with the process).
    """
    service, _, reactor = gateway()
    refusals = service.refusals
    assert refusals is not None
    for number in range(refusals.burst + 4):
        refusals.refused(Refusal.ADDRESS_CAP, f"192.0.2.{number}:4000")
    assert not any("without logging each" in line for line in lines(log_events))
    service.stopService()
    reactor.advance(1)
    summaries = [line for line in lines(log_events) if "without logging each" in line]
    assert summaries == [summaries[0]] and "refused 4 more connections" in summaries[0]


def test_admin_host_names_are_normalised_on_reload() -> None:
    """
    Admin host names given by a reload are compared without case, as at
    start (the reload goes through the admin state's own method).
    """
    config = dataclasses.replace(BASE, admin="tcp:0:interface=127.0.0.1")
    service, source, _ = gateway(config)
    source.next = dataclasses.replace(config, admin_hosts=("Games.Example.COM",))
    assert service.reload()
    state = service.reloader.parts.admin_state
    assert state is not None and state.hosts == ("games.example.com",)


def test_pools_and_routes_reloaded(log_events: EventLoggingObserver) -> None:
    """
    A reload adds a pool (with its health checks) and a route, says which
    pool settings changed, moves a backend between pools, and a removed
    pool leaves once its last backend has; the route's proxy is kept (and
    reconfigured) while the route stays.
    """
    api = PoolSpec(name="api", health_interval=0.0)
    d = BackendSpec(name="d", endpoint="tcp:127.0.0.1:7004", pool="api")
    route = RouteSpec(name="api", path="/api", pool="api")
    service, source, reactor = gateway()
    with_api = dataclasses.replace(BASE, pools=(api,), backends=(A, B, d), routes=(route,))
    source.next = with_api
    assert service.reload()
    assert [p.name for p in service.pools.pools] == ["game", "api"]
    proxy = service.reloader.parts.site.routes.routes[0][1].resource
    health = service.reloader.parts.health
    assert health is not None and "api" not in health.checkers
    checked = dataclasses.replace(api, health_interval=2.0, health_path="/h", retries=0)
    source.next = dataclasses.replace(with_api, pools=(checked,), routes=(route,))
    assert service.reload()
    assert "api" in health.checkers
    assert service.reloader.parts.site.routes.routes[0][1].resource is proxy
    text = "\n".join(lines(log_events))
    assert "pool api health-interval 0.0 -> 2.0" in text
    assert "pool api health-path None -> '/h'" in text
    assert "pool api retries 2 -> 0" in text
    moved = dataclasses.replace(B, pool="api")
    source.next = dataclasses.replace(with_api, pools=(checked,), backends=(A, moved, d))
    assert service.reload()
    assert [b.name for b in service.pools.pool("api").backends] == ["d", "b"]  # type: ignore[union-attr]
    d_backend = service.pools.get("d")
    assert d_backend is not None
    d_backend.active = 1
    source.next = BASE
    assert service.reload()
    assert "pool api removed: its backends drain" in "\n".join(lines(log_events))
    assert "api" not in health.checkers
    reactor.advance(2)
    assert service.pools.pool("api") is not None  # d still has a session
    d_backend.active = 0
    reactor.advance(2)
    assert service.pools.pool("api") is None
    assert [b.name for b in service.pools.backends] == ["a", "b"]


def test_a_backends_own_check_changed_is_said(log_events: EventLoggingObserver) -> None:
    """
    A reload that changes only a backend's own health check says so (it
    used to say "nothing changed" though the change applied).
    """
    service, source, _ = gateway()
    source.next = dataclasses.replace(
        BASE, backends=(dataclasses.replace(A, health_expect=b"PONG"), B)
    )
    assert service.reload()
    text = "\n".join(lines(log_events))
    assert 'backend a health-expect None -> "PONG"' in text
    assert "nothing changed" not in text


def test_a_removed_pool_dismisses_its_waiting_players() -> None:
    """
    Players waiting for a seat in a pool that a reload removes are told at
    once (refused no-backend, with the detail why): no seat can come.  A
    reload that keeps the pool keeps them waiting, in their place.
    """
    api = PoolSpec(name="api", health_interval=0.0)
    d = BackendSpec(name="d", endpoint="tcp:127.0.0.1:7004", pool="api", max_sessions=1)
    with_api = dataclasses.replace(
        BASE, pools=(api,), backends=(A, B, d), queue_size=5, queue_message="{position}"
    )
    service, source, _reactor = gateway(with_api)
    pool = service.pools.pool("api")
    assert pool is not None and pool.room.open
    d_backend = service.pools.get("d")
    assert d_backend is not None
    d_backend.active = 1

    class Waiter:
        key = None
        told: list[str] = []
        dismissed: list[str] = []

        def admit(self, backend: object) -> None:
            raise AssertionError("no seat frees")

        def tell(self, text: str) -> None:
            self.told.append(text)

        def expire(self) -> None:
            raise AssertionError("not timed out")

        def dismiss(self, detail: str) -> None:
            self.dismissed.append(detail)

    waiter = Waiter()
    assert pool.room.enter(waiter, pool.room.standing(None, b"")) is not None
    source.next = dataclasses.replace(with_api, queue_size=3)
    assert service.reload()
    assert len(pool.room) == 1 and waiter.dismissed == []
    source.next = dataclasses.replace(BASE, queue_size=3)
    assert service.reload()
    assert len(pool.room) == 0
    assert waiter.dismissed == ["pool api was removed from the configuration"]
