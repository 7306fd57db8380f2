"""
Which route an HTTP request takes: L{RouteTable}, pure (no reactor, no
twisted.web), property-tested.

A route matches on the request's host (exact, or C{*.example.com} for every
name under C{example.com}) and on its path, segment by segment: C{/api}
matches C{/api}, C{/api/} and C{/api/users}, not C{/apix}.  Routes for the
request's exact host come first, then those of a matching wildcard (the
longest suffix first), then those for any host; within them the longest
path wins.  A C{--websocket PATH} route matches only that path.

The path is compared as the application will read it: percent-escapes
decoded within each segment (an escaped C{/} stays inside its segment) and
empty segments dropped (C{//api} is C{/api}, as nginx's C{merge_slashes}
has it), so that no spelling of a path reaches a route meant for another.
A path with C{.} or C{..} segments (also escaped, C{%2e%2e}) has no route:
browsers never send one, and a backend resolving it could serve what
another route guards (L{normalized} returns L{None}; the site answers 400).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote_to_bytes

from gateway.config import RouteSpec

__all__ = ["RouteTable", "normalized", "origin_form", "request_host", "segments"]

_T = TypeVar("_T")


def segments(path: bytes) -> tuple[bytes, ...] | None:
    """
    The segments of a request path as routes compare them (decoded, empty
    ones dropped), or L{None} for a path with dot segments.
    """
    parts = []
    for raw in path.split(b"/"):
        part = unquote_to_bytes(raw) if b"%" in raw else raw
        if not part:
            continue
        if part in (b".", b".."):
            return None
        parts.append(part)
    return tuple(parts)


def normalized(path: bytes) -> bytes | None:
    """
    A request path as routes see it (C{/a/b}), or L{None} for one with dot
    segments.
    """
    parts = segments(path)
    return None if parts is None else b"/" + b"/".join(parts)


def origin_form(target: bytes, host: bytes | None) -> tuple[bytes, bytes | None]:
    """
    A request's target and host as routes see them: an absolute-form target
    (C{http://shop.example/x?y}, RFC 9112 3.2.2) is its path and query, and
    its authority is the host (the C{Host} field is then ignored, as the RFC
    says); any other target and its C{Host} are as they came.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return target, host
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    authority = authority.rpartition(b"@")[2]  # no user information
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, authority or host


def request_host(host: bytes | None) -> str | None:
    """
    The host name of a C{Host} header: lower case, without its port or a
    trailing dot (C{[::1]:8080} is C{[::1]}); L{None} without one.
    """
    if not host:
        return None
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        text = text[: end + 1] if end > 0 else text
    else:
        text = text.partition(":")[0]
    return text.rstrip(".") or None


@dataclass(frozen=True, slots=True)
class _Entry(Generic[_T]):
    spec: RouteSpec
    segments: tuple[bytes, ...]
    exact: bytes | None
    target: _T


class RouteTable(Generic[_T]):
    """
    Routes, each with what serves it (a resource, for the site).
    """

    def __init__(self, routes: Sequence[tuple[RouteSpec, _T]] = ()) -> None:
        self._entries: list[_Entry[_T]] = []
        for spec, target in routes:
            parts = segments(spec.path.encode())
            if parts is None:
                raise ValueError(f"route {spec.name!r}: a path with dot segments")
            exact = spec.path.encode() if spec.exact else None
            self._entries.append(_Entry(spec, parts, exact, target))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def routes(self) -> tuple[tuple[RouteSpec, _T], ...]:
        """
        The routes and their targets, in the order given.
        """
        return tuple((entry.spec, entry.target) for entry in self._entries)

    def match(self, host: str | None, path: bytes) -> tuple[RouteSpec, _T] | None:
        """
        The route of a request for C{path} (its raw path, without the query)
        on C{host} (see L{request_host}), if any; L{None} also for a path
        with dot segments.
        """
        parts = segments(path)
        if parts is None:
            return None
        best: _Entry[_T] | None = None
        best_rank: tuple[int, int, int, int] = (-1, -1, -1, -1)
        for entry in self._entries:
            host_rank = _host_rank(entry.spec.host, host)
            if host_rank is None:
                continue
            if entry.exact is not None:
                if path != entry.exact:
                    continue
            elif parts[: len(entry.segments)] != entry.segments:
                continue
            rank = (host_rank[0], host_rank[1], len(entry.segments), entry.exact is not None)
            if rank > best_rank:
                best, best_rank = entry, rank
        return None if best is None else (best.spec, best.target)


def _host_rank(pattern: str | None, host: str | None) -> tuple[int, int] | None:
    """
    How well a route's host matches the request's: (2, 0) exactly, (1, the
    suffix's length) by a wildcard, (0, 0) for a route of any host; L{None}
    when it does not match.
    """
    if pattern is None:
        return (0, 0)
    if host is None:
        return None
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return (1, len(suffix)) if host.endswith(suffix) and len(host) > len(suffix) else None
    return (2, 0) if host == pattern else None
