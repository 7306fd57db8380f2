"""
The cluster's settings, checked: the C{--cluster} URL (L{parse_cluster_url}),
the password file (L{read_password_file}), the node's and the cluster's
names, its timings and its cap (L{with_cluster}, called last by
L{gateway.settings.build_config}), and the options themselves
(L{CLUSTER_PARAMETERS}, L{CLUSTER_FLAGS}, which L{gateway.options} lists).
Each check raises L{ConfigError}, one line naming the option, and no
message ever shows the password: a URL is shown by L{ClusterSpec.shown}
(C{***} for the password), or not at all.

Only the settings live here: the client, the membership and the shared
limits are L{gateway.cluster}'s.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import stat
import unicodedata
from ipaddress import ip_address
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from twisted.logger import Logger

from gateway.checks import MIN_SECONDS, ConfigError, check_count, check_seconds, parse_duration
from gateway.config import ClusterSpec, GatewayConfig
from gateway.ownership import TokenFiles

__all__ = [
    "CLUSTER_FLAGS",
    "CLUSTER_OPTIONS",
    "CLUSTER_PARAMETERS",
    "MAX_DB",
    "MAX_PASSWORD_LINE",
    "ClusterSpec",
    "check_name",
    "default_node_name",
    "parse_cluster_url",
    "password_file_warning",
    "read_password_file",
    "with_cluster",
]

REDIS_PORT = 6379
"""The port of a C{redis://} or C{rediss://} URL that gives none."""

MAX_DB = 15
"""The highest database number: Redis' default C{databases 16} are 0 to 15."""

MAX_PASSWORD_LINE = 4096
"""The longest first line read from a password file."""

MAX_NAME = 64
"""The longest node or cluster name."""

MAX_AFFINITY = 30 * 86400.0
"""The longest C{--affinity-ttl}: 30 days (the other durations' bound, a
day, is short for a player's affinity)."""

MIN_TIMEOUT = 0.001
"""The shortest C{--cluster-timeout}, a millisecond: a Redis answer on the
same network takes a fraction of one, and the other durations' bound
(L{MIN_SECONDS}) is long for a wait every admission may make."""

_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")
_SCHEMES = "redis://HOST[:PORT][/DB], rediss:// (TLS) or unix:///PATH (or an absolute path)"
_SHORT = 40

_DEFAULTS = GatewayConfig()

CLUSTER_PARAMETERS: list[list[Any]] = [
    [
        "cluster",
        None,
        None,
        "Share limits, affinity, backend states and the children list with every "
        "gateway using the same Redis (and --cluster-name): "
        "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (port 6379, DB 0 to 15, default 0), "
        "rediss://... (TLS), unix:///PATH[?db=N] or an absolute socket path. "
        "Prefer --cluster-password-file to a password in the URL.",
    ],
    [
        "cluster-password-file",
        None,
        None,
        "File whose first line is the Redis password (not with a password in the URL); "
        "read at start and on SIGHUP. Make it 0600.",
    ],
    [
        "node-name",
        None,
        None,
        "This node's name in the cluster, unique among its nodes (A-Z a-z 0-9 . _ : -, "
        "1 to 64 characters; default: the host name and the first front's port, e.g. vm:8080).",
    ],
    [
        "cluster-name",
        None,
        "gateway",
        "The cluster's name: nodes with the same Redis and name form one cluster "
        "(same characters as --node-name).",
    ],
    [
        "cluster-ttl",
        None,
        f"{_DEFAULTS.cluster_ttl:g}",
        "Seconds after which a node that stopped heartbeating (every third of it) is "
        "gone: its counts and membership expire.",
    ],
    [
        "cluster-timeout",
        None,
        f"{_DEFAULTS.cluster_timeout:g}",
        "Seconds an admission, a seat or an affinity lookup waits for Redis before this "
        "node decides alone (each limit divided by the nodes last seen alive); below a "
        "third of --cluster-ttl. Needs a restart to change.",
    ],
    [
        "affinity-ttl",
        None,
        f"{_DEFAULTS.affinity_ttl:g}",
        "With --balance hash: seconds the cluster remembers the backend a session key "
        "was last sent to, so that every node sends the key there while it is up "
        "(0: not shared). Needs a restart to change.",
    ],
    [
        "cluster-max-sessions",
        None,
        str(_DEFAULTS.cluster_max_sessions),
        "Game sessions at once across the whole cluster (0: no cap); beyond it new ones "
        "are refused (cluster-cap). Needs a restart to change.",
    ],
]
"""The cluster's options with a value, as L{gateway.options} lists them."""

CLUSTER_FLAGS: list[list[Any]] = [
    [
        "cluster-required",
        None,
        "Refuse to start when Redis cannot be reached or refuses the password "
        "(default: start with this node's own state, say why in one line, and join once "
        "Redis answers).",
    ],
]
"""The cluster's flags, as L{gateway.options} lists them."""

CLUSTER_OPTIONS = tuple(str(o[0]) for o in CLUSTER_PARAMETERS + CLUSTER_FLAGS)
"""Every cluster option, C{cluster} first."""

_log = Logger(namespace="gateway.clusterconfig")


class Source(Protocol):
    """
    Raw settings as L{gateway.settings.Settings} gives them.
    """

    values: dict[str, Any]

    def __getitem__(self, name: str) -> Any: ...

    def label(self, name: str) -> str: ...

    def other(self, name: str, by: str) -> str: ...


def _short(text: str) -> str:
    """
    C{text} as a message quotes it: its repr, at most about L{_SHORT} characters.
    """
    return repr(text if len(text) <= _SHORT else text[: _SHORT - 3] + "...")


def _printable(option: str, what: str, text: str) -> str:
    """
    Check that a user name or password has no control character (it would
    not survive a log line or the Redis protocol's inline form).
    """
    if not text or any(unicodedata.category(char) in ("Cc", "Cs") for char in text):
        raise ConfigError(
            f"{option}: the {what} must be non-empty text without control characters"
        )
    return text


def parse_cluster_url(option: str, text: str) -> dict[str, Any]:
    """
    Parse a C{--cluster} URL: C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]},
    C{rediss://} the same over TLS, C{unix://[[USER]:PASSWORD@]/PATH[?db=N]},
    or an absolute socket path as it is.  User name and password are
    percent-decoded; the DB may also be given as C{?db=N}.

    @return: the L{ClusterSpec} fields the URL gives (C{scheme}, C{host},
        C{port}, C{path}, C{db}, C{username}, C{password}).
    @raise ConfigError: anything else; the message never shows the password.
    """
    if text.startswith("/"):
        return {
            "scheme": "unix",
            "host": None,
            "port": REDIS_PORT,
            "path": os.path.normpath(text),
            "db": 0,
            "username": None,
            "password": None,
        }
    scheme, sep, _ = text.partition("://")
    if not sep:
        if re.fullmatch(r"[A-Za-z0-9_.-]+:[0-9]+", text):
            raise ConfigError(f"{option}: expected {_SCHEMES}; did you mean redis://{text}?")
        raise ConfigError(f"{option}: expected {_SCHEMES} (a UNIX socket path must be absolute)")
    scheme = scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{option}: unknown scheme {_short(scheme)}: expected {_SCHEMES}")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ConfigError(f"{option}: not a valid URL (expected {_SCHEMES})") from None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = _printable(option, "user name", unquote(user)) if user else None
        password = _printable(option, "password", unquote(secret)) if colon and secret else None
    if "@" in parts.path + parts.query + parts.fragment:
        # Not quoted: what follows is likely the rest of a password.
        raise ConfigError(
            f"{option}: a '/', '?' or '#' in the user name or password must be "
            "percent-encoded (%2F, %3F, %23)"
        )
    if parts.fragment:
        raise ConfigError(f"{option}: a URL fragment ('#...') means nothing here")
    db = _query_db(option, parts.query)
    fields: dict[str, Any] = {"scheme": scheme, "username": username, "password": password}
    if scheme == "unix":
        if hostport or not parts.path.startswith("/"):
            raise ConfigError(
                f"{option}: unix:// takes an absolute path after the slashes: "
                "unix:///path/to/redis.sock (three slashes)"
            )
        path = os.path.normpath(unquote(parts.path))
        return fields | {"host": None, "port": REDIS_PORT, "path": path, "db": db or 0}
    host, port = _host_port(option, hostport)
    path_db = parts.path.strip("/")
    if path_db:
        if db is not None:
            raise ConfigError(f"{option}: the DB is given twice (in the path and as ?db=)")
        db = _db(option, path_db)
    return fields | {"host": host, "port": port, "path": None, "db": db or 0}


def _host_port(option: str, hostport: str) -> tuple[str, int]:
    """
    The host (an IPv6 address without its brackets) and port of a URL's
    C{HOST[:PORT]}.
    """
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"{option}: an IPv6 address goes in brackets: redis://[::1]:6379")
        port_text = rest[1:] if rest else ""
        try:
            ip_address(host)
        except ValueError:
            raise ConfigError(f"{option}: not an IPv6 address: {_short(host)}") from None
    else:
        host, _, port_text = hostport.partition(":")
        if not host:
            raise ConfigError(f"{option}: the URL has no host (e.g. redis://127.0.0.1:6379/0)")
        if not _HOST.fullmatch(host):
            raise ConfigError(f"{option}: not a host name or address: {_short(host)}")
        host = host.lower()
    if not port_text:
        return host, REDIS_PORT
    # A port that is not a number is not quoted: it may be a password
    # written without its '@'.
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"{option}: the port must be a number, 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{option}: the port must be 1 to 65535, got {port}")
    return host, port


