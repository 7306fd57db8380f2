"""
Unit tests of the reverse proxy's header rules (L{gateway.http.forwarded}):
hop-by-hop fields, the forwarding fields and the backend's request target.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from gateway.http.forwarded import (
    HOP_BY_HOP,
    backend_path,
    connection_tokens,
    forwarded_element,
    forwarded_node,
    request_headers,
    response_headers,
)

_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: not name.startswith("-")
)
_SEGMENT = st.text(alphabet="abcxyz019._~-", min_size=1, max_size=6).filter(
    lambda part: part not in (".", "..")
)
"""A path segment (not a dot segment: routes have none, and requests with
one have no route)."""


def _forward(headers: Headers, *, trusted: bool = False) -> Headers:
    return request_headers(
        headers,
        client="198.51.100.7",
        proto=b"https",
        host=b"app.example",
        client_host=b"app.example",
        version=b"HTTP/1.1",
        trusted=trusted,
    )


def test_connection_tokens() -> None:
    """
    The options of every C{Connection} line, lower-cased, without blanks.
    """
    headers = Headers({b"connection": [b"Keep-Alive, X-Foo", b" ,close"]})
    assert connection_tokens(headers) == {b"keep-alive", b"x-foo", b"close"}


@given(
    end_to_end=st.dictionaries(_NAME, st.text("abc", min_size=1, max_size=3), max_size=5),
    named=st.lists(_NAME, max_size=3),
)
def test_hop_by_hop_fields_never_forwarded(end_to_end: dict[str, str], named: list[str]) -> None:
    """
    Whatever a message carries, neither direction passes on a hop-by-hop
    field or a field its C{Connection} names; every other field passes with
    its values (towards the backend, but for those the proxy sets).
    """
    headers = Headers()
    for name, value in end_to_end.items():
        headers.addRawHeader(name.encode(), value.encode())
    for hop in HOP_BY_HOP:
        headers.addRawHeader(hop, b"1")
    for option in named:
        headers.addRawHeader(option.encode(), b"named")
    headers.addRawHeader(b"connection", b", ".join(n.encode() for n in named) or b"close")
    dropped = HOP_BY_HOP | {n.encode() for n in named}
    expected = {
        n.encode(): [v.encode()] for n, v in end_to_end.items() if n.encode() not in dropped
    }
    passed = dict(response_headers(headers, connection_tokens(headers)))
    assert {name.lower(): values for name, values in passed.items()} == expected

    forwarded = _forward(headers)
    ours = {b"host", b"via", b"forwarded", b"x-forwarded-for", b"x-forwarded-proto"}
    ours |= {b"x-forwarded-host"}
    names = {name.lower() for name, _ in forwarded.getAllRawHeaders()}
    assert not names & (dropped | {b"content-length", b"expect"}) - ours
    for field, values in expected.items():
        if field not in ours | {b"content-length", b"expect"}:
            assert forwarded.getRawHeaders(field) == values


def test_spoofed_forwarding_fields_replaced() -> None:
    """
    From an untrusted client, the forwarding fields it sent are replaced by
    ours; C{Host}, C{Content-Length} and C{Expect} are the proxy's to set.
    """
    incoming = Headers(
        {
            b"x-forwarded-for": [b"6.6.6.6"],
            b"x-forwarded-proto": [b"http"],
            b"x-forwarded-host": [b"evil"],
            b"forwarded": [b"for=6.6.6.6"],
            b"host": [b"app.example"],
            b"content-length": [b"3"],
            b"expect": [b"100-continue"],
            b"via": [b"1.0 corp-proxy"],
        }
    )
    out = _forward(incoming)
    assert out.getRawHeaders(b"x-forwarded-for") == [b"198.51.100.7"]
    assert out.getRawHeaders(b"x-forwarded-proto") == [b"https"]
    assert out.getRawHeaders(b"x-forwarded-host") == [b"app.example"]
    assert out.getRawHeaders(b"forwarded") == [b"for=198.51.100.7;proto=https;host=app.example"]
    assert out.getRawHeaders(b"host") == [b"app.example"]
    assert out.getRawHeaders(b"via") == [b"1.0 corp-proxy, 1.1 gateway"]
    assert not out.hasHeader(b"content-length")
    assert not out.hasHeader(b"expect")


def test_trusted_forwarding_fields_appended() -> None:
    """
    From a trusted hop, C{X-Forwarded-For} and C{Forwarded} get our hop
    appended, and the first hop's proto and host are kept.
    """
    incoming = Headers(
        {
            b"x-forwarded-for": [b"203.0.113.1, 10.0.0.2"],
            b"x-forwarded-proto": [b"http"],
            b"forwarded": [b"for=203.0.113.1", b"for=10.0.0.2"],
        }
    )
    out = _forward(incoming, trusted=True)
    assert out.getRawHeaders(b"x-forwarded-for") == [b"203.0.113.1, 10.0.0.2, 198.51.100.7"]
    assert out.getRawHeaders(b"x-forwarded-proto") == [b"http"]
    assert out.getRawHeaders(b"x-forwarded-host") == [b"app.example"]
    assert out.getRawHeaders(b"forwarded") == [
        b"for=203.0.113.1, for=10.0.0.2, for=198.51.100.7;proto=https;host=app.example"
    ]


def test_forwarded_nodes_and_quoting() -> None:
    """
    RFC 7239: an IPv6 address is bracketed and quoted, an IPv4 one is a
    token, C{unknown} stays; a host with a port is quoted.
    """
    assert forwarded_node("2001:db8::1") == b'"[2001:db8::1]"'
    assert forwarded_node("::ffff:192.0.2.1") == b'"[::ffff:c000:201]"'
    assert forwarded_node("192.0.2.60") == b"192.0.2.60"
    assert forwarded_node("unknown") == b"unknown"
    assert forwarded_element("::1", b"http", b"example.com:8080") == (
        b'for="[::1]";proto=http;host="example.com:8080"'
    )
    assert forwarded_element("192.0.2.60", b"https", None) == b"for=192.0.2.60;proto=https"
    assert forwarded_element("unknown", b"http", b'a"b') == b'for=unknown;proto=http;host="a\\"b"'


def test_backend_path_examples() -> None:
    """
    A stripped prefix leaves the rest of the path and the query; a prefix
    that ends mid-segment is not stripped; absolute-form targets become
    their path.
    """
    assert backend_path(b"/v1/users?x=1", b"/v1") == b"/users?x=1"
    assert backend_path(b"/v1", b"/v1") == b"/"
    assert backend_path(b"/v1?x", b"/v1") == b"/?x"
    assert backend_path(b"/v1/", b"/v1/") == b"/"
    assert backend_path(b"/v1x/users", b"/v1") == b"/v1x/users"
    assert backend_path(b"/v1/users", None) == b"/v1/users"
    assert backend_path(b"/v1/users", b"/") == b"/v1/users"
    assert backend_path(b"http://api.example/v1/a?b", b"/v1") == b"/a?b"
    assert backend_path(b"http://api.example", None) == b"/"
    assert backend_path(b"//v1//users/", b"/v1") == b"/users/"
    assert backend_path(b"/%761/users", b"/v1") == b"/users"


@given(
    prefix=st.lists(_SEGMENT, min_size=1, max_size=3),
    rest=st.lists(_SEGMENT, max_size=3),
    query=st.none() | st.text(alphabet="a=&%20", max_size=8),
)
def test_backend_path_strips_whole_segments(
    prefix: list[str], rest: list[str], query: str | None
) -> None:
    """
    For any prefix and path under it, stripping leaves exactly the path
    under it (C{/} for the prefix itself) and the query as it was; without
    stripping the target is unchanged.
    """
    route = ("/" + "/".join(prefix)).encode()
    tail = ("/" + "/".join(rest)).encode() if rest else b""
    suffix = b"" if query is None else b"?" + query.encode()
    target = route + tail + suffix
    assert backend_path(target, route) == (tail or b"/") + suffix
    assert backend_path(target, None) == target
    assert backend_path(route + b"z" + tail + suffix, route) == route + b"z" + tail + suffix
