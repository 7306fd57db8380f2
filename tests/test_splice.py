"""
The zero-copy relay's fallbacks, in this process on the real reactor: when
splice(2) fails (at once, or in the middle of a transfer) the session goes
on through the transports without losing, duplicating or reordering a byte.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThread

from gateway.config import BackendSpec, GatewayConfig
from gateway.process.assemble import make_service
from gateway.session.relay import GameSession
from gateway.session.splice import POOL, splice_available, spliceable
from tests.support import Backend, echo, pattern, recv_until_eof

reactor: Any = _reactor

pytestmark = pytest.mark.skipif(not splice_available(), reason="splice(2) is Linux only")


def _transfer(port: int, data: bytes) -> bytes:
    """
    Send C{data} (then a half-close) and read everything echoed back, in a thread.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def send() -> None:
        for start in range(0, len(data), 65536):
            sock.sendall(data[start : start + 65536])
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    received = recv_until_eof(sock)
    sender.join(timeout=30)
    sock.close()
    return received


def _config(backend: Backend) -> GatewayConfig:
    """
    A gateway on an ephemeral loopback port in front of C{backend}, splicing.
    """
    return GatewayConfig(
        listen=("tcp:0:interface=127.0.0.1",),
        backends=(BackendSpec(name="echo", endpoint=backend.endpoint),),
        admin=None,
        health_interval=0,
        sniff_timeout=0.1,
        relay="auto",
    )


def _failing_after(calls: int) -> Callable[..., int]:
    """
    os.splice that works C{calls} times, then fails as for a socket type
    splice(2) does not handle.
    """
    real = os.splice
    count = [0]

    def splice(*args: Any, **kwargs: Any) -> int:
        count[0] += 1
        if count[0] > calls:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(*args, **kwargs)

    return splice


@pytest.mark.parametrize("works", [0, 1, 7, 40])
@pytest_twisted.ensureDeferred
async def test_splice_failure_falls_back_without_losing_a_byte(
    works: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Whether splice(2) fails on its first use or after some bytes moved (with
    bytes possibly still in a pipe), 4 MiB echoed through the session come
    back byte-exact, and the session's byte counters are exact.
    """
    # A threaded echo server (a Twisted protocol that is not half-closeable
    # would drop its unsent echo when the client's end of stream reaches it).
    with Backend(echo) as backend:
        service = make_service(_config(backend), reactor)
        ended: list[GameSession] = []
        original = GameSession._finish

        def finish(session: GameSession, reason: Any) -> None:
            if session not in ended:  # called again on the other side's close
                ended.append(session)
            original(session, reason)

        monkeypatch.setattr(GameSession, "_finish", finish)
        service.startService()
        try:
            front = service.listeners[0].port
            assert front is not None
            monkeypatch.setattr(os, "splice", _failing_after(works))
            data = pattern(4 << 20, seed=works)
            received = await deferToThread(_transfer, front.getHost().port, data)  # type: ignore[attr-defined]
        finally:
            await service.stopService()
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    [session] = ended
    assert (session.bytes_in, session.bytes_out) == (len(data), len(data))
    # "spliced" (the access log's relay field) means bytes moved by splice(2).
    if works == 0:
        assert not session.spliced
    if works >= 7:
        assert session.spliced


def test_only_plain_sockets_are_spliceable() -> None:
    """
    Transports that are not the reactor's own sockets (TLS, wrappers, test
    transports) are never spliced.
    """
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    assert not spliceable(StringTransport())
    assert not spliceable(object())
    assert not spliceable(TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol))


@pytest_twisted.ensureDeferred
async def test_out_of_descriptors_falls_back_and_idle_sessions_hold_no_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    When no pipe can be made (the process is out of file descriptors), the
    session goes on through the transports, byte-exact; and a session whose
    bytes have all been delivered holds no pipe (the pool has them all back).
    """
    with Backend(echo) as backend:
        service = make_service(_config(backend), reactor)
        service.startService()
        try:
            front = service.listeners[0].port
            assert front is not None
            port = front.getHost().port  # type: ignore[attr-defined]
            data = pattern(1 << 20, seed=11)
            assert await deferToThread(_transfer, port, data) == data
            assert POOL.in_use == 0

            def no_pipes(flags: int) -> tuple[int, int]:
                raise OSError(errno.EMFILE, "Too many open files")

            monkeypatch.setattr(os, "pipe2", no_pipes)
            monkeypatch.setattr(POOL, "_free", [])
            assert await deferToThread(_transfer, port, data) == data
        finally:
            await service.stopService()
