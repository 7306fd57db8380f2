"""
The header rules of the HTTP reverse proxy (L{gateway.http.proxy}): what a
request forwarded to a backend carries, what of a backend's response reaches
the client, and the path a backend sees.  Pure functions of headers and
strings, so that they are tested as data.

Hop-by-hop fields (RFC 9110 7.6.1) are the C{Connection} field, every field
it names, and the fields known to need removal whether named or not:
C{Keep-Alive}, C{Proxy-Connection}, C{TE}, C{Transfer-Encoding} and
C{Upgrade}.  Besides those the proxy drops, both ways:

  - C{Proxy-Authorization} and C{Proxy-Authenticate} (RFC 9110 11.7): they
    are between a client and a proxy that authenticates; this one does not,
    so a client's proxy credentials never reach an application;
  - C{Trailer}: the proxy does not pass trailer fields on (Twisted's client
    and server drop them), so it does not announce any;
  - towards the backend, C{Expect} (the gateway has read the whole body
    before it forwards a request: there is nothing to wait for), and
    C{Host} and C{Content-Length}, which the proxy sets itself.

The forwarding fields say who the client is: C{X-Forwarded-For} (its
address), C{X-Forwarded-Proto} (C{http} or C{https}), C{X-Forwarded-Host}
(its C{Host}) and C{Forwarded} (RFC 7239: C{for}, C{proto}, C{host}); with a
stripped prefix, C{X-Forwarded-Prefix} (the prefix the application lost).  A
client can write them too, so what it sent is dropped and replaced, unless
the connection came through a trusted hop (a C{haproxy:} front): then our
hop is appended to C{X-Forwarded-For} and C{Forwarded}, and the incoming
C{X-Forwarded-Proto} and C{X-Forwarded-Host}, which describe the first hop,
are kept (set when missing).  C{Via} (RFC 9110 7.6.3, which a gateway must
send inbound) gets C{1.1 gateway} (the client's HTTP version) appended; no
C{Via} is added to responses (optional there).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

from twisted.web.http_headers import Headers

from gateway.http.routes import origin_form, segments

__all__ = [
    "HOP_BY_HOP",
    "VIA_PSEUDONYM",
    "backend_path",
    "connection_tokens",
    "forwarded_element",
    "forwarded_node",
    "request_headers",
    "response_headers",
]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
"""Fields never forwarded either way, named in C{Connection} or not."""

_SET_BY_PROXY = frozenset({b"host", b"content-length", b"expect"})
"""Request fields the proxy writes itself (or drops: C{Expect})."""

_FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"forwarded",
    }
)

VIA_PSEUDONYM = b"gateway"
"""How the gateway names itself in C{Via} (RFC 9110 7.6.3 allows a pseudonym)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
"""An RFC 9110 token: a C{Forwarded} value that needs no quotes."""


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """
    The lower-cased options named by a message's C{Connection} fields.
    """
    values = headers.getRawHeaders(b"connection") or []
    return frozenset(token.strip().lower() for value in values for token in value.split(b",")) - {
        b""
    }


def _end_to_end(headers: Headers, also_drop: frozenset[bytes]) -> Headers:
    """
    A copy of C{headers} without its hop-by-hop fields and C{also_drop}.
    """
    drop = HOP_BY_HOP | connection_tokens(headers) | also_drop
    kept = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in drop:
            kept.setRawHeaders(name, values)
    return kept


