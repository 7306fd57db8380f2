"""
The command line's help for people: C{--help} grouped by topic, a
did-you-mean for a misspelt option, and the version C{--version} prints.

Twisted's L{usage.Options} lists every option in one alphabetical list,
built from C{optParameters}, C{optFlags} and the C{opt_*} methods' docstrings.
L{grouped_usage} builds the same entries (the same help texts and defaults,
through Twisted's own L{usage.docMakeChunks}) but lays them out under the
headings of L{HELP_GROUPS}, in the order an operator meets them.  The
option lists themselves stay where they are, in L{gateway.options}, so that
options added there need only a line here; an option no group names is
still listed, under "Other options", and a test keeps that group empty.
"""

from __future__ import annotations

import difflib
import os
import re
import textwrap
from collections.abc import Iterable
from typing import Any

from twisted.python import usage

__all__ = ["HELP_GROUPS", "OTHER_GROUP", "did_you_mean", "grouped_usage", "package_version"]

HELP_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Start and check", ("config", "check-config", "demo", "help", "version")),
    ("Fronts", ("listen",)),
    (
        "Backends and pools",
        (
            "backend",
            "balance",
            "session-key",
            "retries",
            "health-interval",
            "health-send",
            "health-expect",
            "proxy-protocol",
            "relay",
            "no-tcp-fast-path",
        ),
    ),
    (
        "Limits",
        (
            "max-connections",
            "overflow",
            "max-per-ip",
            "max-sessions",
            "rate-per-ip",
            "rate-burst",
            "busy-message",
        ),
    ),
    ("Waiting room", ("queue-size", "queue-timeout", "queue-update", "queue-message")),
    (
        "Timeouts (a plain number is seconds; or with a unit: 500ms, 1.5s, 10m, 2h)",
        (
            "sniff-timeout",
            "connect-timeout",
            "header-timeout",
            "idle-timeout",
            "fin-timeout",
            "drain-timeout",
        ),
    ),
    (
        "Admin and logs",
        (
            "admin",
            "admin-token",
            "admin-token-file",
            "admin-host",
            "access-log",
            "access-log-only",
            "access-log-starts",
            "log-format",
        ),
    ),
    ("Process", ("workers", "handover")),
    ("WebSocket", ("websocket", "websocket-origin", "websocket-max-message", "websocket-ping")),
    (
        "HTTP and files",
        ("http-root", "http-listing", "cache-control", "cache-immutable", "no-http-fast-path"),
    ),
    (
        "Cluster",
        (
            "cluster",
            "cluster-password-file",
            "node-name",
            "cluster-name",
            "cluster-ttl",
            "cluster-timeout",
            "affinity-ttl",
            "cluster-max-sessions",
            "cluster-required",
        ),
    ),
)
"""The headings of C{--help}, each with its options in the order listed."""

OTHER_GROUP = "Other options"
"""The heading of the options no group of L{HELP_GROUPS} names."""

_FOOTER = (
    "Durations (every timeout and interval, also in the --config file) take a "
    "unit: ms, s, m, h or d (500ms, 1.5s, 10m, 2h); a plain number is seconds. "
    "twistd's own options (-n, -u, -g, --logfile, --pidfile, ...) go before "
    "'gateway': see twistd --help."
)


def _entries(options: usage.Options) -> dict[str, dict[str, Any]]:
    """
    Each option's entry for L{usage.docMakeChunks}, by long name, built as
    L{usage.Options.getUsage} builds them.
    """
    short = {long: key for key, long in options.synonyms.items() if len(key) == 1}
    entries = {}
    for written in options.longOpt:
        name = written.removesuffix("=")
        entries[name] = {
            "long": name,
            "short": short.get(name),
            "doc": options.docs[name],
            "optType": "parameter" if written.endswith("=") else "flag",
            "default": options.defaults.get(name),
        }
    return entries


def grouped_usage(options: usage.Options, width: int | None = None) -> str:
    """
    The text of C{--help} after its synopsis: the description, then every
    option once, under the heading of its group in L{HELP_GROUPS}.

    @param options: the parser whose options are listed.
    @param width: the width to wrap to (default: C{$COLUMNS}, else 80).
    """
    width = width or int(os.environ.get("COLUMNS", "80"))
    entries = _entries(options)
    groups = [
        (heading, [name for name in names if name in entries]) for heading, names in HELP_GROUPS
    ]
    named = {name for _, names in groups for name in names}
    groups.append((OTHER_GROUP, [name for name in entries if name not in named]))
    description = str(getattr(options, "longdesc", "") or "")
    parts = ["\n".join(textwrap.wrap(description, width)) + "\n"] if description else []
    for heading, names in groups:
        if names:
            parts.append(f"{heading}:\n" + _chunks([entries[name] for name in names], width))
    parts.append("\n".join(textwrap.wrap(_FOOTER, width)) + "\n")
    return "\n".join(parts)


def _chunks(listed: list[dict[str, Any]], width: int) -> str:
    """
    L{usage.docMakeChunks} for one group, in the order listed: it aligns
    the group's help texts in one column, but sorts by name (C{listed} in
    place), so its chunks, one per entry, are put back in order by name.
    """
    order = [entry["long"] for entry in listed]
    chunks = dict(
        zip((entry["long"] for entry in listed), usage.docMakeChunks(listed, width), strict=True)
    )
    return "".join(chunks[name] for name in order)


_NOT_RECOGNIZED = re.compile(r"option --(?P<name>[^\s=]+) not recognized")


def did_you_mean(message: str, names: Iterable[str]) -> str:
    """
    Add the likely option to getopt's "option --NAME not recognized".

    @param message: the parse error's message.
    @param names: the long options there are (a trailing C{=} is ignored).
    @return: the message, with C{"; did you mean --OTHER?"} when one option
        is close to the unknown one, else unchanged.
    """
    unknown = _NOT_RECOGNIZED.fullmatch(message)
    if unknown is None:
        return message
    known = [name.removesuffix("=") for name in names]
    close = difflib.get_close_matches(unknown["name"].lower().replace("_", "-"), known, n=1)
    return f"{message}; did you mean --{close[0]}?" if close else message


def package_version(distribution: str = "gateway") -> str:
    """
    The gateway's version: the installed distribution's (its metadata),
    else the package's C{__version__} (run from a source tree that is not
    installed).
    """
    # Imported here: importlib.metadata (about 0.5 MB at start, issue 18) is
    # needed only by --version and the admin's /metrics, not by a plain start.
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        from gateway import __version__

        return __version__
