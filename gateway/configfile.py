"""
The TOML configuration file (C{--config FILE}): read with the standard
library's C{tomllib}, checked for unknown keys and value types, and turned
into the same raw settings the command line gives, so that both go through
the same checks (L{gateway.settings.build_config}) and give the same messages.

Keys are the long option names (C{max-connections = 100}); backends are an
array of tables::

    listen = ["tcp:8080"]
    balance = "hash"
    admin-token-file = "/etc/gateway/admin-token"

    [[backend]]
    name = "eu-1"                      # default: the endpoint string
    endpoint = "tcp:10.0.0.11:7777"
    weight = 2                         # default 1
    health-send = "PING\\r\\n"          # this backend's health check
    health-expect = "PONG"
    proxy-protocol = "v2"              # this backend's PROXY header
    pool = "api"                       # default "game"

Named pools are tables (C{[pool.api]}, keys in
L{gateway.poolconfig.POOL_KEYS}; C{[pool.game]} may give the game pool's
top-level settings instead) and HTTP routes an array of tables
(C{[[route]]}, keys in L{gateway.poolconfig.ROUTE_KEYS}).

Relative paths in the file (C{http-root}, C{access-log}, C{handover},
C{admin-token-file}, a route's C{root}) are relative to the file's folder, not to the folder the
gateway was started in.

Errors name the file and the key (and, for a TOML syntax error, the line and
column the parser reports); an unknown key is an error, never ignored.
"""

from __future__ import annotations

import difflib
import os
import reprlib
import tomllib
from dataclasses import dataclass, field
from typing import Any

from gateway.checks import ConfigError
from gateway.poolconfig import GAME_POOL_KEYS, POOL_KEYS, ROUTE_KEYS, RawPool, RawRoute
from gateway.queueconfig import QUEUE_CLASS_KEYS, RawQueueClass
from gateway.settings import RawBackend

__all__ = ["FILE_SETTINGS", "MAX_FILE_SIZE", "FileSettings", "read_config_file"]

MAX_FILE_SIZE = 1024 * 1024
"""The largest configuration file read (a larger one is refused unread)."""

_PATHS = ("http-root", "access-log", "handover", "admin-token-file", "cluster-password-file")
"""Settings that are paths, relative to the file's folder when not absolute."""

_NUMBER = "a number"
_INTEGER = "a whole number"
_STRING = "a string"
_BOOL = "true or false"
_DURATION = "a number of seconds or a string such as '10m'"

FILE_SETTINGS: dict[str, str] = {
    "listen": "a list of endpoint strings",
    "backend": "an array of tables ([[backend]])",
    "http-root": _STRING,
    "http-listing": _BOOL,
    "access-log-only": _BOOL,
    "demo": _BOOL,
    "sniff-timeout": _DURATION,
    "connect-timeout": _DURATION,
    "idle-timeout": _DURATION,
    "fin-timeout": _DURATION,
    "header-timeout": _DURATION,
    "drain-timeout": _DURATION,
    "max-connections": _INTEGER,
    "max-per-ip": _INTEGER,
    "max-sessions": _INTEGER,
    "rate-per-ip": _NUMBER,
    "rate-burst": _NUMBER,
    "overflow": _STRING,
    "busy-message": _STRING,
    "balance": _STRING,
    "session-key": _STRING,
    "proxy-protocol": _STRING,
    "health-interval": _DURATION,
    "health-send": _STRING,
    "health-expect": _STRING,
    "retries": _INTEGER,
    "admin": _STRING,
    "admin-token": _STRING,
    "admin-host": _STRING,
    "admin-token-file": _STRING,
    "access-log": _STRING,
    "handover": _STRING,
    "relay": _STRING,
    "workers": _INTEGER,
    "websocket": "a list of paths",
    "websocket-origin": "a list of origins",
    "websocket-max-message": _INTEGER,
    "websocket-ping": _DURATION,
    "access-log-starts": _BOOL,
    "log-format": _STRING,
    "pool": "tables ([pool.NAME])",
    "route": "an array of tables ([[route]])",
    "cache-control": _STRING,
    "cache-immutable": _STRING,
    "queue-size": _INTEGER,
    "queue-timeout": _DURATION,
    "queue-update": _DURATION,
    "queue-message": _STRING,
    "queue-class": "an array of tables ([[queue-class]])",
    "cluster": _STRING,
    "cluster-password-file": _STRING,
    "node-name": _STRING,
    "cluster-name": _STRING,
    "cluster-ttl": _DURATION,
    "cluster-timeout": _DURATION,
    "affinity-ttl": _DURATION,
    "cluster-max-sessions": _INTEGER,
    "cluster-required": _BOOL,
    "no-http-fast-path": _BOOL,
    "no-tcp-fast-path": _BOOL,
}
"""Every top-level key a file may have, and the type of its value."""

