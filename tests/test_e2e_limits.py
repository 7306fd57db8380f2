"""
End-to-end tests of the connection limits: a real C{twistd -n gateway} on
loopback, clients from several source addresses (127.0.0.2, 127.0.0.3, ...).
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    recv_exactly,
    recv_until_eof,
    wait_for,
)


def client_from(source: str, port: int) -> socket.socket:
    """
    A client bound to the source address C{source}, connected to the gateway.
    """
    sock = socket.socket()
    sock.settimeout(DEADLINE)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def game_session(source: str, port: int) -> socket.socket:
    """
    A game client from C{source} whose session is established (one echo).
    """
    sock = client_from(source, port)
    sock.sendall(b"ping\n")
    assert recv_exactly(sock, 5) == b"ping\n"
    return sock


def is_refused(sock: socket.socket, expected: bytes = b"") -> bool:
    """
    Send game bytes and tell whether the gateway closed the connection
    (after C{expected}) instead of relaying them.
    """
    try:
        sock.sendall(b"ping\n")
        return recv_until_eof(sock) == expected
    except ConnectionResetError:
        return expected == b""


def test_reject_at_the_total_cap(tmp_path: Path, echo_backend: Backend) -> None:
    """
    With --max-connections 3 and reject: the 4th and 5th game clients are
    closed at once after the busy line, an HTTP client gets 503 with
    Retry-After, and the 3 admitted sessions keep working.
    """
    with GatewayProcess(
        [
            "--backend",
            echo_backend.endpoint,
            "--max-connections",
            "3",
            "--busy-message",
            "Server full, try again later",
        ],
        tmp_path,
    ) as gateway:
        admitted = [game_session("127.0.0.1", gateway.port) for _ in range(3)]
        for _ in range(2):
            extra = client_from("127.0.0.1", gateway.port)
            assert is_refused(extra, b"Server full, try again later\r\n")
            extra.close()
        web = client_from("127.0.0.1", gateway.port)
        web.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = recv_until_eof(web)
        web.close()
        assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 5\r\n" in response
        for sock in admitted:
            sock.sendall(b"still here\n")
            assert recv_exactly(sock, 11) == b"still here\n"
            sock.close()
        wait_for(lambda: "refused 127.0.0.1:" in gateway.log(), "the refusal log lines")
        assert gateway.log().count(": total-cap") == 3


def test_queue_at_the_total_cap(tmp_path: Path, echo_backend: Backend) -> None:
    """
    With --max-connections 3 and queue: 2 more clients are not refused; they
    wait (unserved) until slots free, then are served in arrival order.
    """
    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--max-connections", "3", "--overflow", "queue"],
        tmp_path,
    ) as gateway:
        admitted = [game_session("127.0.0.1", gateway.port) for _ in range(3)]
        waiting = []
        for index in range(2):
            sock = client_from("127.0.0.1", gateway.port)
            sock.sendall(f"waiter {index}\n".encode())
            waiting.append(sock)
        for sock in waiting:
            sock.settimeout(0.5)
            try:
                assert sock.recv(100) == b"", "a queued client was served at the cap"
                raise AssertionError("a queued client was closed")
            except TimeoutError:
                pass
            sock.settimeout(DEADLINE)
        admitted.pop(0).close()
        assert recv_exactly(waiting[0], 9) == b"waiter 0\n"
        waiting[1].settimeout(0.5)
        try:
            waiting[1].recv(100)
            raise AssertionError("the second queued client was served too early")
        except TimeoutError:
            pass
        waiting[1].settimeout(DEADLINE)
        admitted.pop(0).close()
        assert recv_exactly(waiting[1], 9) == b"waiter 1\n"
        for sock in admitted + waiting:
            sock.sendall(b"ok\n")
            assert recv_exactly(sock, 3) == b"ok\n"
            sock.close()
        assert "refused" not in gateway.log()
        assert "stopped accepting: 3 of 3 connections in use" in gateway.log()


def test_per_address_cap_isolates_addresses(tmp_path: Path, echo_backend: Backend) -> None:
    """
    With --max-per-ip 2, a third connection from 127.0.0.2 is refused while
    127.0.0.3 still gets its two, and a slot freed on .2 can be used again.
    """
    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--max-per-ip", "2"], tmp_path
    ) as gateway:
        two = [game_session("127.0.0.2", gateway.port) for _ in range(2)]
        third = client_from("127.0.0.2", gateway.port)
        assert is_refused(third)
        third.close()
        three = [game_session("127.0.0.3", gateway.port) for _ in range(2)]
        two.pop().close()
        wait_for(lambda: "ended (client-closed)" in gateway.log(), "the slot to free")
        two.append(game_session("127.0.0.2", gateway.port))
        for sock in two + three:
            sock.close()
        wait_for(lambda: "refused 127.0.0.2:" in gateway.log(), "the refusal log")
        assert "address-cap" in gateway.log()
        assert "refused 127.0.0.3" not in gateway.log()


def test_rate_per_address(tmp_path: Path, echo_backend: Backend) -> None:
    """
    With --rate-per-ip 2 and --rate-burst 3, 127.0.0.2 gets 3 connections at
    once and the 4th is refused, 127.0.0.3 is not affected, and after half a
    second 127.0.0.2 may connect again.
    """
    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--rate-per-ip", "2", "--rate-burst", "3"],
        tmp_path,
    ) as gateway:
        socks = [game_session("127.0.0.2", gateway.port) for _ in range(3)]
        fourth = client_from("127.0.0.2", gateway.port)
        assert is_refused(fourth)
        fourth.close()
        socks.append(game_session("127.0.0.3", gateway.port))
        time.sleep(0.6)
        socks.append(game_session("127.0.0.2", gateway.port))
        for sock in socks:
            sock.close()
        wait_for(lambda: ": rate" in gateway.log(), "the refusal log")


def proxy_v1(source: str, port: int) -> bytes:
    """
    A PROXY protocol version 1 header claiming C{source:port}.
    """
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 8080\r\n".encode()


def proxy_v2(source: str, port: int) -> bytes:
    """
    A PROXY protocol version 2 header claiming C{source:port}.
    """
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    body = addresses + struct.pack("!HH", port, 8080)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def test_proxy_claimed_addresses_are_limited_per_claim(
    tmp_path: Path, echo_backend: Backend
) -> None:
    """
    Behind a balancer (haproxy: front), every connection comes from the
    balancer's address, but the limits count the address each PROXY header
    claims, whether the header is v1 or v2 and however it is split; the logs
    name the claimed address.
    """
    with GatewayProcess(
        [
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--backend",
            echo_backend.endpoint,
            "--max-per-ip",
            "1",
        ],
        tmp_path,
    ) as gateway:
        first = client_from("127.0.0.1", gateway.port)
        first.sendall(proxy_v1("10.0.0.1", 5001) + b"ping\n")
        assert recv_exactly(first, 5) == b"ping\n"

        second = client_from("127.0.0.1", gateway.port)
        for byte in proxy_v2("10.0.0.1", 5002):  # one byte per write
            second.send(bytes([byte]))
            time.sleep(0.001)
        assert is_refused(second)
        second.close()

        third = client_from("127.0.0.1", gateway.port)
        header = proxy_v2("10.0.0.2", 5003)
        third.sendall(header[:7])
        time.sleep(0.05)
        third.sendall(header[7:] + b"ping\n")
        assert recv_exactly(third, 5) == b"ping\n"

        first.close()
        third.close()
        wait_for(lambda: "refused 10.0.0.1:5002: address-cap" in gateway.log(), "refusal log")
        wait_for(lambda: "game session from 10.0.0.2:5003" in gateway.log(), "session log")


def test_bad_proxy_header_is_refused(tmp_path: Path, echo_backend: Backend) -> None:
    """
    On a haproxy: front, a connection without a valid PROXY header is closed
    and counted as a bad request, and so is one whose version 1 header has a
    port out of the specification's range or form, or an address of the
    other family; nothing reaches the backend, and the gateway keeps serving.
    """
    with GatewayProcess(
        ["--listen", "haproxy:tcp:0:interface=127.0.0.1", "--backend", echo_backend.endpoint],
        tmp_path,
    ) as gateway:
        for header in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PROXY TCP4 10.1.2.3 127.0.0.1 99999 8080\r\nping\n",
            b"PROXY TCP4 10.1.2.3 127.0.0.1 +55 5_5\r\nping\n",
            b"PROXY TCP4 ::1 ::1 4000 8080\r\nping\n",
            b"PROXY TCP6 10.1.2.3 127.0.0.1 4000 8080\r\nping\n",
        ):
            bad = client_from("127.0.0.1", gateway.port)
            bad.sendall(header)
            assert recv_until_eof(bad) == b"", header
            bad.close()
        good = client_from("127.0.0.1", gateway.port)
        good.sendall(proxy_v1("10.1.2.3", 4000) + b"ping\n")
        assert recv_exactly(good, 5) == b"ping\n"
        good.close()
        wait_for(lambda: "bad-request (bad PROXY header" in gateway.log(), "refusal log")


def test_slowloris_closed_while_game_keeps_flowing(tmp_path: Path, echo_backend: Backend) -> None:
    """
    An HTTP client that sends its headers one slow line at a time gets 408
    after --header-timeout and is closed, while a game session on the same
    port keeps relaying throughout.
    """
    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--header-timeout", "1"], tmp_path
    ) as gateway:
        game = game_session("127.0.0.1", gateway.port)
        slow = client_from("127.0.0.1", gateway.port)
        slow.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        response = b""
        for index in range(20):
            game.sendall(b"tick\n")
            assert recv_exactly(game, 5) == b"tick\n"
            try:
                slow.sendall(f"X-Slow-{index}: 1\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                break
            slow.settimeout(0.3)
            try:
                chunk = slow.recv(4096)
            except TimeoutError:
                continue
            finally:
                slow.settimeout(DEADLINE)
            response += chunk
            if not chunk or b"\r\n\r\n" in response:
                break
        elapsed = time.monotonic() - started
        assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), response
        assert 0.9 <= elapsed < 5
        slow.close()
        game.sendall(b"after\n")
        assert recv_exactly(game, 6) == b"after\n"
        game.close()
        wait_for(lambda: "timeout (request headers not complete" in gateway.log(), "log")


def test_oversized_request_lines_and_headers(tmp_path: Path, echo_backend: Backend) -> None:
    """
    An oversized request line gets 414, an oversized header line 431, too
    many header bytes in all 400; each is closed, and the gateway keeps
    serving.
    """
    cases = [
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"HTTP/1.1 414 URI Too Long\r\n"),
        (
            b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        ),
        (
            b"GET / HTTP/1.1\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 100) for i in range(200))
            + b"\r\n",
            b"HTTP/1.1 400 Bad Request\r\n",
        ),
    ]
    with GatewayProcess(["--backend", echo_backend.endpoint], tmp_path) as gateway:
        for request, status in cases:
            sock = client_from("127.0.0.1", gateway.port)
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                response = recv_until_eof(sock)
            except ConnectionResetError:
                response = b""
            sock.close()
            assert response.startswith(status), (status, response[:80])
        game = game_session("127.0.0.1", gateway.port)
        game.close()
        assert gateway.log().count("bad-request") == 3


def test_noisy_address_does_not_use_up_the_total_cap(
    tmp_path: Path, echo_backend: Backend
) -> None:
    """
    Connections refused for their address (here silent ones, whose refusal
    waits for their first bytes) do not hold total-cap slots: with 4 slots
    and 2 per address, a client from another address is still served while
    127.0.0.2 keeps 10 refused connections open.
    """
    with GatewayProcess(
        [
            "--backend",
            echo_backend.endpoint,
            "--max-connections",
            "4",
            "--max-per-ip",
            "2",
            "--busy-message",
            "BUSY",
            "--sniff-timeout",
            "2",
        ],
        tmp_path,
    ) as gateway:
        noisy = [game_session("127.0.0.2", gateway.port) for _ in range(2)]
        silent = [client_from("127.0.0.2", gateway.port) for _ in range(10)]
        time.sleep(0.2)
        others = [game_session("127.0.0.3", gateway.port) for _ in range(2)]
        for sock in noisy + silent + others:
            sock.close()
        assert "total-cap" not in gateway.log()


def test_refusal_at_the_cap_behind_a_balancer_reads_the_proxy_header(
    tmp_path: Path, echo_backend: Backend
) -> None:
    """
    On a haproxy: front at the total cap, the refusal reads the PROXY header
    first: an HTTP client behind the balancer gets 503 (not a game answer)
    and the log names the address the header claims.
    """
    with GatewayProcess(
        [
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--backend",
            echo_backend.endpoint,
            "--max-connections",
            "1",
            "--busy-message",
            "BUSY",
        ],
        tmp_path,
    ) as gateway:
        holder = client_from("127.0.0.1", gateway.port)
        holder.sendall(proxy_v1("10.0.0.1", 4001) + b"ping\n")
        assert recv_exactly(holder, 5) == b"ping\n"
        web = client_from("127.0.0.1", gateway.port)
        web.sendall(proxy_v2("10.0.0.2", 4002) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = recv_until_eof(web)
        web.close()
        holder.close()
        assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), response
        wait_for(lambda: "refused 10.0.0.2:4002: total-cap" in gateway.log(), "the refusal log")
