"""
Players of the waiting room's end-to-end tests (L{tests.test_e2e_waiting}):
raw TCP and WebSocket clients that read what a waiting player sees, its
place (C{--queue-message "{position} of {length}"}: a line on raw TCP, a
text message on WebSocket), then the backend's bytes.
"""

from __future__ import annotations

import re

from websockets.sync.client import ClientConnection

from tests.support import DEADLINE, GatewayProcess, connect, recv_until_eof
from tests.test_e2e_websocket import open_ws

__all__ = ["PLACE", "Place", "Player", "TcpPlayer", "WsPlayer", "new_player", "round_trip"]

PLACE = "{position} of {length}"
"""The queue message of these tests."""

_PLACE = re.compile(r"(\d+) of (\d+)")

Place = tuple[int, int]
"""A place as a player is told it: (position, length)."""


class TcpPlayer:
    """
    A raw TCP player: reads the gateway's place lines and the backend's bytes
    from one stream.
    """

    def __init__(self, port: int, first: bytes = b"", host: str = "127.0.0.1") -> None:
        """
        @param first: bytes sent at once (a client that speaks first is
            classified as a game client without the sniff timeout).
        """
        self.sock = connect(port, host)
        self._buffer = b""
        self.places: list[Place] = []
        if first:
            self.send(first)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise AssertionError(f"stream ended; unread: {self._buffer!r}")
        self._buffer += chunk

    def line(self) -> bytes:
        """
        The next line, CRLF included.
        """
        while b"\r\n" not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line + b"\r\n"

    def place(self) -> Place:
        """
        The next thing read must be a place line: return it (and keep it).
        """
        line = self.line()
        match = _PLACE.fullmatch(line[:-2].decode())
        assert match is not None, f"not a place line: {line!r}"
        place = (int(match.group(1)), int(match.group(2)))
        self.places.append(place)
        return place

    def data(self, count: int) -> bytes:
        """
        The next C{count} bytes (no place line may come first).
        """
        while len(self._buffer) < count:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def data_after_places(self, count: int) -> bytes:
        """
        The next C{count} bytes after any place lines (read and kept): the
        data must not start with a digit, as a place line does.
        """
        while True:
            if not self._buffer:
                self._fill()
            if not self._buffer[:1].isdigit():
                return self.data(count)
            self.place()

    def rest(self) -> bytes:
        """
        Everything up to the end of the stream.
        """
        rest, self._buffer = self._buffer + recv_until_eof(self.sock), b""
        return rest

    def close(self) -> None:
        self.sock.close()


class WsPlayer:
    """
    A WebSocket player on C{/play}: places come as text messages, the
    backend's bytes as binary ones.
    """

    def __init__(self, gateway: GatewayProcess) -> None:
        # Entered as a context (closed by L{close}), as websockets 17 asks.
        self.ws: ClientConnection = open_ws(gateway).__enter__()
        self._buffer = b""
        self.places: list[Place] = []

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def place(self) -> Place:
        """
        The next message must be a place (a text message): return it.
        """
        message = self.ws.recv(timeout=DEADLINE)
        assert isinstance(message, str), f"not a place message: {message!r}"
        match = _PLACE.fullmatch(message)
        assert match is not None, f"not a place message: {message!r}"
        place = (int(match.group(1)), int(match.group(2)))
        self.places.append(place)
        return place

    def data(self, count: int) -> bytes:
        """
        The next C{count} bytes, from binary messages only.
        """
        while len(self._buffer) < count:
            message = self.ws.recv(timeout=DEADLINE)
            assert isinstance(message, bytes), f"a text message among the data: {message!r}"
            self._buffer += message
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def close(self) -> None:
        self.ws.close()


Player = TcpPlayer | WsPlayer


def new_player(gateway: GatewayProcess, kind: str, first: bytes = b"") -> Player:
    """
    A player of C{kind} (C{tcp} or C{ws}) that sends C{first} at once.
    """
    if kind == "tcp":
        return TcpPlayer(gateway.port, first)
    player = WsPlayer(gateway)
    if first:
        player.send(first)
    return player


def round_trip(player: Player, data: bytes) -> None:
    """
    Send C{data} and read its echo.
    """
    player.send(data)
    assert player.data(len(data)) == data
