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

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from gateway.checks import ConfigError
from gateway.pool.backend import GAME_POOL

__all__ = [
    "BALANCE_CHOICES",
    "DEFAULT_ADMIN",
    "DEFAULT_CACHE_CONTROL",
    "DEFAULT_LISTEN",
    "DEMO_LISTEN",
    "DEMO_WEBSOCKET",
    "OVERFLOW_CHOICES",
    "PROXY_CHOICES",
    "RELAY_CHOICES",
    "LOG_FORMATS",
    "WEBSOCKET_MAX_MESSAGE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_ROUTE_TIMEOUT",
    "GAME_POOL",
    "BackendSpec",
    "ClusterSpec",
    "ConfigError",
    "GatewayConfig",
    "PoolSpec",
    "QueueClassSpec",
    "RouteSpec",
]

DEFAULT_LISTEN = "tcp:8080"
"""The public front when no C{--listen} is given (the contract's default)."""

DEFAULT_CACHE_CONTROL = "no-cache"
"""C{Cache-Control} of static files by default: a browser may keep a copy but
asks (a conditional request, answered by a C{304} without the body) before
each use, so a new version of a game's files is seen at the next load.
Without any header a browser guesses a freshness from C{Last-Modified} (a
tenth of the file's age: a script unchanged for ten days counts as fresh for
a day), and after a deploy players run yesterday's client against today's
server."""

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

LOG_FORMATS = ("text", "json")
"""How the gateway's own log is written (C{--log-format})."""


WEBSOCKET_MAX_MESSAGE = 1024 * 1024
"""The default largest WebSocket message (C{--websocket-max-message}), in bytes."""

DEMO_WEBSOCKET = "/play"
"""The path of the demo's WebSocket bridge (C{--demo} without C{--websocket})."""

DEMO_MAX_SESSIONS = 2
"""Each demo game server's session limit (C{--demo} without C{--max-sessions}):
small, so that a newcomer with a few terminals or tabs sees the waiting room."""

DEMO_QUEUE_SIZE = 50
"""The demo's waiting room (C{--demo} without C{--queue-size})."""

DEMO_QUEUE_MESSAGE = (
    "The game is full: you are number {position} in the queue of {length} "
    "(about {eta} s). Stay connected to keep your place."
)
"""What a waiting demo player is told (C{--demo} without C{--queue-message})."""


DEFAULT_MAX_BODY = 1024 * 1024
"""The largest request body a proxied route takes by default (C{max-body})."""

