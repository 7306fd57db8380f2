"""
The waiting room's settings, checked: C{--queue-size}, C{--queue-timeout},
C{--queue-update}, the C{--queue-message} template (L{check_queue_message})
and the file's C{[[queue-class]]} tables (L{RawQueueClass}, checked into
L{QueueClassSpec}s), with their cross-checks against the backends and the
worker processes (L{with_queue}, called last by
L{gateway.settings.build_config}).  Each check raises L{ConfigError}, one
line naming the option, or the file and table and key.

Only the settings live here: the room itself (who waits, who is admitted
next) is the session's and the pool's.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import unicodedata
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Protocol

from gateway.checks import ConfigError, check_count, check_line, check_pattern, check_seconds
from gateway.config import (
    DEMO_MAX_SESSIONS,
    DEMO_QUEUE_MESSAGE,
    DEMO_QUEUE_SIZE,
    GatewayConfig,
    QueueClassSpec,
)

__all__ = [
    "MAX_PRIORITY",
    "MAX_QUEUE_MESSAGE",
    "QUEUE_CLASS_KEYS",
    "QUEUE_FIELDS",
    "QueueClassSpec",
    "RawQueueClass",
    "Source",
    "check_queue_classes",
    "check_queue_message",
    "with_queue",
]

QUEUE_FIELDS = ("position", "length", "eta")
"""The fields a C{--queue-message} template may have, each as C{{name}}."""

MAX_QUEUE_MESSAGE = 512
"""The longest C{--queue-message} template, in bytes of UTF-8."""

MAX_PRIORITY = 1000
"""A class's priority is -L{MAX_PRIORITY} to L{MAX_PRIORITY}."""

QUEUE_CLASS_KEYS: dict[str, str] = {
    "name": "a string",
    "priority": "a whole number",
    "reserved": "a whole number",
    "from": "a CIDR string or a list of them",
    "first-line": "a string",
}
"""The keys of a C{[[queue-class]]} table, and the type of each value."""

_SHORT = 40
"""How many characters of a bad value a message quotes."""


class Source(Protocol):
    """
    Raw settings as L{gateway.settings.Settings} gives them.
    """

    queue_classes: list[RawQueueClass]
    values: dict[str, Any]

    def __getitem__(self, name: str) -> Any: ...

    def label(self, name: str) -> str: ...

    def other(self, name: str, by: str) -> str: ...


@dataclass(frozen=True, slots=True)
class RawQueueClass:
    """
    A C{[[queue-class]]} table as the file gives it: its keys known, its
    values as TOML gave them (checked by L{check_queue_classes}).

    @ivar label: how messages name it, e.g. C{gateway.toml: queue-class 'vip'}.
    """

    label: str
    values: dict[str, Any] = field(default_factory=dict)


def check_queue_message(option: str, text: str) -> str:
    """
    Check a C{--queue-message} template: one line (the gateway appends
    CRLF) of at most L{MAX_QUEUE_MESSAGE} bytes of UTF-8 whose only fields
    are C{{position}}, C{{length}} and C{{eta}}, without a format spec or
    conversion; C{{{} and C{}}} are literal braces.  A template that passes
    formats with C{str.format(position=..., length=..., eta=...)}.

    @raise ConfigError: anything else, naming the option and the problem.
    """
    for index, char in enumerate(text):
        kind = unicodedata.category(char)
        if kind == "Cs":
            raise ConfigError(f"{option}: not UTF-8 text (character {index + 1})")
        if kind in ("Cc", "Zl", "Zp"):
            raise ConfigError(
                f"{option}: one line without control characters (the gateway ends it "
                f"with CRLF), got U+{ord(char):04X} at character {index + 1}"
            )
    if not text:
        raise ConfigError(f"{option}: empty (leave it out for a silent wait)")
    size = len(text.encode("utf-8"))
    if size > MAX_QUEUE_MESSAGE:
        raise ConfigError(f"{option}: at most {MAX_QUEUE_MESSAGE} bytes of UTF-8, got {size}")
    index = 0
    while index < len(text):
        char = text[index]
        if char in "{}" and text.startswith(char * 2, index):
            index += 2
        elif char == "}":
            raise ConfigError(
                f"{option}: an unbalanced '}}' at character {index + 1} (write }}}} for a "
                "literal brace)"
            )
        elif char == "{":
            index = _field(option, text, index)
        else:
            index += 1
    return text