_LISTS = ("listen", "websocket", "websocket-origin")
"""Settings that are lists of strings (one string is a list of one)."""

BACKEND_KEYS: dict[str, str] = {
    "name": _STRING,
    "endpoint": _STRING,
    "weight": _INTEGER,
    "health-send": _STRING,
    "health-expect": _STRING,
    "proxy-protocol": _STRING,
    "pool": _STRING,
    "max-sessions": _INTEGER,
}
"""The keys of a C{[[backend]]} table."""

_POOL_TYPES: dict[str, str] = {key: FILE_SETTINGS.get(key, _STRING) for key in POOL_KEYS}
_POOL_TYPES["health-path"] = _STRING
_POOL_TYPES["health-status"] = _INTEGER

_ROUTE_TYPES: dict[str, str] = {
    "name": _STRING,
    "host": _STRING,
    "path": _STRING,
    "root": _STRING,
    "pool": _STRING,
    "bridge": _STRING,
    "listing": _BOOL,
    "strip-prefix": _BOOL,
    "max-body": _INTEGER,
    "timeout": _DURATION,
    "rate-per-ip": _NUMBER,
    "rate-burst": _NUMBER,
}
assert tuple(_ROUTE_TYPES) == ROUTE_KEYS


@dataclass
class FileSettings:
    """
    What a configuration file says, checked for keys and types only.

    @ivar path: the file, as given.
    @ivar values: option name to value: text for numbers and strings (as the
        command line would give them), a bool for flags, a list for C{listen}.
    @ivar backends: the backends, in the file's order (L{None}: the file has
        no C{backend} key).
    """

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    backends: list[RawBackend] | None = None
    pools: list[RawPool] = field(default_factory=list)
    routes: list[RawRoute] = field(default_factory=list)
    queue_classes: list[RawQueueClass] = field(default_factory=list)
    given_as: dict[str, str] = field(default_factory=dict)

    def label(self, key: str) -> str:
        """
        How error messages name C{key} of this file (a top-level setting
        given in C{[pool.game]}: as that table's key).
        """
        return f"{self.path}: {self.given_as.get(key, key)}"


def _shown(value: object) -> str:
    """
    A value as an error message shows it: its repr, bounded in depth and
    length, so that a deeply nested or huge value gives a short line (and
    no RecursionError).
    """
    shown = reprlib.Repr()  # keyword arguments only from Python 3.12
    shown.maxlevel, shown.maxstring, shown.maxother = 3, 60, 60
    return shown.repr(value)


def _scalar(label: str, kind: str, value: object) -> str | bool:
    """
    Check a value's type and turn it into what the command line would give.
    """
    if kind == _BOOL:
        if isinstance(value, bool):
            return value
    elif kind == _STRING:
        if isinstance(value, str):
            return value
    elif kind == _INTEGER:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    elif kind == _DURATION and isinstance(value, str):
        # With a unit ('10m'): check_seconds reads it, as on the command line.
        return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{label}: must be {kind}, got {_shown(value)}")


