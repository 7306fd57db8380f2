"""
Tests for L{gateway.http.routes}: which route a request takes.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import RouteSpec
from gateway.http.routes import RouteTable, normalized, origin_form, request_host, segments


def table(*routes: tuple[str | None, str]) -> RouteTable[str]:
    """
    A table of routes given as (host, path), each targeting its own name.
    """
    specs = [RouteSpec(name=f"{host or ''}{path}", host=host, path=path) for host, path in routes]
    return RouteTable([(spec, spec.name) for spec in specs])


def taken(routes: RouteTable[str], host: str | None, path: bytes) -> str | None:
    found = routes.match(host, path)
    return None if found is None else found[1]


def test_longest_prefix_by_segment() -> None:
    """
    The longest matching prefix wins, and prefixes match whole segments only.
    """
    routes = table((None, "/"), (None, "/api"), (None, "/api/v2"))
    assert taken(routes, None, b"/") == "/"
    assert taken(routes, None, b"/index.html") == "/"
    assert taken(routes, None, b"/api") == "/api"
    assert taken(routes, None, b"/api/") == "/api"
    assert taken(routes, None, b"/api/users") == "/api"
    assert taken(routes, None, b"/apix") == "/"
    assert taken(routes, None, b"/api/v2/x") == "/api/v2"
    assert taken(routes, None, b"/api/v23") == "/api"


def test_no_route_for_the_root_without_one() -> None:
    """
    Without a route for /, a request no route takes gets none (the site's
    root resource serves it).
    """
    routes = table((None, "/api"))
    assert taken(routes, None, b"/other") is None
    assert taken(routes, "x.example", b"/") is None


def test_host_routes_before_others() -> None:
    """
    A route for the request's exact host beats a wildcard, which beats a
    route for any host, even when the other has a longer path.
    """
    routes = table(
        (None, "/api/v1"),
        ("*.example.com", "/"),
        ("*.eu.example.com", "/"),
        ("api.example.com", "/"),
    )
    assert taken(routes, "api.example.com", b"/api/v1/x") == "api.example.com/"
    assert taken(routes, "www.example.com", b"/api/v1/x") == "*.example.com/"
    assert taken(routes, "a.eu.example.com", b"/") == "*.eu.example.com/"
    assert taken(routes, "example.com", b"/api/v1") == "/api/v1"
    assert taken(routes, "example.com", b"/") is None
    assert taken(routes, None, b"/api/v1") == "/api/v1"
    assert taken(routes, "notexample.com", b"/") is None


def test_exact_routes() -> None:
    """
    An exact route (C{--websocket PATH}) takes only its own path, and beats
    a prefix route of the same path.
    """
    spec = RouteSpec(name="ws", path="/play", bridge="game", exact=True)
    prefix = RouteSpec(name="p", path="/play", root="/tmp")
    routes = RouteTable([(prefix, "p"), (spec, "ws")])
    assert taken(routes, None, b"/play") == "ws"
    assert taken(routes, None, b"/play/x") == "p"
    assert taken(RouteTable([(spec, "ws")]), None, b"/play/") is None


def test_paths_are_compared_decoded() -> None:
    """
    Escapes are decoded within segments (an escaped slash stays in its
    segment) and empty segments dropped, so no spelling of a path avoids
    its route; dot segments have no route.
    """
    routes = table((None, "/"), (None, "/admin"))
    assert taken(routes, None, b"/%61dmin/x") == "/admin"
    assert taken(routes, None, b"//admin") == "/admin"
    assert taken(routes, None, b"/x%2Fadmin") == "/"
    assert taken(routes, None, b"/x/../admin") is None
    assert taken(routes, None, b"/x/%2e%2E/admin") is None
    assert taken(routes, None, b"/./admin") is None
    assert normalized(b"//a//b/") == b"/a/b"
    assert normalized(b"/a/./b") is None


def test_request_host() -> None:
    """
    The Host header's name: lower case, without port or trailing dot.
    """
    assert request_host(b"API.Example.COM:8080") == "api.example.com"
    assert request_host(b"example.com.") == "example.com"
    assert request_host(b"[::1]:8080") == "[::1]"
    assert request_host(b"") is None
    assert request_host(None) is None


_SEGMENT = st.sampled_from(["a", "b", "api", "v1", "x"])
_PATH = st.lists(_SEGMENT, max_size=4).map(lambda parts: "/" + "/".join(parts))
_HOST = st.sampled_from([None, "a.example.com", "*.example.com", "b.example.com"])


@given(
    st.lists(st.tuples(_HOST, _PATH), max_size=8, unique=True),
    st.sampled_from([None, "a.example.com", "b.example.com", "c.example.com", "example.com"]),
    _PATH,
)
def test_the_best_route_wins(
    routes: list[tuple[str | None, str]], host: str | None, path: str
) -> None:
    """
    Against a plain reference: the route taken matches the request, and no
    matching route is better (a more specific host, then a longer path); a
    request no route matches takes none.
    """

    def matches(route_host: str | None, route_path: str) -> bool:
        if route_host is not None:
            if host is None:
                return False
            if route_host.startswith("*."):
                if not (host.endswith(route_host[1:]) and host != route_host[2:]):
                    return False
            elif host != route_host:
                return False
        prefix = [part for part in route_path.split("/") if part]
        return [part for part in path.split("/") if part][: len(prefix)] == prefix

    def rank(route_host: str | None, route_path: str) -> tuple[int, int]:
        tier = 0 if route_host is None else 1 if route_host.startswith("*.") else 2
        return tier, len([part for part in route_path.split("/") if part])

    found = taken(table(*routes), host, path.encode())
    candidates = [route for route in routes if matches(*route)]
    if not candidates:
        assert found is None
        return
    assert found is not None
    best = max(rank(*route) for route in candidates)
    winner = next(route for route in routes if f"{route[0] or ''}{route[1]}" == found)
    assert matches(*winner)
    assert rank(*winner) == best


@given(st.binary(max_size=40))
def test_any_path_is_handled(path: bytes) -> None:
    """
    No request path makes matching fail: a route, or none.
    """
    routes = table((None, "/"), (None, "/api"))
    result = routes.match(None, b"/" + path)
    parts = segments(b"/" + path)
    assert (result is None) == (parts is None)


def test_origin_form() -> None:
    """
    An absolute-form target is its path and query, and names the host
    (user information dropped); other targets keep their Host.
    """
    assert origin_form(b"http://Shop.example:8080/x?y=1", b"other") == (
        b"/x?y=1",
        b"Shop.example:8080",
    )
    assert origin_form(b"HTTPS://u:p@shop.example?q", None) == (b"/?q", b"shop.example")
    assert origin_form(b"http://shop.example", b"h") == (b"/", b"shop.example")
    assert origin_form(b"/x?http://a/b", b"h") == (b"/x?http://a/b", b"h")
    assert origin_form(b"ftp://a/b", b"h") == (b"ftp://a/b", b"h")