def _query_db(option: str, query: str) -> int | None:
    """
    The DB a URL's query gives (C{?db=N}), if any; no other key is known.
    """
    if not query:
        return None
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigError(f"{option}: the query must be db=N") from None
    db = None
    for key, value in pairs:
        if key != "db":
            raise ConfigError(f"{option}: unknown query key {_short(key)} (only db=N)")
        if db is not None:
            raise ConfigError(f"{option}: db is given twice")
        db = _db(option, value)
    return db


def _db(option: str, text: str) -> int:
    """
    A database number: 0 to L{MAX_DB}.
    """
    if not (text.isascii() and text.isdigit() and int(text) <= MAX_DB):
        raise ConfigError(
            f"{option}: the DB must be 0 to {MAX_DB}, Redis' default databases, got {_short(text)}"
        )
    return int(text)


def read_password_file(option: str, path: str) -> str:
    """
    Read the Redis password: the first line of C{path}, without its line end.

    @raise ConfigError: the file cannot be read, its first line is empty, too
        long, or has a control character (the password is never shown).
    """
    try:
        with open(path, encoding="utf-8") as file:
            # Bounded: a file without a line end (/dev/zero) is not read whole.
            line = file.readline(MAX_PASSWORD_LINE + 1)
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(f"{option}: cannot read {path!r}: {reason}") from None
    if len(line) > MAX_PASSWORD_LINE:
        raise ConfigError(
            f"{option}: {path!r}: the first line is over {MAX_PASSWORD_LINE} characters"
        )
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ConfigError(f"{option}: {path!r}: the first line (the password) is empty")
    return _printable(f"{option} {path}", "password", password)