def _backend(settings: FileSettings, index: int, table: object) -> RawBackend:
    label = f"{settings.path}: backend[{index}]"
    if isinstance(table, str):
        return RawBackend(label=label, endpoint=table)
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: must be a table with an endpoint, got {_shown(table)}")
    unknown = sorted(set(table) - set(BACKEND_KEYS))
    if unknown:
        raise _unknown_key(label, unknown[0], BACKEND_KEYS, "a backend")
    if "endpoint" not in table:
        raise ConfigError(f'{label}: needs an endpoint, e.g. endpoint = "tcp:10.0.0.5:7000"')
    checked = {
        key: _scalar(f"{label}.{key}", BACKEND_KEYS[key], value) for key, value in table.items()
    }
    if "name" in checked:
        label = f"{settings.path}: backend {checked['name']!r}"
    return RawBackend(
        label=label,
        endpoint=str(checked["endpoint"]),
        name=str(checked["name"]) if "name" in checked else None,
        weight=str(checked["weight"]) if "weight" in checked else None,
        health_send=str(checked["health-send"]) if "health-send" in checked else None,
        health_expect=str(checked["health-expect"]) if "health-expect" in checked else None,
        proxy_protocol=str(checked["proxy-protocol"]) if "proxy-protocol" in checked else None,
        pool=str(checked.get("pool", "game")),
        max_sessions=str(checked["max-sessions"]) if "max-sessions" in checked else None,
    )


def _unknown_key(label: str, key: str, keys: dict[str, str], what: str) -> ConfigError:
    """
    The error of an unknown key in a table: with the key it was likely meant
    to be, or a reminder that a top-level setting written after a table
    belongs to that table in TOML.
    """
    hint = ""
    close = difflib.get_close_matches(key.replace("_", "-"), list(keys), n=1, cutoff=0.75)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    elif key in FILE_SETTINGS:
        hint = f"; {key} is a top-level setting: put it before the file's first [table]"
    return ConfigError(f"{label}: unknown key {key!r} ({what} has: {', '.join(keys)}){hint}")


