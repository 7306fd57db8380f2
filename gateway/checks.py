"""
The checks every source of settings shares: one value as written in, the
value it stands for (or L{ConfigError}) out.

The command line (L{gateway.options}) and the TOML file (L{gateway.configfile})
both go through these, by way of L{gateway.settings.build_config}, so that a
bad value gives the same message wherever it comes from.  Each check raises
L{ConfigError} with a message that starts with the setting's label (C{--name},
or the file and key), because that message is what an operator sees when
start-up refuses a bad value.

Endpoint strings are parsed (C{serverFromString}, C{clientFromString}), never
listened on or connected to; paths are looked at, never created.
"""

from __future__ import annotations

import datetime
import math
import os
import re
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.endpoints import _parse, clientFromString, serverFromString
from twisted.internet.interfaces import IReactorCore

from gateway.front.pemfolder import FolderError, load_folder
from gateway.front.tls import is_tls_front, parse_tls_front

__all__ = [
    "MAX_SECONDS",
    "MIN_SECONDS",
    "TOKEN_MAX_LINE",
    "TOKEN_MIN_LENGTH",
    "ConfigError",
    "check_choice",
    "check_client_endpoint",
    "check_count",
    "check_directory",
    "check_escaped",
    "check_line",
    "check_rate",
    "check_seconds",
    "check_server_endpoint",
    "check_pattern",
    "check_session_key",
    "check_token",
    "check_writable_file",
    "endpoint_hint",
    "parse_duration",
    "read_token_file",
]

_T = TypeVar("_T")


class ConfigError(ValueError):
    """
    A setting is invalid.  The message names the setting and says what was wrong.
    """


MIN_SECONDS = 0.1
"""The shortest duration a seconds setting takes (0 aside, where it means
"off"): below it a timeout or an interval is a busy loop, not a setting."""

MAX_SECONDS = 86400.0
"""The longest duration a seconds setting takes (a day): longer is no sane
timeout, and huge values (C{1e300}) only hide a mistake."""


DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
"""The units a duration may end with, and their length in seconds (no unit: seconds)."""

_DURATION = re.compile(r"(?P<number>.*?)\s*(?P<unit>ms|s|m|h|d)", re.ASCII)

_DURATION_WHAT = "a number of seconds or a duration such as 500ms, 1.5s, 10m or 2h"


def parse_duration(option: str, text: str) -> float:
    """
    Parse a duration: a number of seconds (C{30}, C{1.5}), or a number and
    one of L{DURATION_UNITS} (C{500ms}, C{1.5s}, C{10m}, C{2h}, C{1d}).

    @param option: the setting's name, for the error message.
    @param text: what the user wrote.
    @return: the duration in seconds, not checked against any bound (it may
        be negative).
    @raise ConfigError: neither a finite number nor a number with a unit.
    """
    written = _DURATION.fullmatch(text.strip())
    if written is None:
        return _finite(option, text, _DURATION_WHAT)
    # float() would take "nan", "inf" or "1_0"; a unit goes after a plain
    # decimal number only.
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", written["number"], re.ASCII):
        raise ConfigError(f"{option}: expected {_DURATION_WHAT}, got {text!r}")
    value = float(written["number"]) * DURATION_UNITS[written["unit"]]
    if not math.isfinite(value):
        raise ConfigError(f"{option}: expected a finite number, got {text!r}")
    return value


def check_seconds(option: str, text: str, *, allow_zero: bool) -> float:
    """
    Parse a duration (L{parse_duration}: seconds, or with a unit such as
    C{10m}) and check it: L{MIN_SECONDS} to L{MAX_SECONDS}, or 0 where that
    is allowed (it turns the timeout or the checks off).

    @param option: the setting's name, for the error message.
    @param text: what the user wrote.
    @param allow_zero: whether 0 (meaning "off") is allowed.
    @return: the duration in seconds.
    @raise ConfigError: not a finite duration, negative, 0 where not allowed,
        or out of bounds; the message names the option and the bound.
    """
    value = parse_duration(option, text)
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


