"""
The settings' two sources merged: the C{--config} file as it is now, and
over it what the command line gave (L{merge_sources}), into the
L{Settings} that L{gateway.settings.build_config} checks.

The command line wins: each setting given there replaces the file's, and a
list given there (C{--listen}, C{--backend}) replaces the file's whole list;
the command line's backends replace the file's game backends only, not its
other pools'.  L{gateway.options} calls this at start and again on SIGHUP,
when the file is read again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.backendconfig import RawBackend
from gateway.config import GAME_POOL
from gateway.poolconfig import RawPool, RawRoute
from gateway.queueconfig import RawQueueClass
from gateway.settings import Settings

__all__ = ["CommandLine", "merge_sources"]


@dataclass(frozen=True, slots=True)
class CommandLine:
    """
    What the command line gave.

    @ivar values: each option given (by name, C{max-connections}) with its
        value, but for C{--config} and C{--check-config}.
    @ivar defaults: the value of each option that was not given.
    @ivar listen: the C{--listen} fronts, in order.
    @ivar backends: the C{--backend} endpoints, in order.
    @ivar websocket: the C{--websocket} paths.
    @ivar origins: the C{--websocket-origin} origins.
    """

    values: Mapping[str, Any]
    defaults: Mapping[str, Any]
    listen: Sequence[str] = ()
    backends: Sequence[str] = ()
    websocket: Sequence[str] = ()
    origins: Sequence[str] = ()


def merge_sources(path: str | None, given: CommandLine) -> Settings:
    """
    The settings of the file at C{path} (if any), the command line's over
    them.

    @raise gateway.checks.ConfigError: the file cannot be read or parsed.
    """
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    backends: list[RawBackend] = []
    pools: list[RawPool] = []
    routes: list[RawRoute] = []
    queue_classes: list[RawQueueClass] = []
    if path is not None:
        from gateway.configfile import read_config_file

        file = read_config_file(path)
        values.update(file.values)
        labels.update({key: file.label(key) for key in file.values})
        backends = list(file.backends or [])
        pools, routes = file.pools, file.routes
        queue_classes = file.queue_classes
        labels["queue-class"] = file.label("queue-class")
        if file.backends is not None:
            labels["backend"] = file.label("backend")
        else:
            labels["backend"] = f"--backend (or [[backend]] in {path})"
    for name, value in given.values.items():
        values[name] = value
        labels[name] = f"--{name}"
    # The two ways of giving the admin token: the command line's replaces
    # the file's, whichever way either gives it.
    for option, other in (
        ("admin-token", "admin-token-file"),
        ("admin-token-file", "admin-token"),
    ):
        if option in given.values and other not in given.values:
            values.pop(other, None)
    if given.listen:
        values["listen"] = list(given.listen)
        labels["listen"] = "--listen"
    if given.backends:
        # The command line's backends are the game pool's: they replace
        # the file's game backends, not its other pools'.
        backends = [RawBackend(label="--backend", endpoint=d) for d in given.backends] + [
            raw for raw in backends if raw.pool != GAME_POOL
        ]
        labels["backend"] = "--backend"
    for option, paths in (("websocket", given.websocket), ("websocket-origin", given.origins)):
        if paths:
            values[option] = list(paths)
            labels[option] = f"--{option}"
    return Settings(
        values,
        labels,
        backends,
        dict(given.defaults),
        pools=pools,
        routes=routes,
        queue_classes=queue_classes,
    )