@functools.lru_cache(maxsize=4096)
def forwarded_node(address: str) -> bytes:
    """
    An address as a C{Forwarded} node (RFC 7239 6): an IPv6 address in
    brackets, and quoted (its colons are not token characters); C{unknown}
    stays as it is.

    Every proxied request needs its client's node, and parsing the address
    was the proxy's costliest step of a small request (about 2% of the
    gateway's CPU at 50 keep-alive clients, docs/performance.md); clients
    come back, so the nodes of the last 4,096 addresses are kept.

    @param address: an IP address, or C{unknown}.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return _quote_if_needed(address.encode("ascii", "replace"))
    if ip.version == 6:
        return b'"[' + str(ip).encode("ascii") + b']"'
    return str(ip).encode("ascii")


def _quote_if_needed(value: bytes) -> bytes:
    """
    C{value} as a token if it is one, else as a quoted-string.
    """
    if _TOKEN.match(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def forwarded_element(client: str, proto: bytes, host: bytes | None) -> bytes:
    """
    Our hop's C{Forwarded} element: C{for=...;proto=...;host=...}.

    @param client: the client's address (see L{forwarded_node}).
    @param proto: C{http} or C{https}.
    @param host: the client's C{Host}, if it sent one.
    """
    parts = [b"for=" + forwarded_node(client), b"proto=" + proto]
    if host is not None:
        parts.append(b"host=" + _quote_if_needed(host))
    return b";".join(parts)


def _append(headers: Headers, name: bytes, value: bytes) -> None:
    """
    Append C{value} to a comma-separated list field (one field line).
    """
    previous = headers.getRawHeaders(name)
    if previous:
        value = b", ".join([*previous, value])
    headers.setRawHeaders(name, [value])


def request_headers(
    incoming: Headers,
    *,
    client: str,
    proto: bytes,
    host: bytes,
    client_host: bytes | None,
    version: bytes,
    trusted: bool,
    prefix: bytes | None = None,
) -> Headers:
    """
    The fields of a request forwarded to a backend.

    @param incoming: the client's request fields.
    @param client: the client's address (its PROXY header's on a trusted
        front), or C{unknown}.
    @param proto: C{http} or C{https}, as the client reached the gateway.
    @param host: the C{Host} the backend gets.
    @param client_host: the client's C{Host}, if it sent one.
    @param version: the client's HTTP version (C{HTTP/1.1}).
    @param trusted: whether the incoming forwarding fields come from a hop
        we trust (kept and appended to) or from the client (replaced).
    @param prefix: the route's prefix, when it is stripped: sent as
        C{X-Forwarded-Prefix}, so the application can build its own links
        (after a trusted hop's prefix, if it sent one).
    """
    outgoing = _end_to_end(incoming, _SET_BY_PROXY if trusted else _SET_BY_PROXY | _FORWARDING)
    outgoing.setRawHeaders(b"host", [host])
    _append(outgoing, b"x-forwarded-for", client.encode("ascii", "replace"))
    if not outgoing.hasHeader(b"x-forwarded-proto"):
        outgoing.setRawHeaders(b"x-forwarded-proto", [proto])
    if client_host is not None and not outgoing.hasHeader(b"x-forwarded-host"):
        outgoing.setRawHeaders(b"x-forwarded-host", [client_host])
    _append(outgoing, b"forwarded", forwarded_element(client, proto, client_host))
    _append(outgoing, b"via", _via_version(version) + b" " + VIA_PSEUDONYM)
    if prefix:
        before = (outgoing.getRawHeaders(b"x-forwarded-prefix") or [b""])[0].rstrip(b"/")
        outgoing.setRawHeaders(b"x-forwarded-prefix", [before + prefix.rstrip(b"/")])
    return outgoing


def _via_version(version: bytes) -> bytes:
    """
    A C{Via} protocol version: C{1.1} for C{HTTP/1.1} (RFC 9110 7.6.3 leaves
    the protocol name out for HTTP).
    """
    return version.removeprefix(b"HTTP/") or b"1.1"


def response_headers(
    incoming: Headers, options: frozenset[bytes] = frozenset()
) -> Iterable[tuple[bytes, list[bytes]]]:
    """
    The fields of a backend's response that reach the client.

    @param options: the options its C{Connection} field named (Twisted's
        client keeps that field out of C{incoming}).
    """
    for name, values in _end_to_end(incoming, options).getAllRawHeaders():
        yield name, list(values)


def backend_path(uri: bytes, prefix: bytes | None) -> bytes:
    """
    The request target a backend gets: the client's path and query, with the
    route's prefix taken off when it strips one (C{/v1/users?x} with prefix
    C{/v1} is C{/users?x}; C{/v1} is C{/}).  An absolute-form target
    (C{http://host/path}) becomes its path.

    @param uri: the client's request target.
    @param prefix: the route's path, to strip, or L{None}.
    """
    uri = origin_form(uri, None)[0]
    if not uri.startswith(b"/"):
        uri = b"/" + uri
    if prefix:
        # By segment, as the route matched: /v1 is taken off /v1/x and
        # //v1/x, and empty segments go (as the route table drops them).
        wanted = segments(prefix) or ()
        target, mark, query = uri.partition(b"?")
        raw = [part for part in target.split(b"/") if part]
        if segments(b"/" + b"/".join(raw[: len(wanted)])) == wanted:
            under = raw[len(wanted) :]
            slash = b"/" if under and target.endswith(b"/") else b""
            uri = b"/" + b"/".join(under) + slash + mark + query
    return uri
