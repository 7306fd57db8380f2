"""
What C{--check-config} prints for a valid configuration: L{summary}, one
line naming the fronts, the backends (by pool), the routes the file's tables
became, the waiting room and its classes, the admin endpoint and the
cluster (its password masked), so an operator sees what was understood.
"""

from __future__ import annotations

from gateway.clusterconfig import password_file_warning
from gateway.config import GAME_POOL, GatewayConfig, PoolSpec, QueueClassSpec, RouteSpec

__all__ = ["summary"]


def summary(config: GatewayConfig) -> str:
    """
    What C{--check-config} prints for a valid configuration: the fronts,
    the backends (by pool, when there are named pools), the routes it
    understood, the waiting room and the admin endpoint.
    """
    source = config.config_file or "the command line"

    def listed(pool: str) -> str:
        return ", ".join(
            f"{b.name} ({b.endpoint}, weight {b.weight})" if b.name != b.endpoint else b.name
            for b in config.backends
            if b.pool == pool
        )

    game = listed(GAME_POOL) or ("(demo)" if config.demo else "none")
    backends = f"backends {game}; "
    for pool in config.pools:
        backends += f"pool {pool.name} ({_pool_summary(pool)}): {listed(pool.name)}; "
    routes = ""
    if config.routes:
        routes = "routes " + ", ".join(_route_summary(route) for route in config.routes) + "; "
    return (
        f"gateway: {source}: the configuration is valid: "
        f"fronts {', '.join(config.listen)}; "
        + backends
        + routes
        + (f"websocket {', '.join(config.websocket)}; " if config.websocket else "")
        + _queue_summary(config)
        + f"admin {config.admin or 'none'}"
        + _cluster_summary(config)
    )


def _cluster_summary(config: GatewayConfig) -> str:
    """
    The cluster as C{--check-config} lists it, its password masked (empty
    without a cluster).
    """
    spec = config.cluster
    if spec is None:
        return ""
    cap = config.cluster_max_sessions or "none"
    password = ""
    if config.cluster_password_file is not None:
        password = f", password from {config.cluster_password_file}"
        warning = password_file_warning(config.cluster_password_file)
        password += f" (warning: {warning})" if warning else ""
    return (
        f"; cluster {spec.shown()} (name {spec.name}, node {spec.node}, "
        f"ttl {config.cluster_ttl:g} s, timeout {config.cluster_timeout:g} s, "
        f"affinity-ttl {config.affinity_ttl:g} s, max-sessions {cap}, "
        f"required {'yes' if config.cluster_required else 'no'}{password})"
    )


def _pool_summary(pool: PoolSpec) -> str:
    """
    A named pool's settings as C{--check-config} lists them.
    """
    if not pool.health_interval:
        health = "no health checks"
    elif pool.health_path is not None:
        expected = pool.health_status or "2xx/3xx"
        health = f"health GET {pool.health_path} -> {expected} every {pool.health_interval:g} s"
    else:
        health = f"health every {pool.health_interval:g} s"
    return (
        f"{pool.balance}, {health}, connect-timeout {pool.connect_timeout:g} s, "
        f"retries {pool.retries}"
    )


def _route_summary(route: RouteSpec) -> str:
    """
    One route as C{--check-config} lists it: C{[NAME: ]HOST PATH -> ACTION
    (OPTIONS)}, its name only when it has one of its own.
    """
    where = f"{route.host or '*'} {route.path}"
    named = "" if route.name == f"{route.host or ''}{route.path}" else f"{route.name}: "
    options = []
    if route.root is not None:
        action = f"files in {route.root}"
        options += ["listing"] if route.listing else []
    elif route.pool is not None:
        action = f"HTTP proxy to pool {route.pool}"
        options += ["prefix stripped"] if route.strip_prefix else []
        options += [f"max-body {route.max_body}", f"timeout {route.timeout:g} s"]
    else:
        action = f"WebSocket bridge to pool {route.bridge}"
    if route.rate_per_ip:
        options.append(f"rate-per-ip {route.rate_per_ip:g}")
    return f"{named}{where} -> {action}" + (f" ({', '.join(options)})" if options else "")


def _queue_summary(config: GatewayConfig) -> str:
    """
    The waiting room as C{--check-config} lists it (empty without one).
    """
    if not config.queue_size:
        return ""
    message = (
        "silent" if config.queue_message is None else f"message {_quoted(config.queue_message)}"
    )
    classes = "".join(f", class {_class_summary(spec)}" for spec in config.queue_classes)
    return (
        f"waiting room {config.queue_size} per pool (timeout {config.queue_timeout:g} s, "
        f"update every {config.queue_update:g} s, {message}{classes}); "
    )


def _class_summary(spec: QueueClassSpec) -> str:
    """
    One queue class as C{--check-config} lists it.
    """
    parts = [f"priority {spec.priority}"]
    if spec.reserved:
        parts.append(f"reserved {spec.reserved}")
    if spec.networks:
        parts.append("from " + " ".join(str(net) for net in spec.networks))
    if spec.first_line is not None:
        parts.append(f"first-line {_quoted(spec.first_line.pattern.decode())}")
    return f"{spec.name} ({', '.join(parts)})"


def _quoted(text: str) -> str:
    """
    C{text} in single quotes as written (a pattern's backslashes not
    doubled), or its repr if it has what a terminal would not show.
    """
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)
