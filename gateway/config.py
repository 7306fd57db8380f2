"""
The gateway's settings as one frozen value, and the checks that make a setting valid.

Everything that builds the gateway (the service tree, the front door, the relay)
reads a L{GatewayConfig}; nothing reads C{sys.argv} or a file directly.  The
command line (L{gateway.options}) produces one; the TOML file of the lifecycle
issue will produce one too, through the same checks, so that a bad value gives
the same message wherever it comes from.

Each check raises L{ConfigError} with a message that names the setting, because
that message is what an operator sees when start-up refuses a bad value.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IReactorCore

from gateway.front.pemfolder import FolderError, load_folder
from gateway.front.tls import is_tls_front, parse_tls_front

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_ADMIN",
    "DEMO_LISTEN",
    "BackendSpec",
    "RawBackend",
    "Settings",
    "build_config",
    "ConfigError",
    "GatewayConfig",
    "BALANCE_CHOICES",
    "OVERFLOW_CHOICES",
    "PROXY_CHOICES",
    "check_choice",
    "check_client_endpoint",
    "check_count",
    "check_line",
    "check_token",
    "check_writable_file",
    "read_token_file",
    "check_rate",
    "check_directory",
    "check_escaped",
    "check_seconds",
    "MIN_SECONDS",
    "MAX_SECONDS",
    "check_session_key",
    "check_server_endpoint",
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

RELAY_CHOICES = ("auto", "splice", "copy")
"""How game sessions move bytes."""
"""PROXY protocol versions sent to backends."""


class ConfigError(ValueError):
    """
    A setting is invalid.  The message names the setting and says what was wrong.
    """


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
class RawBackend:
    """
    A backend as written (on the command line or in a file), not yet checked.

    @ivar label: how error messages name it, e.g. C{--backend} or
        C{gateway.toml: backend 'eu-1'}.
    """

    label: str
    endpoint: str
    name: str | None = None
    weight: str | None = None
    health_send: str | None = None
    health_expect: str | None = None
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


MAX_WORKERS = 64
"""The most worker processes C{--workers} allows."""

WORKER_FRONTS = ("tcp", "tcp6", "unix", "tls", "systemd")
"""Front types whose connections can be handed to a worker process: plain
sockets (TLS is done by the worker; C{ssl:} wraps sockets another way)."""


MIN_SECONDS = 0.1
"""The shortest duration a seconds setting takes (0 aside, where it means
"off"): below it a timeout or an interval is a busy loop, not a setting."""

MAX_SECONDS = 86400.0
"""The longest duration a seconds setting takes (a day): longer is no sane
timeout, and huge values (C{1e300}) only hide a mistake."""


def check_seconds(option: str, text: str, *, allow_zero: bool) -> float:
    """
    Parse a duration in seconds: L{MIN_SECONDS} to L{MAX_SECONDS}, or 0
    where that is allowed (it turns the timeout or the checks off).

    @param option: the setting's name, for the error message.
    @param text: what the user wrote.
    @param allow_zero: whether 0 (meaning "off") is allowed.
    @return: the duration.
    @raise ConfigError: not a finite number, negative, 0 where not allowed,
        or out of bounds; the message names the option and the bound.
    """
    value = _finite(option, text, "a number of seconds")
    if value < 0:
        raise ConfigError(f"{option}: must not be negative, got {text!r}")
    if value == 0:
        if not allow_zero:
            raise ConfigError(f"{option}: must be more than 0 seconds, got {text!r}")
        return value
    if value < MIN_SECONDS:
        off = " (or 0: off)" if allow_zero else ""
        raise ConfigError(f"{option}: must be at least {MIN_SECONDS:g} seconds{off}, got {text!r}")
    if value > MAX_SECONDS:
        raise ConfigError(
            f"{option}: must be at most {MAX_SECONDS:g} seconds (a day), got {text!r}"
        )
    return value


def _finite(option: str, text: str, what: str) -> float:
    """
    Parse a finite number, or raise L{ConfigError} saying C{what} was expected.
    """
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{option}: expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{option}: expected a finite number, got {text!r}")
    return value


def check_count(option: str, text: str) -> int:
    """
    Parse a whole number that is 0 or more (0 meaning "no cap").

    @raise ConfigError: not a whole number, or negative.
    """
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{option}: expected a whole number, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{option}: must not be negative, got {text!r}")
    return value


def check_rate(option: str, text: str, *, minimum: float = 0.0) -> float:
    """
    Parse a finite number that is at least C{minimum}.

    @raise ConfigError: not a finite number, or below the minimum.
    """
    value = _finite(option, text, "a number")
    if value < minimum:
        raise ConfigError(f"{option}: must be at least {minimum:g}, got {text!r}")
    return value


def check_choice(option: str, text: str, choices: tuple[str, ...]) -> str:
    """
    Check that C{text} is one of C{choices}.

    @raise ConfigError: it is not.
    """
    if text not in choices:
        raise ConfigError(f"{option}: expected one of {', '.join(choices)}, got {text!r}")
    return text


def check_line(option: str, text: str, *, limit: int = 200) -> str:
    """
    Check that C{text} is one line of printable text, at most C{limit} characters.

    @raise ConfigError: it has a line break or a control character, or is too long.
    """
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ConfigError(f"{option}: must be one line without control characters")
    if len(text) > limit:
        raise ConfigError(f"{option}: at most {limit} characters, got {len(text)}")
    return text


def check_session_key(option: str, pattern: str) -> str:
    """
    Check that C{pattern} is a regular expression with at least one group.

    @raise ConfigError: it does not compile, or has no group.
    """
    try:
        compiled = re.compile(pattern.encode())
    except (re.error, UnicodeEncodeError, OverflowError) as error:
        raise ConfigError(f"{option}: not a valid regular expression: {error}") from None
    except RecursionError:
        raise ConfigError(f"{option}: not a valid regular expression: nested too deeply") from None
    if compiled.groups < 1:
        raise ConfigError(f"{option}: needs a group, e.g. 'user=(\\w+)', got {pattern!r}")
    return pattern


def check_escaped(option: str, text: str, *, limit: int = 1024) -> bytes:
    """
    Turn text with backslash escapes (C{\\r}, C{\\n}, C{\\x00}, C{\\\\}) into bytes.

    @raise ConfigError: a bad escape, a character beyond Latin-1, or too long.
    """
    try:
        value = text.encode("latin-1").decode("unicode_escape").encode("latin-1")
    except (UnicodeError, ValueError) as error:
        raise ConfigError(f"{option}: cannot read {text!r}: {error}") from None
    if len(value) > limit:
        raise ConfigError(f"{option}: at most {limit} bytes, got {len(value)}")
    return value


def check_directory(option: str, path: str) -> str:
    """
    Check that C{path} is a readable folder.

    @return: the absolute path.
    @raise ConfigError: it does not exist, is not a folder, or cannot be read.
    """
    absolute = os.path.abspath(path)
    if not os.path.exists(absolute):
        raise ConfigError(f"{option}: {path!r} does not exist")
    if not os.path.isdir(absolute):
        raise ConfigError(f"{option}: {path!r} is not a directory")
    if not os.access(absolute, os.R_OK | os.X_OK):
        raise ConfigError(f"{option}: {path!r} is not readable")
    return absolute


TOKEN_MIN_LENGTH = 16
"""The shortest admin token accepted (a short one can be guessed)."""


def check_token(option: str, token: str) -> str:
    """
    Check an admin token: at least L{TOKEN_MIN_LENGTH} visible ASCII
    characters, so that it fits an C{Authorization} header as it is.

    @raise ConfigError: too short, or with spaces or other characters.
    """
    if not all(33 <= ord(char) < 127 for char in token):
        raise ConfigError(f"{option}: only visible ASCII characters, no spaces")
    if len(token) < TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"{option}: at least {TOKEN_MIN_LENGTH} characters, got {len(token)} "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    return token


TOKEN_MAX_LINE = 4096
"""The longest first line read from an admin token file."""


def read_token_file(option: str, path: str) -> str:
    """
    Read an admin token from the first line of a file.

    @raise ConfigError: the file cannot be read, or its token is not valid.
    """
    try:
        with open(path, encoding="utf-8") as file:
            # Bounded: a file without a line end (/dev/zero) is not read whole.
            line = file.readline(TOKEN_MAX_LINE + 1)
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise ConfigError(f"{option}: cannot read {path!r}: {reason}") from None
    if len(line) > TOKEN_MAX_LINE:
        raise ConfigError(
            f"{option}: {path!r}: the first line is over {TOKEN_MAX_LINE} characters"
        )
    token = line.strip()
    return check_token(f"{option} {path}", token)


def check_writable_file(option: str, path: str) -> str:
    """
    Check that a file can be appended to (or created): C{-} stands for
    standard output.

    @return: the absolute path, or C{-}.
    @raise ConfigError: its folder does not exist, or it cannot be written.
    """
    if path == "-":
        return path
    absolute = os.path.abspath(path)
    folder = os.path.dirname(absolute)
    if os.path.isdir(absolute):
        raise ConfigError(f"{option}: {path!r} is a directory")
    if not os.path.isdir(folder):
        raise ConfigError(f"{option}: the folder of {path!r} does not exist")
    target = absolute if os.path.exists(absolute) else folder
    if not os.access(target, os.W_OK):
        raise ConfigError(f"{option}: {path!r} is not writable")
    return absolute


def _describe(error: Exception) -> str:
    """
    Turn an endpoint parser's exception into a short reason.
    """
    text = str(error).strip()
    if isinstance(error, KeyError):
        # serverFromString raises KeyError('Unknown endpoint type: ...') for a
        # prefix no parser claims; str() of a KeyError keeps the quotes.
        text = text.strip("'\"")
    return text or type(error).__name__


def check_server_endpoint(
    option: str, description: str, reactor: IReactorCore, *, read_folders: bool = True
) -> str:
    """
    Check that a server endpoint string parses, without listening on it.

    @param reactor: the reactor the endpoint would be built for.  Parsing does
        not touch it; it is what L{serverFromString} needs.
    @param read_folders: for a C{tls:} front, read and check its PEM folder
        too (at start; a reload reads it where it is used, and keeps the
        certificates it has if the folder went bad).
    @return: the description unchanged.
    @raise ConfigError: the string does not parse.
    """
    if not description.strip():
        raise ConfigError(f"{option}: empty endpoint")
    text = description.removeprefix("haproxy:")
    if is_tls_front(text):
        # Not through Twisted's tls: parser, which reads the folder and never
        # returns for some (see gateway.front.tls).
        _check_tls_front(option, description, text, read_folder=read_folders)
        return description
    try:
        serverFromString(reactor, description)
    except Exception as error:  # noqa: BLE001 - parsers raise anything
        raise ConfigError(
            f"{option}: cannot use {description!r} as a server endpoint: {_describe(error)}"
        ) from None
    return description


def _check_tls_front(option: str, description: str, text: str, *, read_folder: bool) -> None:
    """
    Check a C{tls:} front: the string parses, and (if C{read_folder}) its PEM
    folder can be served now.

    @raise ConfigError: it does not; the message names the file.
    """
    try:
        front = parse_tls_front(text)
    except ValueError as error:
        raise ConfigError(
            f"{option}: cannot use {description!r} as a server endpoint: {_describe(error)}"
        ) from None
    if not read_folder:
        if not os.path.isdir(front.folder):
            raise ConfigError(f"{option}: {description}: {front.folder}: not a folder")
        return
    try:
        load_folder(front.folder, datetime.datetime.now(datetime.UTC))
    except FolderError as error:
        raise ConfigError(f"{option}: {description}: {error}") from None


def check_client_endpoint(option: str, description: str, reactor: IReactorCore) -> str:
    """
    Check that a client endpoint string parses, without connecting.

    @return: the description unchanged.
    @raise ConfigError: the string does not parse.
    """
    if not description.strip():
        raise ConfigError(f"{option}: empty endpoint")
    try:
        clientFromString(reactor, description)
    except Exception as error:  # noqa: BLE001 - parsers raise anything
        raise ConfigError(
            f"{option}: cannot use {description!r} as a client endpoint: {_describe(error)}"
        ) from None
    return description


MAX_WEIGHT = 1000
"""The largest backend weight (a weight is a share, not a count)."""


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
    """

    def __init__(
        self,
        values: dict[str, Any],
        labels: dict[str, str],
        backends: list[RawBackend],
        defaults: dict[str, Any],
    ) -> None:
        self.values = values
        self.labels = labels
        self.backends = backends
        self.defaults = defaults

    def __getitem__(self, name: str) -> Any:
        return self.values[name] if name in self.values else self.defaults.get(name)

    def label(self, name: str) -> str:
        """
        How error messages name the setting C{name}.
        """
        return self.labels.get(name, f"--{name}")


