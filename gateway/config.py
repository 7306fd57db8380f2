"""
The gateway's settings as one frozen value: L{GatewayConfig}, its
L{BackendSpec}s, and the vocabularies and defaults of its fields.

Everything that builds the gateway (the service tree, the front door, the
relay) reads a L{GatewayConfig}; nothing reads C{sys.argv} or a file directly.
The command line (L{gateway.options}) and the TOML file (L{gateway.configfile})
both produce one through L{gateway.settings.build_config}, whose checks
(L{gateway.checks}) give the same message wherever a bad value comes from.

L{ConfigError}, the error of those checks, is re-exported here for the
modules that handle a configuration and its errors together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.checks import ConfigError

__all__ = [
    "BALANCE_CHOICES",
    "DEFAULT_ADMIN",
    "DEFAULT_LISTEN",
    "DEMO_LISTEN",
    "DEMO_WEBSOCKET",
    "OVERFLOW_CHOICES",
    "PROXY_CHOICES",
    "RELAY_CHOICES",
    "WEBSOCKET_MAX_MESSAGE",
    "BackendSpec",
    "ConfigError",
    "GatewayConfig",
]

DEFAULT_LISTEN = "tcp:8080"
"""The public front when no C{--listen} is given (the contract's default)."""

DEMO_LISTEN = "tcp:8080:interface=127.0.0.1"
"""The public front of C{--demo}: loopback only, since the demo is for one machine."""

DEFAULT_ADMIN = "tcp:9090:interface=127.0.0.1"
"""The admin endpoint when no C{--admin} is given (loopback only)."""


OVERFLOW_CHOICES = ("reject", "queue")
"""What happens at the total connection cap."""

BALANCE_CHOICES = ("roundrobin", "leastconn", "hash")
"""The balancing policies (L{gateway.pool.balance})."""

PROXY_CHOICES = ("off", "v1", "v2")
"""PROXY protocol versions sent to backends."""

RELAY_CHOICES = ("auto", "splice", "copy")
"""How game sessions move bytes."""


WEBSOCKET_MAX_MESSAGE = 1024 * 1024
"""The default largest WebSocket message (C{--websocket-max-message}), in bytes."""

DEMO_WEBSOCKET = "/play"
"""The path of the demo's WebSocket bridge (C{--demo} without C{--websocket})."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """
    One game backend as configured.

    @ivar name: the name shown in logs and on the admin endpoint; by
        default the endpoint string itself.
    @ivar endpoint: a Twisted client endpoint string, e.g. C{tcp:127.0.0.1:7000}.
    @ivar weight: its share of new sessions relative to the others.
    @ivar health_send: this backend's health check sends these bytes
        (L{None}: the gateway's C{--health-send}).
    @ivar health_expect: and must receive these (L{None}: C{--health-expect}).
    @ivar proxy_protocol: the PROXY header sent to this backend (L{None}:
        the gateway's C{--proxy-protocol}).
    """

    name: str
    endpoint: str
    weight: int = 1
    health_send: bytes | None = None
    health_expect: bytes | None = None
    proxy_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """
    Every setting of one gateway, validated.

    @ivar listen: server endpoint strings of the public front.
    @ivar backends: the game backends, in configured order.
    @ivar http_root: folder of static files for HTTP clients, or L{None} (then
        every HTTP request gets a 404, except in demo mode).
    @ivar http_listing: serve a listing for folders without an index file.
    @ivar sniff_timeout: seconds a silent client may wait before it is taken for
        a game client of a protocol where the server speaks first.
    @ivar connect_timeout: seconds per backend connection attempt.
    @ivar idle_timeout: seconds without traffic either way before a game
        session is closed; 0 turns the idle timeout off.
    @ivar fin_timeout: seconds without traffic before a game session where one
        side has ended its stream is closed; 0 turns it off.
    @ivar header_timeout: seconds an HTTP request's line and headers (and a
        PROXY header) may take to arrive.
    @ivar max_connections: concurrent front connections of every kind (0: no cap).
    @ivar max_per_ip: concurrent connections from one client address (0: no cap).
    @ivar rate_per_ip: new connections per second from one address (0: no limit).
    @ivar rate_burst: the token bucket's size; L{None} for the default
        (L{gateway.front.limits.default_burst}).
    @ivar overflow: at the total cap, C{"reject"} or C{"queue"}.
    @ivar busy_message: the line sent to a refused game client, if any.
    @ivar balance: the balancing policy (C{roundrobin}, C{leastconn}, C{hash}).
    @ivar session_key: with C{hash}, a regular expression whose first group in
        the client's first line is the affinity key (else the client address).
    @ivar proxy_protocol: send a PROXY header to backends: C{off}, C{v1}, C{v2}.
    @ivar health_interval: seconds between active health checks (0: none, and
        no passive marking either, since nothing would bring a backend back).
    @ivar health_send: bytes a health check sends after connecting (none: a
        connect is the check).
    @ivar health_expect: bytes a health check must receive (none: none).
    @ivar retries: further backends tried after a failed connection attempt.
    @ivar admin: the admin endpoint's server endpoint string, or L{None} for none.
    @ivar admin_token: the token the admin endpoint's actions need, or
        L{None} (then they need none).
    @ivar admin_hosts: host names the admin endpoint answers for, besides
        IP addresses and C{localhost}.
    @ivar access_log: a file to append access events to as JSON lines
        (C{-}: standard output), or L{None}.
    @ivar access_log_only: access events go only to C{access_log}, not to
        twistd's log too.
    @ivar drain_timeout: seconds game sessions may go on after SIGTERM
        before they are closed (0: close them at once).
    @ivar relay: how game sessions move bytes: C{auto} (splice(2) where
        both sides are plain sockets on Linux, else copy), C{splice} (the
        same, and an error where splice(2) does not exist) or C{copy}.
    @ivar workers: worker processes (1: the gateway is one process).  With
        more, this process is the acceptor: it listens, applies the limits
        and hands each admitted connection to the least-loaded worker (see
        L{gateway.process.dispatch}).
    @ivar handover: the UNIX socket path for handing the listening sockets
        over to a new gateway process (and taking them over at start).
    @ivar config_file: the TOML file the settings were read from, if any
        (SIGHUP reads it again).
    @ivar demo: also run the built-in demo game backends and page.
    @ivar websocket: request paths where a WebSocket upgrade becomes a game
        session (the WebSocket bridge); none: no bridge.
    @ivar websocket_origins: the C{Origin}s an upgrade may come from besides
        the request's own host (C{*}: any).
    @ivar websocket_max_message: the largest WebSocket message, in bytes.
    @ivar websocket_ping: seconds between pings to a browser (0: none).
    """

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    backends: tuple[BackendSpec, ...] = field(default=())
    http_root: str | None = None
    http_listing: bool = False
    sniff_timeout: float = 2.0
    connect_timeout: float = 5.0
    idle_timeout: float = 0.0
    fin_timeout: float = 60.0
    header_timeout: float = 10.0
    max_connections: int = 0
    max_per_ip: int = 0
    rate_per_ip: float = 0.0
    rate_burst: float | None = None
    overflow: str = "reject"
    busy_message: str | None = None
    balance: str = "roundrobin"
    session_key: str | None = None
    proxy_protocol: str = "off"
    health_interval: float = 5.0
    health_send: bytes = b""
    health_expect: bytes = b""
    retries: int = 2
    admin: str | None = DEFAULT_ADMIN
    admin_token: str | None = field(default=None, repr=False)
    admin_hosts: tuple[str, ...] = ()
    drain_timeout: float = 30.0
    relay: str = "auto"
    workers: int = 1
    handover: str | None = None
    config_file: str | None = None
    access_log: str | None = None
    access_log_only: bool = False
    demo: bool = False
    websocket: tuple[str, ...] = ()
    websocket_origins: tuple[str, ...] = ()
    websocket_max_message: int = WEBSOCKET_MAX_MESSAGE
    websocket_ping: float = 20.0
