"""
End-to-end tests of web caching for static files: a real C{twistd -n
gateway} serving C{--http-root} on loopback, asked with C{http.client} the
way a browser revalidates (C{ETag}, C{Last-Modified}, C{304}), and for
precompressed siblings (C{app.js.gz}, C{app.js.br}) with and without
ranges; and the caching settings parsed as data.
"""

from __future__ import annotations

import gzip
import http.client
import os
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError

from gateway.config import GatewayConfig
from gateway.options import GatewayOptions
from tests.support import Backend, GatewayProcess, echo

# Every test with the lean static path on and off (conftest.http_path).
pytestmark = pytest.mark.usefixtures("http_path")

APP = b"console.log('the game client, version 2');\n" * 40
GZ = gzip.compress(APP)
BR = b"not really brotli: the test only checks which bytes are sent\n"
OLD = b"an edited file whose compressed sibling is stale\n"
FINGERPRINTED = "assets/app.0123abcd.js"
IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, http_path: str) -> Iterator[GatewayProcess]:
    """
    A gateway serving a root with C{app.js} and its two siblings, a file
    with a stale C{.gz}, and a fingerprinted name (C{--cache-immutable}).
    """
    root = tmp_path_factory.mktemp("root")
    (root / "app.js").write_bytes(APP)
    (root / "app.js.gz").write_bytes(GZ)
    (root / "app.js.br").write_bytes(BR)
    (root / "old.js").write_bytes(OLD)
    (root / "old.js.gz").write_bytes(gzip.compress(b"the previous version\n"))
    os.utime(root / "old.js.gz", ns=(10**18, 10**18))
    os.utime(root / "old.js", ns=(10**18 + 1, 10**18 + 1))
    (root / "assets").mkdir()
    (root / FINGERPRINTED).write_bytes(APP)
    args = ["--http-root", str(root), "--cache-immutable", r"\.[0-9a-f]{8,}\.(js|css)$"]
    with (
        Backend(echo) as backend,
        GatewayProcess(
            ["--backend", backend.endpoint, *args], tmp_path_factory.mktemp("gw")
        ) as gw,
    ):
        yield gw


def get(
    gateway: GatewayProcess, path: str, method: str = "GET", **headers: str
) -> tuple[http.client.HTTPResponse, bytes]:
    """
    One request on a new connection; the response and its whole body.
    """
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        named = {name.replace("_", "-"): value for name, value in headers.items()}
        connection.request(method, path, headers=named)
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def test_validators_and_revalidation(gateway: GatewayProcess) -> None:
    """
    A file comes with a strong ETag, Last-Modified, the default
    Cache-Control (no-cache), Vary and a Server header without a version;
    revalidating it with either validator is a 304 without a body that
    repeats the caching headers, on a connection that stays usable.
    """
    response, body = get(gateway, "/app.js")
    assert (response.status, body) == (200, APP)
    etag = response.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Vary"] == "Accept-Encoding"
    assert response.headers["Server"] == "gateway"
    assert response.headers["Content-Type"] == "text/javascript"
    modified = response.headers["Last-Modified"]

    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        for headers in (
            {"If-None-Match": etag},
            {"If-None-Match": f'"other", W/{etag}'},
            {"If-None-Match": "*"},
            {"If-Modified-Since": modified},
        ):
            connection.request("GET", "/app.js", headers=headers)
            response = connection.getresponse()
            assert (response.status, response.read()) == (304, b""), headers
            assert response.headers["ETag"] == etag
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["Vary"] == "Accept-Encoding"
            assert "Content-Length" not in response.headers
            assert "Content-Type" not in response.headers
        # Another tag is a full response even with a date that alone is a 304.
        connection.request(
            "GET", "/app.js", headers={"If-None-Match": '"other"', "If-Modified-Since": modified}
        )
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, APP)
    finally:
        connection.close()
    response, body = get(gateway, "/app.js", If_Match='"other"')
    assert (response.status, body) == (412, b"")


def test_precompressed_siblings(gateway: GatewayProcess) -> None:
    """
    A client that accepts gzip gets app.js.gz, which decodes to app.js,
    with the original's type and a tag of its own; Brotli is preferred
    when both are accepted; q=0 refuses a coding.
    """
    response, body = get(gateway, "/app.js", Accept_Encoding="gzip")
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Type"] == "text/javascript"
    assert response.headers["Content-Length"] == str(len(GZ))
    assert response.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == APP
    gz_tag = response.headers["ETag"]
    plain, _ = get(gateway, "/app.js")
    assert gz_tag != plain.headers["ETag"]
    revalidated, body = get(gateway, "/app.js", Accept_Encoding="gzip", If_None_Match=gz_tag)
    assert (revalidated.status, body) == (304, b"")

    response, body = get(gateway, "/app.js", Accept_Encoding="gzip, deflate, br")
    assert (response.headers["Content-Encoding"], body) == ("br", BR)
    response, body = get(gateway, "/app.js", Accept_Encoding="br;q=0, gzip;q=0")
    assert ("Content-Encoding" not in response.headers, body) == (True, APP)