def _backend_spec(raw: RawBackend, reactor: IReactorCore) -> BackendSpec:
    check_client_endpoint(raw.label, raw.endpoint, reactor)
    weight = 1
    if raw.weight is not None:
        weight = check_count(f"{raw.label}: weight", raw.weight)
        if not 1 <= weight <= MAX_WEIGHT:
            raise ConfigError(f"{raw.label}: weight must be 1 to {MAX_WEIGHT}, got {weight}")
    name = raw.endpoint if raw.name is None else check_line(f"{raw.label}: name", raw.name)
    if not name:
        raise ConfigError(f"{raw.label}: name must not be empty")
    return BackendSpec(
        name=name,
        endpoint=raw.endpoint,
        weight=weight,
        health_send=None
        if raw.health_send is None
        else check_escaped(f"{raw.label}: health-send", raw.health_send),
        health_expect=None
        if raw.health_expect is None
        else check_escaped(f"{raw.label}: health-expect", raw.health_expect),
        proxy_protocol=None
        if raw.proxy_protocol is None
        else check_choice(f"{raw.label}: proxy-protocol", raw.proxy_protocol, PROXY_CHOICES),
    )


def _relay_mode(option: str, text: str) -> str:
    mode = check_choice(option, text, RELAY_CHOICES)
    if mode == "splice":
        from gateway.session.splice import splice_available

        if not splice_available():
            raise ConfigError(f"{option}: splice(2) is not available here (Linux only); use auto")
    return mode