def _field(option: str, text: str, start: int) -> int:
    """
    Check the field that opens at C{text[start]}; where the text goes on.
    """
    end = start + 1
    while end < len(text) and text[end] not in "{}":
        end += 1
    if end == len(text) or text[end] == "{":
        raise ConfigError(
            f"{option}: an unbalanced '{{' at character {start + 1} (write {{{{ for a "
            "literal brace)"
        )
    inside = text[start + 1 : end]
    fields = ", ".join(f"{{{name}}}" for name in QUEUE_FIELDS)
    cut = min((inside.find(mark) for mark in ":!.[" if mark in inside), default=len(inside))
    name, rest = inside[:cut], inside[cut:]
    shown = _short(text[start : end + 1])
    if not name or name.isdigit():
        raise ConfigError(f"{option}: a positional field {shown}: name one of {fields}")
    if name not in QUEUE_FIELDS:
        close = difflib.get_close_matches(name.lower(), QUEUE_FIELDS, n=1, cutoff=0.6)
        hint = f"; did you mean {{{close[0]}}}?" if close else ""
        raise ConfigError(f"{option}: unknown field {shown} (the fields: {fields}){hint}")
    if rest:
        what = "a format spec or conversion" if rest[0] in ":!" else "an attribute or index"
        raise ConfigError(
            f"{option}: {what} in {shown}: the fields are plain {fields} (the gateway "
            "formats them)"
        )
    return end + 1


def _short(text: str) -> str:
    """
    C{text} as a message quotes it: at most L{_SHORT} characters.
    """
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."


def check_queue_classes(raw_classes: list[RawQueueClass]) -> tuple[QueueClassSpec, ...]:
    """
    Check the C{[[queue-class]]} tables: each with a unique name, a
    priority, and C{from} or C{first-line} or both; sorted by priority,
    highest first (in the file's order among equals).
    """
    classes: list[QueueClassSpec] = []
    for raw in raw_classes:
        spec = _queue_class(raw)
        if any(other.name == spec.name for other in classes):
            raise ConfigError(f"{raw.label}.name: the name {spec.name!r} is given twice")
        classes.append(spec)
    return tuple(sorted(classes, key=lambda spec: -spec.priority))


def _queue_class(raw: RawQueueClass) -> QueueClassSpec:
    """
    One queue class, checked.
    """
    label, values = raw.label, raw.values
    for key in ("name", "first-line"):
        if key in values and not isinstance(values[key], str):
            raise ConfigError(f"{label}.{key}: must be a string, got {_short(repr(values[key]))}")
    for key in ("name", "priority"):
        if key not in values:
            raise ConfigError(f"{label}: needs {key} (a queue class has a name and a priority)")
    name = check_line(f"{label}.name", values["name"])
    if not name:
        raise ConfigError(f"{label}.name: must not be empty")
    priority = _integer(f"{label}.priority", values["priority"])
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise ConfigError(
            f"{label}.priority: must be {-MAX_PRIORITY} to {MAX_PRIORITY} (unmatched players "
            f"have 0), got {priority}"
        )
    reserved = _integer(f"{label}.reserved", values.get("reserved", 0))
    if reserved < 0:
        raise ConfigError(f"{label}.reserved: must not be negative, got {reserved}")
    if "from" not in values and "first-line" not in values:
        raise ConfigError(
            f'{label}: needs from (client addresses, e.g. "10.0.0.0/8") or first-line '
            "(a regular expression on the client's first line), or both"
        )
    networks = _networks(f"{label}.from", values["from"]) if "from" in values else ()
    first_line = None
    if "first-line" in values:
        pattern = check_pattern(f"{label}.first-line", values["first-line"])
        first_line = re.compile(pattern.encode())
    return QueueClassSpec(
        name=name, priority=priority, reserved=reserved, networks=networks, first_line=first_line
    )


