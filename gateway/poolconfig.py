"""
Named pools and HTTP routes, as written and as checked: the C{[pool.NAME]}
tables and C{[[route]]} tables of the configuration file.

L{gateway.configfile} reads them into L{RawPool}s and L{RawRoute}s (values
as text, the way the rest of the file's settings are given), and
L{gateway.settings.build_config} checks them here into L{PoolSpec}s and
L{RouteSpec}s, after the backends (a pool needs backends; a route names a
pool that exists).  Each check raises L{ConfigError} naming the file, the
table and the key.

Pools and routes exist only in the file: the command line's backends are
the game pool's, and its top-level settings the game pool's settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.checks import (
    ConfigError,
    check_choice,
    check_count,
    check_directory,
    check_escaped,
    check_line,
    check_rate,
    check_seconds,
    check_session_key,
)
from gateway.config import (
    BALANCE_CHOICES,
    DEFAULT_MAX_BODY,
    DEFAULT_ROUTE_TIMEOUT,
    GAME_POOL,
    PROXY_CHOICES,
    BackendSpec,
    PoolSpec,
    RouteSpec,
)
from gateway.http.routes import segments
from gateway.pool.httpcheck import valid_host, valid_path

__all__ = [
    "MAX_ROUTE_BODY",
    "POOL_KEYS",
    "ROUTE_KEYS",
    "RawPool",
    "RawRoute",
    "check_pools",
    "check_routes",
    "host_pattern",
]

POOL_KEYS = (
    "balance",
    "session-key",
    "health-interval",
    "health-send",
    "health-expect",
    "health-path",
    "health-status",
    "health-host",
    "proxy-protocol",
    "connect-timeout",
    "retries",
)
"""The keys of a C{[pool.NAME]} table."""

GAME_POOL_KEYS = tuple(
    key
    for key in POOL_KEYS
    if not key.startswith("health-") or key in ("health-interval", "health-send", "health-expect")
)
"""The keys of C{[pool.game]}: the top-level settings it may give instead."""

ROUTE_KEYS = (
    "name",
    "host",
    "path",
    "root",
    "pool",
    "bridge",
    "listing",
    "strip-prefix",
    "max-body",
    "timeout",
    "rate-per-ip",
    "rate-burst",
)
"""The keys of a C{[[route]]} table."""

_ACTIONS = ("root", "pool", "bridge")

MAX_ROUTE_BODY = 1024 * 1024 * 1024
"""The largest C{max-body} a route may take (1 GiB: a body is held whole
before it is forwarded)."""

_POOL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True, slots=True)
class RawPool:
    """
    A C{[pool.NAME]} table as written: its keys' values as text.

    @ivar label: how messages name it, e.g. C{gateway.toml: pool.api}.
    """

    label: str
    name: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RawRoute:
    """
    A C{[[route]]} table as written: text, or a bool for C{listing} and
    C{strip-prefix}.

    @ivar label: how messages name it, e.g. C{gateway.toml: route[2]}.
    """

    label: str
    values: dict[str, Any] = field(default_factory=dict)


def check_pools(
    raw_pools: list[RawPool], backends: tuple[BackendSpec, ...], backend_label: str
) -> tuple[PoolSpec, ...]:
    """
    Check the named pools: a name of lower-case letters, digits, C{-} and
    C{_}; each with at least one backend; every backend's pool a pool that
    exists.

    @param backend_label: how messages name the backends' setting.
    """
    pools = []
    names = {raw.name for raw in raw_pools}
    for raw in raw_pools:
        pools.append(_pool(raw))
        if not any(spec.pool == raw.name for spec in backends):
            raise ConfigError(
                f"{raw.label}: has no backend (give one a [[backend]] with pool = {raw.name!r})"
            )
    http_pools = {pool.name for pool in pools if pool.health_path is not None}
    for spec in backends:
        if spec.pool != GAME_POOL and spec.pool not in names:
            raise ConfigError(
                f"{backend_label}: backend {spec.name!r}: pool {spec.pool!r} has no "
                f"[pool.{spec.pool}] table"
            )
        if spec.pool in http_pools and (spec.health_send or spec.health_expect):
            raise ConfigError(
                f"{backend_label}: backend {spec.name!r}: health-send/health-expect in pool "
                f"{spec.pool!r}, whose health checks are HTTP (health-path)"
            )
    return tuple(pools)


def _pool(raw: RawPool) -> PoolSpec:
    """
    One named pool's settings, the built-in defaults for what it omits.
    """
    label, values = raw.label, raw.values
    if raw.name == GAME_POOL or not _POOL_NAME.fullmatch(raw.name):
        raise ConfigError(
            f"{label}: a pool's name is lower-case letters, digits, '-' and '_' "
            f"(up to 64), and not {GAME_POOL!r} here, got {raw.name!r}"
        )
    defaults = PoolSpec(name=raw.name)
    balance = check_choice(
        f"{label}.balance", values.get("balance", "roundrobin"), BALANCE_CHOICES
    )
    session_key = values.get("session-key")
    if session_key is not None:
        session_key = check_session_key(f"{label}.session-key", session_key)
        if balance != "hash":
            raise ConfigError(f'{label}.session-key: needs balance = "hash"')
    path = values.get("health-path")
    if path is not None and not valid_path(path.encode("utf-8")):
        raise ConfigError(f"{label}.health-path: not a request path (e.g. /healthz), got {path!r}")
    status = None
    if "health-status" in values:
        if path is None:
            raise ConfigError(f"{label}.health-status: needs health-path (an HTTP check)")
        status = check_count(f"{label}.health-status", values["health-status"])
        if not 100 <= status <= 599:
            raise ConfigError(
                f"{label}.health-status: an HTTP status (100 to 599), "
                f"got {values['health-status']!r}"
            )
    host = values.get("health-host")
    if host is not None:
        if path is None:
            raise ConfigError(f"{label}.health-host: needs health-path (an HTTP check)")
        if not valid_host(host.encode("utf-8")):
            raise ConfigError(
                f"{label}.health-host: not a Host field value (e.g. api.example.com or "
                f"api.example.com:8080), got {host!r}"
            )
    if path is not None and ("health-send" in values or "health-expect" in values):
        raise ConfigError(f"{label}.health-path: give it or health-send/health-expect, not both")

    def seconds(key: str, default: float, allow_zero: bool) -> float:
        text = values.get(key)
        return (
            default
            if text is None
            else check_seconds(f"{label}.{key}", text, allow_zero=allow_zero)
        )

    return PoolSpec(
        name=raw.name,
        balance=balance,
        session_key=session_key,
        health_interval=seconds("health-interval", defaults.health_interval, True),
        health_send=check_escaped(f"{label}.health-send", values.get("health-send", "")),
        health_expect=check_escaped(f"{label}.health-expect", values.get("health-expect", "")),
        health_path=path,
        health_status=status,
        health_host=host,
        proxy_protocol=check_choice(
            f"{label}.proxy-protocol", values.get("proxy-protocol", "off"), PROXY_CHOICES
        ),
        connect_timeout=seconds("connect-timeout", defaults.connect_timeout, False),
        retries=check_count(f"{label}.retries", values.get("retries", str(defaults.retries))),
    )


def host_pattern(label: str, text: str) -> str:
    """
    A route's host: a host name (lower case, no port), or C{*.} and a
    host name for every name under it.
    """
    host = text.lower()
    if not _HOST.fullmatch(host) or len(host) > 253:
        raise ConfigError(
            f"{label}: not a host name or *.suffix pattern (e.g. api.example.com, "
            f"*.example.com; no port), got {text!r}"
        )
    return host


def _route_path(label: str, text: str) -> str:
    if segments(text.encode()) is None:
        raise ConfigError(f"{label}: a path with . or .. segments, got {text!r}")
    if (
        not text.startswith("/")
        or any(char in text for char in "?# ")
        or check_line(label, text, limit=1024) != text
    ):
        raise ConfigError(
            f"{label}: not a path prefix (it starts with '/', without a query, e.g. /api), "
            f"got {text!r}"
        )
    return text


def check_routes(
    raw_routes: list[RawRoute],
    pools: tuple[PoolSpec, ...],
    game: PoolSpec,
    *,
    backends: tuple[BackendSpec, ...] = (),
    websocket: tuple[str, ...] = (),
    websocket_label: str = "--websocket",
) -> tuple[RouteSpec, ...]:
    """
    Check the routes: exactly one action each, a pool or bridge that names
    a pool, a folder that exists; no host and path twice, nor a host-less
    route on a C{--websocket} path (the bridge would hide it); no backend
    sending PROXY headers behind an HTTP route.
    """
    known = {game.name: game, **{pool.name: pool for pool in pools}}
    routes: list[RouteSpec] = []
    for raw in raw_routes:
        route = _route(raw, known)
        if route.host is None and route.path in websocket:
            raise ConfigError(
                f"{raw.label}: path {route.path} is also a {websocket_label} path, whose bridge "
                f'would take its requests; give the route bridge = "{GAME_POOL}" instead, '
                "or another path"
            )
        for backend in backends:
            if route.pool == backend.pool and backend.proxy_protocol not in (None, "off"):
                raise ConfigError(
                    f"{raw.label}.pool: backend {backend.name!r} of pool {backend.pool!r} "
                    "sends a PROXY header, which an HTTP route cannot (its connections are "
                    "shared by many clients)"
                )
        for other in routes:
            if (other.host, other.path) == (route.host, route.path):
                raise ConfigError(
                    f"{raw.label}: the same host ({route.host or 'any'}) and path "
                    f"({route.path}) as route {other.name!r}"
                )
            if other.name == route.name:
                raise ConfigError(f"{raw.label}: the name {route.name!r} is given twice")
        routes.append(route)
    return tuple(routes)


def _route(raw: RawRoute, pools: dict[str, PoolSpec]) -> RouteSpec:
    """
    One route, checked.
    """
    label, values = raw.label, raw.values
    actions = [key for key in _ACTIONS if key in values]
    if len(actions) != 1:
        given = " and ".join(actions) if actions else "none"
        raise ConfigError(
            f'{label}: needs exactly one action: root = "DIR", pool = "NAME" (HTTP proxy) '
            f'or bridge = "NAME" (WebSocket bridge); got {given}'
        )
    action = actions[0]
    only = {"listing": "root", "strip-prefix": "pool", "max-body": "pool", "timeout": "pool"}
    for key, needs in only.items():
        if key in values and action != needs:
            raise ConfigError(f"{label}.{key}: only for a route with {needs} =")
    host = None if "host" not in values else host_pattern(f"{label}.host", values["host"])
    path = _route_path(f"{label}.path", values.get("path", "/"))
    root = pool = bridge = None
    if action == "root":
        root = check_directory(f"{label}.root", values["root"])
    else:
        target = values[action]
        if target not in pools:
            raise ConfigError(
                f"{label}.{action}: no pool {target!r} (pools: {', '.join(sorted(pools))})"
            )
        if action == "pool" and pools[target].proxy_protocol != "off":
            raise ConfigError(
                f"{label}.pool: pool {target!r} sends a PROXY header, which an HTTP route "
                "cannot (its connections are shared by many clients); the backends get "
                "X-Forwarded-For instead"
            )
        pool, bridge = (target, None) if action == "pool" else (None, target)
    name = values.get("name")
    name = f"{host or ''}{path}" if name is None else check_line(f"{label}.name", name)
    if not name:
        raise ConfigError(f"{label}.name: must not be empty")
    max_body = DEFAULT_MAX_BODY
    if "max-body" in values:
        max_body = check_count(f"{label}.max-body", values["max-body"])
        if max_body > MAX_ROUTE_BODY:
            raise ConfigError(f"{label}.max-body: at most {MAX_ROUTE_BODY} bytes, got {max_body}")
    timeout = DEFAULT_ROUTE_TIMEOUT
    if "timeout" in values:
        timeout = check_seconds(f"{label}.timeout", values["timeout"], allow_zero=False)
    rate = check_rate(f"{label}.rate-per-ip", values.get("rate-per-ip", "0"))
    burst = None
    if "rate-burst" in values:
        if not rate:
            raise ConfigError(f"{label}.rate-burst: needs rate-per-ip")
        burst = check_rate(f"{label}.rate-burst", values["rate-burst"], minimum=1)
    return RouteSpec(
        name=name,
        path=path,
        host=host,
        root=root,
        pool=pool,
        bridge=bridge,
        listing=bool(values.get("listing", False)),
        strip_prefix=bool(values.get("strip-prefix", False)),
        max_body=max_body,
        timeout=timeout,
        rate_per_ip=rate,
        rate_burst=burst,
    )
