"""
Shared fixtures: threaded loopback backends for the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from tests.redisserver import RedisServer
from tests.support import Backend, GatewayProcess, banner_then_echo, echo, sink


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    """
    A backend that echoes every byte back.
    """
    with Backend(echo) as backend:
        yield backend


@pytest.fixture
def banner_backend() -> Iterator[Backend]:
    """
    A backend that speaks first (a banner with its port), then echoes.
    """
    with Backend(banner_then_echo) as backend:
        yield backend


@pytest.fixture
def sink_backend() -> Iterator[Backend]:
    """
    A backend that reads to the end, then answers with the count and SHA-256.
    """
    with Backend(sink) as backend:
        yield backend


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    """
    The log events emitted while the test runs.
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """
    A running C{redis-server} on 127.0.0.1, no password (skipped without
    redis-server, unless C{GATEWAY_REQUIRE_REDIS=1}: tests/redisserver.py).
    """
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture(scope="module", params=["fast-path", "no-fast-path"])
def http_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """
    The HTTP modules' tests run twice: with the lean static path (the
    default) and with C{--no-http-fast-path} (every request through
    twisted.web); the gateways they start get the option.
    """
    param: str = request.param
    GatewayProcess.extra_args = ("--no-http-fast-path",) if param == "no-fast-path" else ()
    yield param
    GatewayProcess.extra_args = ()


@pytest.fixture(scope="module", params=["fast-path", "no-fast-path"])
def tcp_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """
    The game data path's modules run twice: with the TCP fast path (the
    default: a bare backend socket handed to the splice relay) and with
    C{--no-tcp-fast-path} (every backend through Twisted's endpoints); the
    gateways they start get the option.  (tests/test_e2e_fast_path.py checks
    which sessions take the fast path.)
    """
    param: str = request.param
    GatewayProcess.extra_args = ("--no-tcp-fast-path",) if param == "no-fast-path" else ()
    yield param
    GatewayProcess.extra_args = ()