def test_stale_sibling_is_not_served(gateway: GatewayProcess) -> None:
    """
    A compressed sibling older than its file (the file was edited since)
    is skipped: the client gets the file itself.
    """
    response, body = get(gateway, "/old.js", Accept_Encoding="gzip")
    assert ("Content-Encoding" not in response.headers, body) == (True, OLD)


def test_range_of_compressed_bytes_and_if_range(gateway: GatewayProcess) -> None:
    """
    A range of a precompressed response is a range of its compressed bytes;
    If-Range with its tag keeps the range, with another tag (or a weak one)
    the whole file is sent; several ranges of compressed bytes are the
    whole file.
    """
    response, body = get(gateway, "/app.js", Accept_Encoding="gzip", Range="bytes=0-9")
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 0-9/{len(GZ)}"
    assert response.headers["Content-Encoding"] == "gzip"
    assert body == GZ[:10]
    tag = response.headers["ETag"]
    rest, body = get(gateway, "/app.js", Accept_Encoding="gzip", Range="bytes=10-", If_Range=tag)
    assert (rest.status, body) == (206, GZ[10:])
    for other in ('"other"', f"W/{tag}"):
        whole, body = get(
            gateway, "/app.js", Accept_Encoding="gzip", Range="bytes=10-", If_Range=other
        )
        assert (whole.status, body) == (200, GZ)
    whole, body = get(gateway, "/app.js", Accept_Encoding="gzip", Range="bytes=0-1,5-6")
    assert (whole.status, body) == (200, GZ)
    plain, body = get(gateway, "/app.js", Range="bytes=0-1,5-6")
    assert plain.status == 206 and plain.headers["Content-Type"].startswith("multipart/")


def test_head(gateway: GatewayProcess) -> None:
    """
    HEAD has the headers GET would have, the compressed length included,
    and no body.
    """
    response, body = get(gateway, "/app.js", "HEAD", Accept_Encoding="gzip")
    assert (response.status, body) == (200, b"")
    assert response.headers["Content-Length"] == str(len(GZ))
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["ETag"]
    assert response.headers["Last-Modified"]


def test_fingerprinted_names_are_immutable(gateway: GatewayProcess) -> None:
    """
    A path matching --cache-immutable gets a year's immutable caching;
    others keep the default.
    """
    response, body = get(gateway, "/" + FINGERPRINTED)
    assert (response.headers["Cache-Control"], body) == (IMMUTABLE, APP)
    response, _ = get(gateway, "/app.js")
    assert response.headers["Cache-Control"] == "no-cache"


def test_server_header_on_a_404(gateway: GatewayProcess) -> None:
    """
    Every response names the server without a version, errors included.
    """
    response, _ = get(gateway, "/missing.txt")
    assert (response.status, response.headers["Server"]) == (404, "gateway")


def _parse(argv: list[str]) -> GatewayConfig:
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(["--backend", "tcp:127.0.0.1:7000", *argv])
    return options.config


def test_caching_settings() -> None:
    """
    --cache-control defaults to no-cache, 'none' turns it off, and
    --cache-immutable must compile.
    """
    assert (_parse([]).cache_control, _parse([]).cache_immutable) == ("no-cache", None)
    assert _parse(["--cache-control", "none"]).cache_control is None
    assert _parse(["--cache-control", "public, max-age=60"]).cache_control == "public, max-age=60"
    assert _parse(["--cache-immutable", r"-[0-9a-f]{8}\."]).cache_immutable == r"-[0-9a-f]{8}\."
    with pytest.raises(UsageError, match="--cache-immutable: not a valid regular expression"):
        _parse(["--cache-immutable", "("])
    with pytest.raises(UsageError, match="--cache-control: must be one line"):
        _parse(["--cache-control", "no-cache\r\nX-Evil: 1"])


def test_if_none_match_on_several_lines(gateway: GatewayProcess) -> None:
    """
    An If-None-Match list split over several header lines is one list: the
    tag on the first line matches.
    """
    response, _ = get(gateway, "/app.js")
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.putrequest("GET", "/app.js")
        connection.putheader("If-None-Match", response.headers["ETag"])
        connection.putheader("If-None-Match", '"other"')
        connection.endheaders()
        revalidated = connection.getresponse()
        assert (revalidated.status, revalidated.read()) == (304, b"")
    finally:
        connection.close()
