"""
Raw settings in, a validated L{GatewayConfig} out: L{build_config}.

The command line (L{gateway.options}) and the TOML file (L{gateway.configfile})
give their settings as text, as they were written, each with the label its
messages use (C{--max-connections}, or C{gateway.toml: max-connections}), and
the command line's winning over the file's (L{gateway.sources}): a
L{Settings}, with its backends as L{RawBackend}s (checked by
L{gateway.backendconfig}).  L{build_config} checks them one area at a time
(fronts, backends, rate limit, admin endpoint, processes, access log, balancing, HTTP
root, timeouts, caps, pool, drain, relay, health bytes), always in that order,
so that of several bad settings the same one is reported first; each check
raises L{ConfigError} naming the setting.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from typing import Any

from twisted.internet.interfaces import IReactorCore

from gateway.backendconfig import MAX_WEIGHT, RawBackend, check_backends, with_session_limits
from gateway.checks import (
    ConfigError,
    check_choice,
    check_count,
    check_directory,
    check_escaped,
    check_line,
    check_pattern,
    check_rate,
    check_seconds,
    check_server_endpoint,
    check_session_key,
    check_token,
    check_writable_file,
    read_token_file,
)
from gateway.clusterconfig import with_cluster
from gateway.config import (
    BALANCE_CHOICES,
    DEFAULT_LISTEN,
    DEMO_LISTEN,
    LOG_FORMATS,
    OVERFLOW_CHOICES,
    PROXY_CHOICES,
    RELAY_CHOICES,
    GatewayConfig,
)
from gateway.ownership import TokenFiles
from gateway.poolconfig import RawPool, RawRoute, check_pools, check_routes
from gateway.queueconfig import RawQueueClass, with_queue
from gateway.wssettings import websocket_settings

__all__ = [
    "MAX_WEIGHT",
    "MAX_WORKERS",
    "WORKER_FRONTS",
    "RawBackend",
    "Settings",
    "build_config",
]

MAX_WORKERS = 64
"""The most worker processes C{--workers} allows."""

WORKER_FRONTS = ("tcp", "tcp6", "unix", "tls", "systemd")
"""Front types whose connections can be handed to a worker process: plain
sockets (TLS is done by the worker; C{ssl:} wraps sockets another way)."""


class Settings:
    """
    Raw settings from their sources, the command line winning over a file:
    what L{build_config} checks.

    @ivar values: option name (C{max-connections}) to value: text as the
        command line gives it, a bool for flags, a list of strings for
        C{listen}.
    @ivar labels: how error messages name each setting that was given
        (C{--max-connections}, or C{gateway.toml: max-connections}).
    @ivar backends: the backends, in order.
    @ivar defaults: the value of each setting that was not given.
    @ivar pools: the file's named pools.
    @ivar routes: the file's routes.
    @ivar queue_classes: the file's C{[[queue-class]]} tables.
    """

    def __init__(
        self,
        values: dict[str, Any],
        labels: dict[str, str],
        backends: list[RawBackend],
        defaults: dict[str, Any],
        *,
        pools: list[RawPool] | None = None,
        routes: list[RawRoute] | None = None,
        queue_classes: list[RawQueueClass] | None = None,
    ) -> None:
        self.values = values
        self.labels = labels
        self.backends = backends
        self.defaults = defaults
        self.pools = pools or []
        self.routes = routes or []
        self.queue_classes = queue_classes or []

    def __getitem__(self, name: str) -> Any:
        """
        The value of the setting C{name}: as given, else its default
        (L{None} for a setting with neither).
        """
        return self.values[name] if name in self.values else self.defaults.get(name)

    def label(self, name: str) -> str:
        """
        How error messages name the setting C{name}.
        """
        return self.labels.get(name, f"--{name}")

    def other(self, name: str, by: str) -> str:
        """
        How a message about the setting C{by} names another setting, C{name}:
        as an option (C{--name}) if C{by} is named as one, else as a file's
        key (C{name}).
        """
        return f"--{name}" if self.label(by).startswith("--") else name


def build_config(
    settings: Settings,
    reactor: IReactorCore,
    *,
    config_file: str | None = None,
    read_folders: bool = True,
    tokens: TokenFiles | None = None,
) -> GatewayConfig:
    """
    Check every setting and build the configuration.

    @param reactor: endpoint strings are parsed for it (never bound).
    @param config_file: the file the settings came from, if any.
    @param read_folders: at start: read C{tls:} PEM folders, check the access log opens.
    @param tokens: reads the admin token file (see L{TokenFiles}).
    @raise ConfigError: a setting is invalid; the message names it.
    """
    s, label = settings, settings.label
    demo = bool(s["demo"])
    listen = _fronts(s, reactor, demo=demo, read_folders=read_folders)
    backends = check_backends(s, reactor, demo=demo or bool(s.routes))
    backends = with_session_limits(s, backends)
    rate_per_ip, rate_burst, busy_message = _rate_limit(s)
    admin, token, hosts = _admin(s, reactor, listen, read_folders=read_folders, tokens=tokens)
    handover, workers = _processes(s, listen)
    access_log, access_log_only = _access_log(s, reloading=not read_folders)
    balance, session_key = _balance(s)
    http_root, http_listing = _http(s)
    sniff, connect, idle, fin, header = _timeouts(s)
    max_connections, max_per_ip, overflow = _caps(s)
    proxy_protocol, health_interval, retries = _pool(s)
    drain_timeout = check_seconds(label("drain-timeout"), s["drain-timeout"], allow_zero=True)
    relay = _relay_mode(label("relay"), s["relay"])
    health_send, health_expect = _health_bytes(s)
    websocket, origins, max_message, ping = websocket_settings(s, demo=demo)
    pools = check_pools(s.pools, backends, label("backend"))
    config = GatewayConfig(
        listen=listen,
        backends=backends,
        http_root=http_root,
        http_listing=http_listing,
        sniff_timeout=sniff,
        connect_timeout=connect,
        idle_timeout=idle,
        fin_timeout=fin,
        header_timeout=header,
        max_connections=max_connections,
        max_per_ip=max_per_ip,
        rate_per_ip=rate_per_ip,
        rate_burst=rate_burst,
        overflow=overflow,
        busy_message=busy_message,
        balance=balance,
        session_key=session_key,
        proxy_protocol=proxy_protocol,
        health_interval=health_interval,
        retries=retries,
        admin=admin,
        admin_token=token,
        admin_hosts=hosts,
        drain_timeout=drain_timeout,
        handover=handover,
        relay=relay,
        workers=workers,
        access_log=access_log,
        access_log_only=access_log_only,
        **_logs(s),
        health_send=health_send,
        health_expect=health_expect,
        demo=demo,
        config_file=config_file,
        websocket=websocket,
        websocket_origins=origins,
        websocket_max_message=max_message,
        websocket_ping=ping,
        pools=pools,
        **_fast_paths(s),
    )
    config = with_queue(s, _with_routes(s, _with_caching(s, config)))
    return with_cluster(s, config, tokens)


def _fast_paths(s: Settings) -> dict[str, Any]:
    """
    Whether the lean HTTP path and the TCP fast path are on (both are, by
    default).
    """
    return {
        "http_fast_path": not s["no-http-fast-path"],
        "tcp_fast_path": not s["no-tcp-fast-path"],
    }


def _http(s: Settings) -> tuple[str | None, bool]:
    """
    The folder of files for HTTP clients (one that exists), and whether
    folders without an index are listed.
    """
    http_root = s["http-root"]
    if http_root is not None:
        http_root = check_directory(s.label("http-root"), http_root)
    return http_root, bool(s["http-listing"])


def _health_bytes(s: Settings) -> tuple[bytes, bytes]:
    """
    The game pool's health check bytes: what a probe sends and must get.
    """
    return (
        check_escaped(s.label("health-send"), s["health-send"] or ""),
        check_escaped(s.label("health-expect"), s["health-expect"] or ""),
    )


def _with_routes(s: Settings, config: GatewayConfig) -> GatewayConfig:
    """
    C{config} with the file's routes, checked against its pools, backends
    and bridge paths.
    """
    routes = check_routes(
        s.routes,
        config.pools,
        config.game_pool,
        backends=config.backends,
        websocket=config.websocket,
        websocket_label=s.other("websocket", "websocket"),
    )
    return dataclasses.replace(config, routes=routes) if routes else config


def _fronts(
    s: Settings, reactor: IReactorCore, *, demo: bool, read_folders: bool
) -> tuple[str, ...]:
    """
    The public fronts: each a server endpoint string that parses, none twice
    (by default L{DEFAULT_LISTEN}, or L{DEMO_LISTEN} with C{demo}).
    """
    listen = list(s["listen"] or [DEMO_LISTEN if demo else DEFAULT_LISTEN])
    for index, description in enumerate(listen):
        check_server_endpoint(s.label("listen"), description, reactor, read_folders=read_folders)
        if description in listen[:index]:
            raise ConfigError(f"{s.label('listen')}: {description!r} is given twice")
    return tuple(listen)


def _rate_limit(s: Settings) -> tuple[float, float | None, str | None]:
    """
    The per-address rate, its burst (only with a rate) and the busy message.

    @return: C{rate_per_ip}, C{rate_burst}, C{busy_message}.
    """
    rate = check_rate(s.label("rate-per-ip"), s["rate-per-ip"])
    burst = None
    if s["rate-burst"] is not None:
        if not rate:
            raise ConfigError(
                f"{s.label('rate-burst')}: needs {s.other('rate-per-ip', 'rate-burst')}"
            )
        burst = check_rate(s.label("rate-burst"), s["rate-burst"], minimum=1)
    busy = s["busy-message"]
    if busy is not None:
        busy = check_line(s.label("busy-message"), busy)
    return rate, burst, busy


def _admin(
    s: Settings,
    reactor: IReactorCore,
    listen: tuple[str, ...],
    *,
    read_folders: bool,
    tokens: TokenFiles | None = None,
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """
    The admin endpoint (C{none}: none; never one of the public fronts), its
    token and the host names it answers for.

    @return: C{admin}, C{admin_token}, C{admin_hosts}.
    """
    admin = s["admin"]
    if admin == "none":
        admin = None
    else:
        check_server_endpoint(s.label("admin"), admin, reactor, read_folders=read_folders)
        if admin in listen:
            raise ConfigError(
                f"{s.label('admin')}: {admin!r} is also a {s.other('listen', 'admin')} front"
            )
    token = _admin_token(s, admin, tokens)
    hosts = s["admin-host"]
    admin_hosts: tuple[str, ...] = ()
    if hosts is not None:
        admin_hosts = tuple(part.strip().lower() for part in hosts.split(",") if part.strip())
        for name in admin_hosts:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", name):
                raise ConfigError(f"{s.label('admin-host')}: not a host name: {name!r}")
    return admin, token, admin_hosts


def _admin_token(s: Settings, admin: str | None, tokens: TokenFiles | None) -> str | None:
    """
    The admin token, given as it is or in a file (not both), and only with
    an admin endpoint.
    """
    token = None
    if s["admin-token"] is not None and s["admin-token-file"] is not None:
        raise ConfigError(
            f"{s.label('admin-token')}: give it or "
            f"{s.other('admin-token-file', 'admin-token')}, not both"
        )
    if s["admin-token"] is not None:
        token = check_token(s.label("admin-token"), s["admin-token"])
    elif s["admin-token-file"] is not None:
        read = read_token_file if tokens is None else tokens.read
        token = read(s.label("admin-token-file"), s["admin-token-file"])
    if token is not None and admin is None:
        raise ConfigError(
            f"{s.label('admin-token')}: needs an {s.other('admin', 'admin-token')} endpoint "
            "(it is 'none')"
        )
    return token


def _processes(s: Settings, listen: tuple[str, ...]) -> tuple[str | None, int]:
    """
    The hand-over socket (an absolute path in a folder that exists, and
    nothing but a socket there) and the worker processes (1 to
    L{MAX_WORKERS}; with more than 1, every front one of L{WORKER_FRONTS}).

    @return: C{handover}, C{workers}.
    """
    handover = s["handover"]
    if handover is not None:
        handover = os.path.abspath(handover)
        if not os.path.isdir(os.path.dirname(handover)):
            raise ConfigError(f"{s.label('handover')}: the folder of {handover!r} does not exist")
        if os.path.exists(handover) and not stat.S_ISSOCK(os.stat(handover).st_mode):
            raise ConfigError(f"{s.label('handover')}: {handover!r} exists and is not a socket")
    workers = check_count(s.label("workers"), s["workers"])
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"{s.label('workers')}: must be 1 to {MAX_WORKERS}, got {workers}")
    if workers > 1:
        for description in listen:
            kind = description.removeprefix("haproxy:").split(":", 1)[0]
            if kind not in WORKER_FRONTS or description.startswith("haproxy:tls:"):
                raise ConfigError(
                    f"{s.label('listen')}: {description!r}: with {s.other('workers', 'listen')} "
                    "a front must be tcp:, tcp6:, unix:, tls:, systemd: or haproxy: over a "
                    "plain one (use tls: instead of ssl:)"
                )
    return handover, workers


def _access_log(s: Settings, *, reloading: bool = False) -> tuple[str | None, bool]:
    """
    The access log file (C{-}: standard output), and whether the access
    events go only there (which needs the file).  At a reload, a file that
    cannot be opened is not a reason to refuse the whole configuration: the
    process may run as a user that cannot (twistd C{-u}), and reopening it
    keeps the open file and says so (L{gateway.ops.access.AccessLogFile}).

    @return: C{access_log}, C{access_log_only}.
    """
    access_log = s["access-log"]
    if access_log is not None:
        access_log = check_writable_file(
            s.label("access-log"), access_log, check_access=not reloading
        )
    access_log_only = bool(s["access-log-only"])
    if access_log_only and access_log is None:
        raise ConfigError(
            f"{s.label('access-log-only')}: needs {s.other('access-log', 'access-log-only')} "
            "(the access events would go nowhere)"
        )
    return access_log, access_log_only


def _logs(s: Settings) -> dict[str, Any]:
    """
    The log settings: the format of the gateway's own log, and whether the
    access log has start events.
    """
    return {
        "log_format": check_choice(s.label("log-format"), s["log-format"], LOG_FORMATS),
        "access_log_starts": bool(s["access-log-starts"]),
    }


def _balance(s: Settings) -> tuple[str, str | None]:
    """
    The balancing policy, and the session key (only with C{hash}).

    @return: C{balance}, C{session_key}.
    """
    balance = check_choice(s.label("balance"), s["balance"], BALANCE_CHOICES)
    session_key = s["session-key"]
    if session_key is not None:
        session_key = check_session_key(s.label("session-key"), session_key)
        if balance != "hash":
            raise ConfigError(
                f"{s.label('session-key')}: needs {s.other('balance', 'session-key')} hash"
            )
    return balance, session_key


def _with_caching(s: Settings, config: GatewayConfig) -> GatewayConfig:
    """
    C{config} with the caching headers of static files: C{cache_control}
    (C{none} or empty: L{None}) and C{cache_immutable}.
    """
    control = s["cache-control"]
    if control is not None:
        control = check_line(s.label("cache-control"), control)
        if control.strip() in ("", "none"):
            control = None
    immutable = s["cache-immutable"]
    if immutable:
        immutable = check_pattern(s.label("cache-immutable"), immutable)
    return dataclasses.replace(config, cache_control=control, cache_immutable=immutable or None)


def _timeouts(s: Settings) -> tuple[float, float, float, float, float]:
    """
    The timeouts of a front connection and its session, in seconds (the idle
    and fin timeouts may be 0: off).

    @return: the sniff, connect, idle, fin and header timeouts.
    """
    return (
        check_seconds(s.label("sniff-timeout"), s["sniff-timeout"], allow_zero=False),
        check_seconds(s.label("connect-timeout"), s["connect-timeout"], allow_zero=False),
        check_seconds(s.label("idle-timeout"), s["idle-timeout"], allow_zero=True),
        check_seconds(s.label("fin-timeout"), s["fin-timeout"], allow_zero=True),
        check_seconds(s.label("header-timeout"), s["header-timeout"], allow_zero=False),
    )


def _caps(s: Settings) -> tuple[int, int, str]:
    """
    The connection caps (0: no cap) and what happens at the total one.

    @return: C{max_connections}, C{max_per_ip}, C{overflow}.
    """
    return (
        check_count(s.label("max-connections"), s["max-connections"]),
        check_count(s.label("max-per-ip"), s["max-per-ip"]),
        check_choice(s.label("overflow"), s["overflow"], OVERFLOW_CHOICES),
    )


def _pool(s: Settings) -> tuple[str, float, int]:
    """
    The pool's defaults for every backend: the PROXY version sent, the
    seconds between health checks (0: none) and the retries of a session.

    @return: C{proxy_protocol}, C{health_interval}, C{retries}.
    """
    return (
        check_choice(s.label("proxy-protocol"), s["proxy-protocol"], PROXY_CHOICES),
        check_seconds(s.label("health-interval"), s["health-interval"], allow_zero=True),
        check_count(s.label("retries"), s["retries"]),
    )


def _relay_mode(option: str, text: str) -> str:
    """
    How game sessions move bytes: one of L{RELAY_CHOICES}, and C{splice}
    only where splice(2) exists.
    """
    mode = check_choice(option, text, RELAY_CHOICES)
    if mode == "splice":
        from gateway.session.splice import splice_available

        if not splice_available():
            raise ConfigError(f"{option}: splice(2) is not available here (Linux only); use auto")
    return mode
