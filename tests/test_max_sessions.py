"""
Tests for a backend's session limit (C{max-sessions}): the pool never
chooses a full backend, the settings that set it, and a real gateway
refusing the session no backend has room for.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.python.usage import UsageError

from gateway.pool.backend import Backend, BackendState
from gateway.pool.backends import Pool
from gateway.pool.balance import make_balancer
from tests.support import (
    DEADLINE,
    GatewayProcess,
    admin_url,
    connect,
    echo,
    recv_exactly,
    recv_until_eof,
    wait_for,
)
from tests.support import (
    Backend as TestBackend,
)
from tests.test_configfile import parse, write


@given(
    limits=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    balance=st.sampled_from(["roundrobin", "leastconn", "hash"]),
    steps=st.lists(st.one_of(st.just("arrive"), st.integers(0, 20)), max_size=60),
)
def test_a_full_backend_is_never_chosen(
    limits: list[int], balance: str, steps: list[object]
) -> None:
    """
    Whatever arrives and leaves, no backend holds more sessions than its
    limit, and a session is refused only when every backend is full.
    """
    backends = [
        Backend(f"b{i}", f"tcp:h:{i}", None, max_sessions=limit)  # type: ignore[arg-type]
        for i, limit in enumerate(limits)
    ]
    pool = Pool(backends, make_balancer(balance))
    live: list[Backend] = []
    for number, step in enumerate(steps):
        if step == "arrive":
            chosen = pool.choose(key=b"%d" % number)
            if chosen is None:
                assert all(b.max_sessions and b.active >= b.max_sessions for b in backends)
            else:
                chosen.active += 1  # as the dialer counts it, from the choice
                live.append(chosen)
        elif live:
            gone = live.pop(int(step) % len(live))  # type: ignore[call-overload]
            gone.active -= 1
        assert all(not b.max_sessions or b.active <= b.max_sessions for b in backends)


def test_a_full_backend_is_not_down() -> None:
    """
    Full is not a state: the backend stays up (health checks and operators
    see it up) and takes sessions again once one ends.
    """
    backend = Backend("a", "tcp:h:1", None, max_sessions=1)  # type: ignore[arg-type]
    pool = Pool([backend])
    backend.active = 1
    assert pool.choose() is None and backend.state is BackendState.UP
    assert not Pool.has_room(backend)
    backend.active = 0
    assert pool.choose() is backend


def test_settings(tmp_path: Path) -> None:
    """
    --max-sessions is every backend's default, a [[backend]] may set its
    own; refused with worker processes (each would count only its own).
    """
    text = (
        "max-sessions = 5\n"
        '[[backend]]\nendpoint = "tcp:127.0.0.1:1"\n'
        '[[backend]]\nendpoint = "tcp:127.0.0.1:2"\nmax-sessions = 2\n'
    )
    config = parse(["--config", write(tmp_path, text)])
    assert [b.max_sessions for b in config.backends] == [5, 2]
    assert [b.max_sessions for b in parse(["--backend", "tcp:h:1"]).backends] == [0]
    assert [
        b.max_sessions for b in parse(["--backend", "tcp:h:1", "--max-sessions", "3"]).backends
    ] == [3]
    with pytest.raises(UsageError, match=r"--max-sessions: not with --workers above 1 yet"):
        parse(["--backend", "tcp:h:1", "--max-sessions", "3", "--workers", "2"])
    with pytest.raises(UsageError, match=r"backend\[0\]: max-sessions: "):
        parse(
            ["--config", write(tmp_path, '[[backend]]\nendpoint = "tcp:h:1"\nmax-sessions = -1\n')]
        )


def test_a_full_backend_refuses_the_next_session(tmp_path: Path) -> None:
    """
    A backend with max-sessions 2 takes two sessions; the third client gets
    the busy line (a counted no-backend refusal); once one leaves, a new
    client gets in.  status.json and the metrics show the limit.
    """
    with TestBackend(echo) as backend:
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'busy-message = "full"\nhealth-interval = 0\n[[backend]]\nname = "b"\n'
            f'endpoint = "{backend.endpoint}"\nmax-sessions = 2\n'
        )
        args = ["--admin", "tcp:0:interface=127.0.0.3", "--config", str(config)]
        with GatewayProcess(args, tmp_path) as gateway:
            first, second = connect(gateway.port), connect(gateway.port)
            for sock in (first, second):
                sock.sendall(b"hi\n")
                assert recv_exactly(sock, 3) == b"hi\n"
            with connect(gateway.port) as third:
                third.sendall(b"hi\n")
                assert recv_until_eof(third) == b"full\r\n"
            with urllib.request.urlopen(
                admin_url(gateway) + "/status.json", timeout=DEADLINE
            ) as r:
                document = json.load(r)
            assert [(b["active"], b["max_sessions"]) for b in document["backends"]] == [(2, 2)]
            assert document["counters"]["refused"]["no-backend"] == 1
            with urllib.request.urlopen(admin_url(gateway) + "/metrics", timeout=DEADLINE) as r:
                assert (
                    'gateway_backend_max_sessions{backend="b",pool="game"} 2.0'
                    in r.read().decode()
                )
            first.close()

            def admitted() -> bool:
                with connect(gateway.port) as fourth:
                    fourth.sendall(b"again\n")
                    return recv_exactly(fourth, 6) == b"again\n"

            wait_for(admitted, "a slot to free")
            second.close()