def _integer(label: str, value: object) -> int:
    """
    A TOML whole number (not a bool, which Python counts as one).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{label}: must be a whole number, got {_short(repr(value))}")
    return value


def _networks(label: str, value: object) -> tuple[IPv4Network | IPv6Network, ...]:
    """
    C{from}: one CIDR string or a non-empty list of them, IPv4 or IPv6,
    without host bits set (C{10.0.0.1/8} is refused: C{10.0.0.0/8} was
    probably meant, or C{10.0.0.1/32}); a bare address is one host.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise ConfigError(
            f'{label}: must be {QUEUE_CLASS_KEYS["from"]} (e.g. "10.0.0.0/8" or '
            f'["10.0.0.0/8", "2001:db8::/32"]), got {_short(repr(value))}'
        )
    networks = []
    for item in items:
        try:
            networks.append(ip_network(item, strict=True))
        except ValueError as error:
            raise ConfigError(f"{label}: {_short(repr(item))}: {error}") from None
    return tuple(networks)


def with_queue(s: Source, config: GatewayConfig) -> GatewayConfig:
    """
    C{config} with the waiting room's settings, checked against its
    backends and worker processes: a room needs one process (for now) and
    a backend with a session limit (else nobody would ever wait); classes
    need a room, and on every backend with a limit their reserved slots
    must leave one for everyone else.
    """
    label = s.label
    size = check_count(label("queue-size"), s["queue-size"])
    timeout = check_seconds(label("queue-timeout"), s["queue-timeout"], allow_zero=False)
    update = check_seconds(label("queue-update"), s["queue-update"], allow_zero=False)
    message = s["queue-message"]
    demo_limit = 0
    if config.demo and config.workers == 1:
        # The demo shows the waiting room: small game servers, a room, a message.
        given = s.values
        demo_limit = (
            check_count(label("max-sessions"), s["max-sessions"])
            if "max-sessions" in given
            else DEMO_MAX_SESSIONS
        )
        if "queue-size" not in given and demo_limit:
            size = DEMO_QUEUE_SIZE
            if message is None:
                message = DEMO_QUEUE_MESSAGE
    if message is not None:
        message = check_queue_message(label("queue-message"), message)
    classes = check_queue_classes(s.queue_classes)
    if size and config.workers > 1:
        raise ConfigError(
            f"{label('queue-size')}: not with {s.other('workers', 'queue-size')} above 1 yet "
            "(each worker process would keep a waiting room of its own)"
        )
    if size and not config.demo and not any(spec.max_sessions for spec in config.backends):
        raise ConfigError(
            f"{label('queue-size')}: no backend has a session limit, so nobody would ever "
            f"wait: give {s.other('max-sessions', 'queue-size')} (or max-sessions on a "
            "[[backend]])"
        )
    if classes and not size:
        raise ConfigError(
            f"{label('queue-class')}: [[queue-class]] tables need a waiting room: "
            f"{s.other('queue-size', 'queue-class')} above 0"
        )
    reserved = sum(spec.reserved for spec in classes)
    limits = [(backend.name, backend.max_sessions) for backend in config.backends]
    limits += [("each demo game server", demo_limit)] if demo_limit else []
    for name, limit in limits:
        if reserved and limit and reserved >= limit:
            raise ConfigError(
                f"{label('queue-class')}: the classes reserve {reserved} slots in all, but "
                f"{name if name.startswith('each demo') else f'backend {name!r}'} takes at "
                f"most {limit} sessions (max-sessions): reserve fewer, so that others can "
                "play there too"
            )
    return dataclasses.replace(
        config,
        queue_size=size,
        queue_timeout=timeout,
        queue_update=update,
        queue_message=message,
        queue_classes=classes,
        demo_max_sessions=demo_limit,
    )