def check_writable_file(option: str, path: str, *, check_access: bool = True) -> str:
    """
    Check that a file can be appended to (or created): C{-} stands for
    standard output.

    @param check_access: whether this process's permissions count too (not
        only that the path could be a file).

    @return: the absolute path, or C{-}.
    @raise ConfigError: it is a folder, its folder does not exist, or it
        cannot be written.
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
    if check_access and not os.access(target, os.W_OK):
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


def _parse_endpoint(
    option: str,
    description: str,
    kind: str,
    parse: Callable[[], _T],
    errors: type[Exception] = Exception,
) -> _T:
    """
    Run an endpoint string's parser, turning what it raises into a
    L{ConfigError}.

    @param kind: C{"server"} or C{"client"}, for the message.
    @param parse: parses C{description}; it must not listen or connect.
    @param errors: the exceptions that mean the string does not parse
        (Twisted's parsers raise anything).
    @return: what C{parse} returns.
    @raise ConfigError: C{parse} raised one of C{errors}.
    """
    try:
        return parse()
    except errors as error:
        reason = _describe(error)
        hint = endpoint_hint(description, kind) if reason.startswith("Unknown endpoint") else None
        raise ConfigError(
            f"{option}: cannot use {description!r} as a {kind} endpoint: {reason}"
            + (f"; did you mean '{hint}'?" if hint else "")
        ) from None


_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[\w.*-]*)):(?P<port>\d{1,5})")


def endpoint_hint(description: str, kind: str) -> str | None:
    """
    The endpoint string someone who wrote C{description} probably meant:
    C{8080} or C{HOST:8080} as a server are C{tcp:8080} (on C{HOST}'s
    interface), C{HOST:7777} as a client is C{tcp:HOST:7777}.  Only a
    suggestion for a message: such a string is never accepted as it is.

    @param kind: C{"server"} or C{"client"}.
    @return: the suggestion, or L{None} when there is no likely one.
    """
    text = description.strip()
    written = _HOST_PORT.fullmatch(text if ":" in text else f":{text}")
    if written is None or not 0 < int(written["port"]) <= 65535:
        return None
    port, ipv6 = written["port"], written["ipv6"]
    # Twisted's endpoint strings escape the colons of an IPv6 address.
    host = ipv6.replace(":", "\\:") if ipv6 else written["host"]
    if kind == "client":
        return f"tcp:{host or 'localhost'}:{port}"
    family = "tcp6" if ipv6 else "tcp"
    return f"{family}:{port}" + (f":interface={host}" if host and host != "*" else "")


_PORT_FIELDS = {"server": ("tcp", "tcp6", "ssl"), "client": ("tcp", "ssl", "tls")}
"""The endpoint types with a TCP port, for a server and for a client (the
port is the first argument of a server's, the second of a client's)."""


def _check_port(option: str, description: str, kind: str) -> None:
    """
    Refuse a TCP port out of range (C{tcp:70000}), which Twisted's parsers
    take and only binding or connecting would refuse.  Port 0 is a server's
    "any free port", never a client's.

    @raise ConfigError: the port is out of range.
    """
    args, kwargs = _parse(
        description.removeprefix("haproxy:") if kind == "server" else description
    )
    position = 1 if kind == "server" else 2
    if not args or args[0] not in _PORT_FIELDS[kind]:
        return
    text = kwargs.get("port", args[position] if len(args) > position else None)
    lowest = 0 if kind == "server" else 1
    try:
        port = int(text or "")
    except ValueError:
        return  # no port, or one the parser itself refuses
    if not lowest <= port <= 65535:
        raise ConfigError(
            f"{option}: {description!r}: port {port} is out of range ({lowest} to 65535)"
        )


def _check_not_empty(option: str, description: str) -> None:
    """
    Refuse an endpoint string that is empty or only spaces.

    @raise ConfigError: it is.
    """
    if not description.strip():
        raise ConfigError(f"{option}: empty endpoint")


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
    @raise ConfigError: the string is empty or does not parse, or (a C{tls:}
        front) its PEM folder is not a folder or cannot be served.
    """
    _check_not_empty(option, description)
    text = description.removeprefix("haproxy:")
    if is_tls_front(text):
        # Not through Twisted's tls: parser, which reads the folder and never
        # returns for some (see gateway.front.tls).
        _check_tls_front(option, description, text, read_folder=read_folders)
        return description
    _parse_endpoint(option, description, "server", lambda: serverFromString(reactor, description))
    _check_port(option, description, "server")
    return description


def _check_tls_front(option: str, description: str, text: str, *, read_folder: bool) -> None:
    """
    Check a C{tls:} front: the string parses, and (if C{read_folder}) its PEM
    folder can be served now (else only that it is a folder).

    @raise ConfigError: it does not; the message names the file.
    """
    front = _parse_endpoint(
        option, description, "server", lambda: parse_tls_front(text), errors=ValueError
    )
    if not 0 <= front.port <= 65535:
        raise ConfigError(
            f"{option}: {description!r}: port {front.port} is out of range (0 to 65535)"
        )
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
    @raise ConfigError: the string is empty or does not parse.
    """
    _check_not_empty(option, description)
    _parse_endpoint(option, description, "client", lambda: clientFromString(reactor, description))
    _check_port(option, description, "client")
    return description


def check_pattern(option: str, pattern: str) -> str:
    """
    Check that C{pattern} is a regular expression (matched against bytes).

    @raise ConfigError: it does not compile.
    """
    try:
        re.compile(pattern.encode())
    except (re.error, UnicodeEncodeError, OverflowError) as error:
        raise ConfigError(f"{option}: not a valid regular expression: {error}") from None
    except RecursionError:
        raise ConfigError(f"{option}: not a valid regular expression: nested too deeply") from None
    return pattern