def password_file_warning(path: str) -> str | None:
    """
    What to say about a password file others than its owner may read, or
    L{None} when only its owner may (or it cannot be looked at).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (
        f"{path} may be read by others than its owner (mode {stat.filemode(mode)}): "
        f"chmod 0600 {path}"
    )


def check_name(option: str, text: str) -> str:
    """
    Check a node or cluster name: 1 to L{MAX_NAME} of C{A-Z a-z 0-9 . _ : -}
    (they go into Redis keys and log lines as they are).
    """
    if not _NAME.fullmatch(text):
        raise ConfigError(
            f"{option}: 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ : -, got {_short(text)}"
        )
    return text


def default_node_name(listen: tuple[str, ...], host: str | None = None) -> str:
    """
    The default C{--node-name}: the host name (characters outside the names'
    set made C{-}) and the first front's port, e.g. C{vm:8080}; the host name
    alone for a front without a port (C{unix:}, C{systemd:}).

    @param host: the host name (default: this machine's).
    """
    host = re.sub(r"[^A-Za-z0-9._-]", "-", host if host is not None else socket.gethostname())
    port = _front_port(listen[0]) if listen else None
    suffix = f":{port}" if port is not None else ""
    return (host or "gateway")[: MAX_NAME - len(suffix)] + suffix


def _front_port(description: str) -> str | None:
    """
    The port of a server endpoint string (C{tcp:8080:interface=...},
    C{haproxy:tcp:8080}, C{tls:DIR:port=443}, C{ssl:443:...}), if it has one.
    """
    from twisted.internet.endpoints import _parse

    args, kwargs = _parse(description.removeprefix("haproxy:"))
    if not args or str(args[0]) in ("unix", "systemd"):
        return None
    if "port" in kwargs:
        return str(kwargs["port"])
    numbers = [str(arg) for arg in args[1:] if str(arg).isdigit()]
    return numbers[0] if numbers else None


def _duration(option: str, text: str, low: float, high: float) -> float:
    """
    A duration (seconds, or with a unit) of C{low} to C{high} seconds.
    """
    value = parse_duration(option, text)
    if not low <= value <= high:
        raise ConfigError(f"{option}: must be {low:g} to {high:g} seconds, got {text!r}")
    return value


def _affinity_ttl(option: str, text: str) -> float:
    """
    C{--affinity-ttl}: 0 (affinity not shared), or L{MIN_SECONDS} to
    L{MAX_AFFINITY} seconds.
    """
    value = parse_duration(option, text)
    if value != 0 and not MIN_SECONDS <= value <= MAX_AFFINITY:
        raise ConfigError(
            f"{option}: must be 0 (not shared) or {MIN_SECONDS:g} to {MAX_AFFINITY:g} seconds, "
            f"got {text!r}"
        )
    return value


def with_cluster(
    s: Source, config: GatewayConfig, tokens: TokenFiles | None = None
) -> GatewayConfig:
    """
    C{config} with the cluster's settings: none without C{--cluster} (and
    then no other cluster option may be given); with it, a L{ClusterSpec}
    and its timings.  With C{--workers} above 1 the acceptor is the member
    (it decides admissions; its workers do not join).

    @param tokens: remembers the password read at start, for a reload
        after twistd dropped the privileges to read it (L{TokenFiles}).
    """
    label = s.label
    if s["cluster"] is None:
        for name in CLUSTER_OPTIONS[1:]:
            if name in s.values and s.values[name] is not False:
                raise ConfigError(f"{label(name)}: needs {s.other('cluster', name)} (a Redis URL)")
        return config
    fields = parse_cluster_url(label("cluster"), s["cluster"])
    password_file = s["cluster-password-file"]
    if password_file is not None:
        if fields["password"] is not None:
            url = s.other("cluster", "cluster-password-file")
            raise ConfigError(
                f"{label('cluster-password-file')}: the {url} URL has a password already: "
                "give it in one place (the file is better)"
            )
        password_file = os.path.abspath(password_file)
        option = label("cluster-password-file")
        fields["password"] = (
            read_password_file(option, password_file)
            if tokens is None
            else tokens.read(option, password_file, reader=read_password_file)
        )
        warning = password_file_warning(password_file)
        if warning is not None:
            _log.warn("{option}: {warning}", option=option, warning=warning)
    name = check_name(label("cluster-name"), s["cluster-name"])
    node = s["node-name"]
    node = (
        default_node_name(config.listen) if node is None else check_name(label("node-name"), node)
    )
    ttl = check_seconds(label("cluster-ttl"), s["cluster-ttl"], allow_zero=False)
    timeout = _duration(label("cluster-timeout"), s["cluster-timeout"], MIN_TIMEOUT, ttl)
    if timeout >= ttl / 3:
        raise ConfigError(
            f"{label('cluster-timeout')}: must be below a third of "
            f"{s.other('cluster-ttl', 'cluster-timeout')} ({ttl / 3:g} s: the heartbeat), "
            f"got {timeout:g}"
        )
    affinity = _affinity_ttl(label("affinity-ttl"), s["affinity-ttl"])
    cap = check_count(label("cluster-max-sessions"), s["cluster-max-sessions"])
    return dataclasses.replace(
        config,
        cluster=ClusterSpec(name=name, node=node, **fields),
        cluster_password_file=password_file,
        cluster_ttl=ttl,
        cluster_timeout=timeout,
        affinity_ttl=affinity,
        cluster_max_sessions=cap,
        cluster_required=bool(s["cluster-required"]),
    )