DEFAULT_ROUTE_TIMEOUT = 30.0
"""Seconds a proxied request waits for its response's headers by default
(C{timeout}; then C{504})."""


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
    @ivar pool: the pool it belongs to.
    @ivar max_sessions: the most sessions (and proxied requests) it takes at
        once (0: no limit).
    """

    name: str
    endpoint: str
    weight: int = 1
    health_send: bytes | None = None
    health_expect: bytes | None = None
    proxy_protocol: str | None = None
    pool: str = GAME_POOL
    max_sessions: int = 0


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """
    One pool of backends as configured: how it balances, checks and reaches
    its backends.  The game pool's is built from the top-level settings
    (L{GatewayConfig.game_pool}); every other pool's from its C{[pool.NAME]}
    table.

    @ivar name: the pool's name (C{game}, or the table's).
    @ivar health_path: with it, health checks are C{GET} requests for this
        path (an HTTP pool) instead of C{health_send}/C{health_expect}.
    @ivar health_status: the status an HTTP health check expects (L{None}:
        any 2xx or 3xx).
    @ivar health_host: the C{Host} an HTTP health check sends (L{None}: the
        backend's address).
    """

    name: str
    balance: str = "roundrobin"
    session_key: str | None = None
    health_interval: float = 5.0
    health_send: bytes = b""
    health_expect: bytes = b""
    health_path: str | None = None
    health_status: int | None = None
    health_host: str | None = None
    proxy_protocol: str = "off"
    connect_timeout: float = 5.0
    retries: int = 2


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """
    One HTTP route: requests whose host and path it matches get its action,
    exactly one of C{root}, C{pool} and C{bridge}.

    @ivar name: how logs name it (by default its host and path).
    @ivar host: the host it is for: exact, or C{*.example.com} (one or more
        labels before the suffix); L{None}: every host.
    @ivar path: the path prefix it matches, segment by segment (C{/api}
        matches C{/api} and C{/api/x}, not C{/apix}), or exactly that path
        when C{exact}.
    @ivar root: serve static files from this folder.
    @ivar pool: proxy requests (and WebSocket upgrades, as a byte stream)
        to this pool's backends.
    @ivar bridge: a WebSocket upgrade becomes a session to this pool (the
        bridge: messages to a TCP byte stream).
    @ivar listing: with C{root}, list folders without an index file.
    @ivar strip_prefix: with C{pool}, the backend sees the path without the
        route's prefix.
    @ivar max_body: with C{pool}, the largest request body (else 413).
    @ivar timeout: with C{pool}, seconds to the response's headers (else 504).
    @ivar rate_per_ip: new requests per second one address may make on this
        route (0: no limit; else 429).
    @ivar rate_burst: that limit's bucket (L{None}: the default).
    @ivar exact: match the path exactly (C{--websocket PATH}).
    """

    name: str
    path: str = "/"
    host: str | None = None
    root: str | None = None
    pool: str | None = None
    bridge: str | None = None
    listing: bool = False
    strip_prefix: bool = False
    max_body: int = DEFAULT_MAX_BODY
    timeout: float = DEFAULT_ROUTE_TIMEOUT
    rate_per_ip: float = 0.0
    rate_burst: float | None = None
    exact: bool = False

    @property
    def action(self) -> str:
        """
        C{root}, C{pool} or C{bridge}.
        """
        return "root" if self.root is not None else "pool" if self.pool is not None else "bridge"


@dataclass(frozen=True, slots=True)
class QueueClassSpec:
    """
    A class of waiting players (a C{[[queue-class]]} table): players it
    matches wait ahead of those of lower priority.

    @ivar name: how logs and the admin endpoint name it.
    @ivar priority: -1000 to 1000; higher waits ahead (the default class of
        players no class matches has 0).
    @ivar reserved: slots kept on every backend with a session limit for
        this class and the classes of higher priority.
    @ivar networks: the client addresses it takes (none: any address).
    @ivar first_line: a pattern searched in the client's first line (L{None}:
        any line).  With both, a player must match both.
    """

    name: str
    priority: int
    reserved: int = 0
    networks: tuple[IPv4Network | IPv6Network, ...] = ()
    first_line: re.Pattern[bytes] | None = None

    def matches(self, host: str | None, first_line: bytes) -> bool:
        """
        Whether a player belongs to this class.

        @param host: the client's IP address as text (an IPv4-mapped IPv6
            address, C{::ffff:1.2.3.4}, matches IPv4 networks too), or
            L{None} (a UNIX socket: no network matches it).
        @param first_line: the client's first line (searched, as
            C{--session-key} is).
        """
        if self.networks:
            addresses = _addresses(host)
            if not any(address in net for net in self.networks for address in addresses):
                return False
        return self.first_line is None or self.first_line.search(first_line) is not None


def _addresses(host: str | None) -> tuple[IPv4Address | IPv6Address, ...]:
    """
    The addresses C{host} stands for: itself, and the IPv4 address an
    IPv4-mapped IPv6 address carries; none for what is not an IP address.
    """
    if host is None:
        return ()
    try:
        address = ip_address(host)
    except ValueError:
        return ()
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return (address,) if mapped is None else (address, mapped)


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """
    Where the cluster's Redis is and who this node is in it (C{--cluster},
    C{--cluster-password-file}, C{--cluster-name}, C{--node-name}): what a
    reload cannot change.  The cluster's timings and limits are
    L{GatewayConfig} fields of their own (C{cluster_ttl} and the others),
    which a reload does change.

    @ivar scheme: C{redis}, C{rediss} (TLS) or C{unix}.
    @ivar host: the server's host name or IP address (L{None} for C{unix}).
    @ivar port: its TCP port (6379 by default; unused for C{unix}).
    @ivar path: the UNIX socket's absolute path (L{None} but for C{unix}).
    @ivar db: the Redis database number, 0 to 15.
    @ivar username: the ACL user name, or L{None} for Redis' default user.
    @ivar password: the password, from the URL or the password file, or
        L{None}.  Neither shown by C{repr} nor compared: a reload that
        changes only the password is no restart-only change (a client
        uses the new one at its next connection).
    @ivar name: the cluster's name: nodes with the same Redis and name form
        one cluster (it prefixes the keys).
    @ivar node: this node's name in the cluster, unique among its nodes.
    """

    scheme: str
    name: str
    node: str
    host: str | None = None
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False, compare=False)

    def shown(self) -> str:
        """
        The URL as logs and C{--check-config} show it: whole, its password
        (if any) as C{***}.
        """
        user = self.username or ""
        secret = ":***" if self.password is not None else ""
        userinfo = f"{user}{secret}@" if user or secret else ""
        if self.scheme == "unix":
            query = f"?db={self.db}" if self.db else ""
            return f"unix://{userinfo}{self.path}{query}"
        host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
        return f"{self.scheme}://{userinfo}{host}:{self.port}/{self.db}"


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
    @ivar access_log_starts: also log an access event when a game or
        WebSocket session reaches its backend (C{event: "start"}).
    @ivar log_format: the gateway's own log: C{text} (twistd's lines) or
        C{json} (flat JSON lines, see L{gateway.ops.jsonlog}).
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
    @ivar pools: the pools besides the game pool (whose settings are the
        top-level ones), from the file's C{[pool.NAME]} tables.
    @ivar routes: the file's C{[[route]]} tables, in the file's order.
    @ivar cache_control: C{Cache-Control} of static files (L{None}: none).
    @ivar cache_immutable: a regular expression of request paths of
        fingerprinted files, which get a year's C{immutable} caching.
    @ivar queue_size: players who may wait at once for a backend of a pool
        (the waiting room; 0: none, a session no backend takes is refused).
    @ivar queue_timeout: the longest wait, in seconds (then the busy line).
    @ivar queue_update: the least time, in seconds, between two messages
        telling a waiting player their place.
    @ivar queue_message: the template of that message (fields C{{position}},
        C{{length}} and C{{eta}}; the gateway appends CRLF), or L{None} for
        a silent wait.
    @ivar demo_max_sessions: each demo game server's session limit (0: none).
    @ivar queue_classes: the waiting room's priority classes, highest
        priority first (in the file's order among equals).
    @ivar cluster: the cluster's Redis and this node's name in it, or
        L{None}: no cluster, every limit is this node's.
    @ivar cluster_password_file: the file the cluster's password was read
        from (an absolute path), or L{None}.
    @ivar cluster_ttl: seconds after which a node that stopped heartbeating
        (every third of it) is gone, with its counts and membership.
    @ivar cluster_timeout: seconds an admission waits for Redis before it
        is decided with local limits.
    @ivar affinity_ttl: seconds a session key's backend is remembered.
    @ivar cluster_max_sessions: game sessions across the cluster (0: no cap).
    @ivar cluster_required: refuse to start when Redis cannot be reached or
        refuses the password (else start with local limits and retry).
    @ivar http_fast_path: answer plain GET and HEAD requests for small files
        on the lean path (L{gateway.http.lean}); off: C{--no-http-fast-path}.
    @ivar tcp_fast_path: connect the backends of game sessions that splice
        with a bare socket (L{gateway.session.leanlink}); off:
        C{--no-tcp-fast-path}.
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
    access_log_starts: bool = False
    log_format: str = "text"
    demo: bool = False
    websocket: tuple[str, ...] = ()
    websocket_origins: tuple[str, ...] = ()
    websocket_max_message: int = WEBSOCKET_MAX_MESSAGE
    websocket_ping: float = 20.0
    pools: tuple[PoolSpec, ...] = ()
    routes: tuple[RouteSpec, ...] = ()
    cache_control: str | None = DEFAULT_CACHE_CONTROL
    cache_immutable: str | None = None
    queue_size: int = 0
    queue_timeout: float = 300.0
    queue_update: float = 5.0
    queue_message: str | None = None
    queue_classes: tuple[QueueClassSpec, ...] = ()
    demo_max_sessions: int = 0
    cluster: ClusterSpec | None = None
    cluster_password_file: str | None = None
    cluster_ttl: float = 15.0
    cluster_timeout: float = 0.05
    affinity_ttl: float = 3600.0
    cluster_max_sessions: int = 0
    cluster_required: bool = False
    http_fast_path: bool = True
    tcp_fast_path: bool = True

    @property
    def game_pool(self) -> PoolSpec:
        """
        The game pool's settings: the top-level ones.
        """
        return PoolSpec(
            name=GAME_POOL,
            balance=self.balance,
            session_key=self.session_key,
            health_interval=self.health_interval,
            health_send=self.health_send,
            health_expect=self.health_expect,
            proxy_protocol=self.proxy_protocol,
            connect_timeout=self.connect_timeout,
            retries=self.retries,
        )

    def pool_specs(self) -> tuple[PoolSpec, ...]:
        """
        Every pool's settings, the game pool's first.
        """
        return (self.game_pool, *self.pools)