def _table(label: str, value: object, keys: dict[str, str], what: str) -> dict[str, str | bool]:
    """
    A table's values, checked for known keys and types.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: must be a table, got {_shown(value)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise _unknown_key(label, unknown[0], keys, what)
    return {key: _scalar(f"{label}.{key}", keys[key], item) for key, item in value.items()}


def _pools(settings: FileSettings, value: object) -> None:
    """
    The C{[pool.NAME]} tables: C{[pool.game]}'s keys become top-level
    settings (not both), every other table a L{RawPool}.
    """
    label = settings.label("pool")
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: must be {FILE_SETTINGS['pool']}, got {_shown(value)}")
    for name, table in value.items():
        if name == "game":
            game_types = {key: _POOL_TYPES[key] for key in GAME_POOL_KEYS}
            for key, item in _table(f"{label}.game", table, game_types, "[pool.game]").items():
                if key in settings.values:
                    raise ConfigError(
                        f"{label}.game.{key}: also given as the top-level {key}; give it once"
                    )
                settings.values[key] = item
                settings.given_as[key] = f"pool.game.{key}"
            continue
        checked = _table(f"{label}.{name}", table, _POOL_TYPES, "a pool")
        settings.pools.append(
            RawPool(
                label=f"{label}.{name}", name=name, values={k: str(v) for k, v in checked.items()}
            )
        )


def _routes(settings: FileSettings, value: object) -> None:
    """
    The C{[[route]]} tables, as L{RawRoute}s (a relative C{root} made
    relative to the file's folder).
    """
    label = settings.label("route")
    if not isinstance(value, list):
        raise ConfigError(f"{label}: must be {FILE_SETTINGS['route']}, got {_shown(value)}")
    folder = os.path.dirname(os.path.abspath(settings.path))
    for index, table in enumerate(value):
        checked = _table(f"{label}[{index}]", table, _ROUTE_TYPES, "a route")
        root = checked.get("root")
        if isinstance(root, str) and root and not os.path.isabs(root):
            checked["root"] = os.path.join(folder, root)
        shown = f"{label}[{index}]"
        if isinstance(checked.get("name"), str):
            shown = f"{settings.path}: route {checked['name']!r}"
        settings.routes.append(RawRoute(label=shown, values=dict(checked)))


def _queue_classes(settings: FileSettings, value: object) -> None:
    """
    The C{[[queue-class]]} tables, as L{RawQueueClass}es: known keys only
    (their values are checked by L{gateway.queueconfig.check_queue_classes}).
    """
    label = settings.label("queue-class")
    if not isinstance(value, list):
        raise ConfigError(f"{label}: must be {FILE_SETTINGS['queue-class']}, got {_shown(value)}")
    for index, table in enumerate(value):
        shown = f"{label}[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{shown}: must be a table, got {_shown(table)}")
        if isinstance(table.get("name"), str):
            shown = f"{settings.path}: queue-class {table['name']!r}"
        unknown = sorted(set(table) - set(QUEUE_CLASS_KEYS))
        if unknown:
            raise _unknown_key(shown, unknown[0], QUEUE_CLASS_KEYS, "a queue class")
        settings.queue_classes.append(RawQueueClass(label=shown, values=dict(table)))


def read_config_file(path: str) -> FileSettings:
    """
    Read and check a configuration file.

    @raise ConfigError: it cannot be read, is larger than L{MAX_FILE_SIZE},
        is not valid TOML (not UTF-8, a syntax error, nested too deeply, an
        integer too long), has an unknown key or a value of the wrong type;
        the message (one line) names the file, and the key where there is one.
    """
    try:
        with open(path, "rb") as file:
            # One byte more than allowed tells a file that is too large,
            # without reading all of it (--config /dev/zero).
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"--config: cannot read {path!r}: {reason}") from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"{path}: larger than {MAX_FILE_SIZE // 1024} KiB, not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"{path}: not valid TOML: not UTF-8 text (byte {data[error.start]:#04x} "
            f"on line {line})"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables by recursion.
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as error:
        # int() in tomllib: an integer of more than 4300 digits.
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    settings = FileSettings(path=path)
    pools: object = None
    for key, value in document.items():
        if key not in FILE_SETTINGS:
            hint = ""
            if key.replace("_", "-") in FILE_SETTINGS:
                hint = f" (did you mean {key.replace('_', '-')!r}?)"
            elif key in ("backends", "routes"):
                hint = f" (did you mean [[{key[:-1]}]]?)"
            elif key == "queue-classes":
                hint = " (did you mean [[queue-class]]?)"
            elif key == "pools":
                hint = " (did you mean [pool.NAME]?)"
            raise ConfigError(f"{path}: unknown setting {key!r}{hint}")
        label = settings.label(key)
        if key in _LISTS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{label}: must be {FILE_SETTINGS[key]}, got {_shown(value)}")
            settings.values[key] = list(items)
        elif key == "backend":
            if not isinstance(value, list):
                raise ConfigError(f"{label}: must be {FILE_SETTINGS[key]}, got {_shown(value)}")
            settings.backends = [_backend(settings, i, table) for i, table in enumerate(value)]
        elif key == "pool":
            pools = value  # after the top-level settings, which [pool.game] must not repeat
        elif key == "route":
            _routes(settings, value)
        elif key == "queue-class":
            _queue_classes(settings, value)
        else:
            settings.values[key] = _scalar(label, FILE_SETTINGS[key], value)
    if pools is not None:
        _pools(settings, pools)
    folder = os.path.dirname(os.path.abspath(path))
    for key in _PATHS:
        value = settings.values.get(key)
        if isinstance(value, str) and value != "-" and not os.path.isabs(value):
            settings.values[key] = os.path.join(folder, value)
    return settings