def build_config(
    settings: Settings,
    reactor: IReactorCore,
    *,
    config_file: str | None = None,
    read_folders: bool = True,
) -> GatewayConfig:
    """
    Check every setting and build the configuration.

    @param reactor: endpoint strings are parsed for it (never bound).
    @param config_file: the file the settings came from, if any.
    @param read_folders: read and check the PEM folders of C{tls:} fronts
        (at start, not on reload: see L{check_server_endpoint}).
    @raise ConfigError: a setting is invalid; the message names it.
    """
    s, label = settings, settings.label

    def other(name: str, by: str) -> str:
        # Another setting, named the way the one in the message (by) is.
        return f"--{name}" if label(by).startswith("--") else name

    demo = bool(s["demo"])
    listen = list(s["listen"] or [DEMO_LISTEN if demo else DEFAULT_LISTEN])
    for index, description in enumerate(listen):
        check_server_endpoint(label("listen"), description, reactor, read_folders=read_folders)
        if description in listen[:index]:
            raise ConfigError(f"{label('listen')}: {description!r} is given twice")
    backends: list[BackendSpec] = []
    for raw in s.backends:
        spec = _backend_spec(raw, reactor)
        if any(b.endpoint == spec.endpoint for b in backends) and raw.name is None:
            raise ConfigError(f"{raw.label}: {spec.endpoint!r} is given twice")
        if any(b.name == spec.name for b in backends):
            raise ConfigError(f"{raw.label}: the name {spec.name!r} is given twice")
        backends.append(spec)
    if not backends and not demo:
        raise ConfigError(
            f"{label('backend')}: at least one game backend is needed "
            "(or --demo for the built-in demo game)"
        )
    rate = check_rate(label("rate-per-ip"), s["rate-per-ip"])
    burst = None
    if s["rate-burst"] is not None:
        if not rate:
            raise ConfigError(f"{label('rate-burst')}: needs {other('rate-per-ip', 'rate-burst')}")
        burst = check_rate(label("rate-burst"), s["rate-burst"], minimum=1)
    busy = s["busy-message"]
    if busy is not None:
        busy = check_line(label("busy-message"), busy)
    admin = s["admin"]
    if admin == "none":
        admin = None
    else:
        check_server_endpoint(label("admin"), admin, reactor, read_folders=read_folders)
        if admin in listen:
            raise ConfigError(
                f"{label('admin')}: {admin!r} is also a {other('listen', 'admin')} front"
            )
    token = None
    if s["admin-token"] is not None and s["admin-token-file"] is not None:
        raise ConfigError(
            f"{label('admin-token')}: give it or "
            f"{other('admin-token-file', 'admin-token')}, not both"
        )
    if s["admin-token"] is not None:
        token = check_token(label("admin-token"), s["admin-token"])
    elif s["admin-token-file"] is not None:
        token = read_token_file(label("admin-token-file"), s["admin-token-file"])
    if token is not None and admin is None:
        raise ConfigError(
            f"{label('admin-token')}: needs an {other('admin', 'admin-token')} endpoint "
            "(it is 'none')"
        )
    hosts = s["admin-host"]
    admin_hosts: tuple[str, ...] = ()
    if hosts is not None:
        admin_hosts = tuple(part.strip().lower() for part in hosts.split(",") if part.strip())
        for name in admin_hosts:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", name):
                raise ConfigError(f"{label('admin-host')}: not a host name: {name!r}")
    handover = s["handover"]
    if handover is not None:
        handover = os.path.abspath(handover)
        if not os.path.isdir(os.path.dirname(handover)):
            raise ConfigError(f"{label('handover')}: the folder of {handover!r} does not exist")
        if os.path.exists(handover) and not stat.S_ISSOCK(os.stat(handover).st_mode):
            raise ConfigError(f"{label('handover')}: {handover!r} exists and is not a socket")
    workers = check_count(label("workers"), s["workers"])
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"{label('workers')}: must be 1 to {MAX_WORKERS}, got {workers}")
    if workers > 1:
        for description in listen:
            kind = description.removeprefix("haproxy:").split(":", 1)[0]
            if kind not in WORKER_FRONTS or description.startswith("haproxy:tls:"):
                raise ConfigError(
                    f"{label('listen')}: {description!r}: with {other('workers', 'listen')} "
                    "a front must be tcp:, tcp6:, unix:, tls:, systemd: or haproxy: over a "
                    "plain one (use tls: instead of ssl:)"
                )
    access_log = s["access-log"]
    if access_log is not None:
        access_log = check_writable_file(label("access-log"), access_log)
    access_log_only = bool(s["access-log-only"])
    if access_log_only and access_log is None:
        raise ConfigError(
            f"{label('access-log-only')}: needs {other('access-log', 'access-log-only')} "
            "(the access events would go nowhere)"
        )
    balance = check_choice(label("balance"), s["balance"], BALANCE_CHOICES)
    session_key = s["session-key"]
    if session_key is not None:
        session_key = check_session_key(label("session-key"), session_key)
        if balance != "hash":
            raise ConfigError(
                f"{label('session-key')}: needs {other('balance', 'session-key')} hash"
            )
    http_root = s["http-root"]
    if http_root is not None:
        http_root = check_directory(label("http-root"), http_root)
    return GatewayConfig(
        listen=tuple(listen),
        backends=tuple(backends),
        http_root=http_root,
        http_listing=bool(s["http-listing"]),
        sniff_timeout=check_seconds(label("sniff-timeout"), s["sniff-timeout"], allow_zero=False),
        connect_timeout=check_seconds(
            label("connect-timeout"), s["connect-timeout"], allow_zero=False
        ),
        idle_timeout=check_seconds(label("idle-timeout"), s["idle-timeout"], allow_zero=True),
        fin_timeout=check_seconds(label("fin-timeout"), s["fin-timeout"], allow_zero=True),
        header_timeout=check_seconds(
            label("header-timeout"), s["header-timeout"], allow_zero=False
        ),
        max_connections=check_count(label("max-connections"), s["max-connections"]),
        max_per_ip=check_count(label("max-per-ip"), s["max-per-ip"]),
        rate_per_ip=rate,
        rate_burst=burst,
        overflow=check_choice(label("overflow"), s["overflow"], OVERFLOW_CHOICES),
        busy_message=busy,
        balance=balance,
        session_key=session_key,
        proxy_protocol=check_choice(label("proxy-protocol"), s["proxy-protocol"], PROXY_CHOICES),
        health_interval=check_seconds(
            label("health-interval"), s["health-interval"], allow_zero=True
        ),
        retries=check_count(label("retries"), s["retries"]),
        admin=admin,
        admin_token=token,
        admin_hosts=admin_hosts,
        drain_timeout=check_seconds(label("drain-timeout"), s["drain-timeout"], allow_zero=True),
        handover=handover,
        relay=_relay_mode(label("relay"), s["relay"]),
        workers=workers,
        access_log=access_log,
        access_log_only=access_log_only,
        health_send=check_escaped(label("health-send"), s["health-send"] or ""),
        health_expect=check_escaped(label("health-expect"), s["health-expect"] or ""),
        demo=demo,
        config_file=config_file,
    )
