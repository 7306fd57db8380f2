"""
The backends as written checked: L{RawBackend}s in, L{BackendSpec}s out,
for L{gateway.settings.build_config}.

L{check_backends} checks each backend (endpoint, weight, name, its own health
bytes and PROXY version) and the list (no name twice, nor an endpoint twice
without a name of its own, at least one game backend); L{with_session_limits}
gives each its session limit (its own C{max-sessions}, else
C{--max-sessions}).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorCore

from gateway.checks import (
    ConfigError,
    check_choice,
    check_client_endpoint,
    check_count,
    check_escaped,
    check_line,
)
from gateway.config import GAME_POOL, PROXY_CHOICES, BackendSpec

__all__ = ["MAX_WEIGHT", "RawBackend", "Source", "check_backends", "with_session_limits"]

MAX_WEIGHT = 1000
"""The largest backend weight (a weight is a share, not a count)."""


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
    pool: str = GAME_POOL
    max_sessions: str | None = None


class Source(Protocol):
    """
    Raw settings as L{gateway.settings.Settings} gives them.
    """

    backends: list[RawBackend]

    def __getitem__(self, name: str) -> Any: ...

    def label(self, name: str) -> str: ...

    def other(self, name: str, by: str) -> str: ...


def check_backends(s: Source, reactor: IReactorCore, *, demo: bool) -> tuple[BackendSpec, ...]:
    """
    The game backends, in order: at least one unless C{demo}; no name twice,
    nor an endpoint twice unless the later one has a name of its own.
    """
    backends: list[BackendSpec] = []
    for raw in s.backends:
        spec = _backend_spec(raw, reactor)
        if raw.name is None and any(
            b.endpoint == spec.endpoint and b.pool != spec.pool for b in backends
        ):
            raise ConfigError(
                f"{raw.label}: {spec.endpoint!r} is also in pool "
                f"{next(b.pool for b in backends if b.endpoint == spec.endpoint)!r}: give it a "
                "name of its own (backend names are unique across pools)"
            )
        if any(b.endpoint == spec.endpoint for b in backends) and raw.name is None:
            raise ConfigError(f"{raw.label}: {spec.endpoint!r} is given twice")
        if any(b.name == spec.name for b in backends):
            raise ConfigError(f"{raw.label}: the name {spec.name!r} is given twice")
        backends.append(spec)
    if not any(b.pool == GAME_POOL for b in backends) and not demo:
        raise ConfigError(
            f"{s.label('backend')}: at least one game backend is needed "
            "(or --demo for the built-in demo game, or [[route]]s in the file for an "
            "HTTP-only front)"
        )
    return tuple(backends)


def _backend_spec(raw: RawBackend, reactor: IReactorCore) -> BackendSpec:
    """
    Check one backend as written: its endpoint, weight (1 to L{MAX_WEIGHT}),
    name (by default its endpoint string) and its own health bytes and PROXY
    version, if it has them.
    """
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
        pool=raw.pool,
    )


def with_session_limits(s: Source, backends: tuple[BackendSpec, ...]) -> tuple[BackendSpec, ...]:
    """
    Each backend's session limit: its own C{max-sessions}, else
    C{--max-sessions} (0: none).  Not with worker processes yet: each
    worker would count only its own sessions.
    """
    default = check_count(s.label("max-sessions"), s["max-sessions"])
    limited = []
    for spec, raw in zip(backends, s.backends, strict=False):
        own = raw.max_sessions
        limit = default if own is None else check_count(f"{raw.label}: max-sessions", own)
        limited.append(dataclasses.replace(spec, max_sessions=limit))
    limited.extend(backends[len(limited) :])
    if (
        any(spec.max_sessions for spec in limited)
        and check_count(s.label("workers"), s["workers"]) > 1
    ):
        raise ConfigError(
            f"{s.label('max-sessions')}: not with {s.other('workers', 'max-sessions')} above 1 "
            "yet (each worker process would count only its own sessions)"
        )
    return tuple(limited)
