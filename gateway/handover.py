"""
Hand-over of the listening sockets from a running gateway to a new one
(C{--handover PATH}), so that an upgrade or restart refuses no connection
and cuts no session.

Both processes are started with the same C{--handover PATH} (a UNIX socket).
A gateway that finds another one answering at PATH when it starts takes
over its fronts instead of binding them:

  1. the new process connects and sends C{TAKEOVER}; the old one checks that
     the peer runs as the same user (or root), then sends the file
     descriptors of its listening sockets (C{SCM_RIGHTS}), followed by one
     JSON line naming them (C{[{"description": ..., "family": ...}]});
  2. the new process adopts each socket whose description matches one of
     its own C{--listen}/C{--admin} strings (the same socket: one kernel
     accept queue, now read by both), binds the others, and once its reactor
     runs sends C{READY};
  3. the old process stops accepting on the sockets it handed over (it
     keeps them open, so nothing waiting in the queue is lost), stops
     listening at PATH and answers C{HANDED-OVER}; the new one then listens
     at PATH for the next hand-over.

The old process keeps its sessions and serves them until an operator sends
it SIGTERM, which drains it as usual.  Since the listening socket is never
closed or re-bound, there is no moment when a connection attempt could be
refused.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from typing_extensions import override

__all__ = ["HANDOVER_TIMEOUT", "Handover", "HandoverServer", "take_over"]

HANDOVER_TIMEOUT = 10.0
"""Seconds the new process waits for each answer of the old one."""

_MAX_FDS = 64
"""The most sockets one hand-over carries."""


class HandoverError(Exception):
    """
    The hand-over failed (the old process answered wrongly or not at all).
    """


@dataclass
class Handover:
    """
    The sockets taken over from a running gateway, and the connection to it.

    @ivar sockets: description -> (file descriptor, address family).
    @ivar peer_pid: the old process's ID.
    """

    connection: socket.socket
    sockets: dict[str, tuple[int, int]] = field(default_factory=dict)
    peer_pid: int = 0

    def take(self, description: str) -> tuple[int, int] | None:
        """
        The socket the old process listened on for C{description}, if any
        (each is taken once).
        """
        return self.sockets.pop(description, None)

    def ready(self, adopted: list[str]) -> None:
        """
        Tell the old process that this one accepts now on the sockets whose
        descriptions are C{adopted}, and wait until it has stopped accepting
        on them and left PATH.

        @raise HandoverError: it did not answer as expected.
        """
        try:
            self.connection.sendall(b"READY " + json.dumps(adopted).encode() + b"\n")
            answer = _read_line(self.connection)
        except OSError as error:
            raise HandoverError(f"the old gateway did not answer: {error}") from None
        finally:
            self.connection.close()
        if answer != b"HANDED-OVER":
            raise HandoverError(f"unexpected answer from the old gateway: {answer!r}")

    def close_unused(self) -> list[str]:
        """
        Close the sockets that no front took; their descriptions.
        """
        unused = list(self.sockets)
        for fd, _family in self.sockets.values():
            os.close(fd)
        self.sockets.clear()
        return unused


def _read_line(connection: socket.socket, fds: list[int] | None = None) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        if fds is None:
            chunk = connection.recv(4096)
        else:
            chunk, got, _flags, _address = socket.recv_fds(connection, 65536, _MAX_FDS)
            fds.extend(got)
        if not chunk:
            raise HandoverError("the old gateway closed the connection")
        data += chunk
        if len(data) > 1 << 20:
            raise HandoverError("the old gateway's answer is too long")
    return data[:-1]


def take_over(path: str, timeout: float = HANDOVER_TIMEOUT) -> Handover | None:
    """
    Take over the listening sockets of the gateway answering at C{path}.

    @return: the sockets, or L{None} when no gateway answers there (then
        this one starts as the first).
    @raise HandoverError: one answered, but the hand-over failed.
    """
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        connection.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        connection.close()
        return None
    except OSError as error:
        connection.close()
        raise HandoverError(f"cannot reach the running gateway at {path}: {error}") from None
    fds: list[int] = []
    try:
        connection.sendall(b"TAKEOVER\n")
        line = _read_line(connection, fds)
        document = json.loads(line)
        if not isinstance(document, dict) or "error" in document:
            raise HandoverError(f"the running gateway refused: {document.get('error')}")
        listed = document["sockets"]
        if len(listed) != len(fds):
            raise HandoverError(f"got {len(fds)} sockets for {len(listed)} fronts")
    except (OSError, ValueError, KeyError, TypeError) as error:
        for fd in fds:
            os.close(fd)
        connection.close()
        raise HandoverError(f"the hand-over from {path} failed: {error}") from None
    except HandoverError:
        for fd in fds:
            os.close(fd)
        connection.close()
        raise
    handover = Handover(connection, peer_pid=int(document.get("pid", 0)))
    for entry, fd in zip(listed, fds, strict=True):
        handover.sockets[str(entry["description"])] = (fd, int(entry["family"]))
    return handover


class _HandoverProtocol(LineOnlyReceiver):
    """
    The old process's side of one hand-over.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16
    _log = Logger()

    def __init__(self, server: HandoverServer) -> None:
        self._server = server
        self._given: list[tuple[str, IListeningPort]] = []

    @override
    def connectionMade(self) -> None:
        self._peer_pid, self._peer_uid = _peer_credentials(self.transport)

    @override
    def lineReceived(self, line: bytes) -> None:
        if line == b"TAKEOVER" and not self._given:
            self._take_over()
        elif line.startswith(b"READY ") and self._given:
            try:
                adopted = set(json.loads(line[len(b"READY ") :]))
            except ValueError:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            # Only what the new process took: a front it does not have stays
            # ours, accepting, until this process drains.
            given = [(d, port) for d, port in self._given if d in adopted]
            self._server.handed_over(given, self._peer_pid).addCallback(self._done)
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _take_over(self) -> None:
        if self._peer_uid not in (os.getuid(), 0):
            self._log.warn(
                "refused a hand-over to process {pid}: it runs as user {uid}",
                pid=self._peer_pid,
                uid=self._peer_uid,
            )
            self.sendLine(json.dumps({"error": "not the same user"}).encode())
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        listed = []
        for description, port in self._server.ports():
            sock = port.socket  # type: ignore[attr-defined]
            self.transport.sendFileDescriptor(sock.fileno())  # type: ignore[union-attr]
            listed.append({"description": description, "family": int(sock.family)})
            self._given.append((description, port))
        self.sendLine(json.dumps({"pid": os.getpid(), "sockets": listed}).encode())
        self._log.info(
            "handing over {count} listening sockets to process {pid}",
            count=len(listed),
            pid=self._peer_pid,
        )

    def _done(self, _: object) -> None:
        self.sendLine(b"HANDED-OVER")
        self.transport.loseConnection()  # type: ignore[union-attr]


def _peer_credentials(transport: object) -> tuple[int, int]:
    """
    The (pid, uid) of the process at the other end of a UNIX connection.
    """
    sock = getattr(transport, "socket", None)
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return 0, -1
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


class HandoverServer(Service):
    """
    Listens at C{--handover PATH} (mode 0600) for a new gateway to take over.

    @ivar path: the UNIX socket's path.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        reactor: object,
        ports: Callable[[], list[tuple[str, IListeningPort]]],
        stop_accepting: Callable[[list[tuple[str, IListeningPort]]], None],
    ) -> None:
        """
        @param ports: the listening ports to hand over, with their descriptions.
        @param stop_accepting: called with the ports handed over once the new
            process accepts on them.
        """
        self.path = path
        self._reactor = reactor
        self._ports = ports
        self._stop_accepting = stop_accepting
        self._port: IListeningPort | None = None
        self.handed_over_to: int | None = None
        self.hold = False
        self.setName("handover")

    def ports(self) -> list[tuple[str, IListeningPort]]:
        """
        What a hand-over gives.
        """
        return self._ports()

    @override
    def startService(self) -> None:
        super().startService()
        if not self.hold:
            self.listen()

    def listen(self) -> None:
        """
        Listen at PATH (after a hand-over, once the old process has left it).
        """
        if self._port is not None:
            return
        if os.path.exists(self.path):
            # Left by a process that was handed over from, or that died: a
            # live one answered take_over() before this process started.
            os.unlink(self.path)
        factory = Factory.forProtocol(lambda: _HandoverProtocol(self))
        factory.noisy = False
        self._port = self._reactor.listenUNIX(  # type: ignore[attr-defined]
            self.path, factory, mode=0o600
        )
        self._log.info("waiting for a hand-over at {path}", path=self.path)

    def handed_over(self, given: list[tuple[str, IListeningPort]], pid: int) -> Deferred[None]:
        """
        The new process accepts: stop accepting on what was given, and stop
        listening at PATH (so that the new process can listen there).
        """
        self._stop_accepting(given)
        self.handed_over_to = pid
        self._log.info(
            "handed over to process {pid}: no longer accepting on {fronts}; "
            "send SIGTERM to drain this process",
            pid=pid,
            fronts=", ".join(description for description, _ in given),
        )
        return self._stop_listening()

    def _stop_listening(self) -> Deferred[None]:
        port, self._port = self._port, None
        if port is None:
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        # Twisted removes the socket file once the port is closed; the new
        # process binds PATH only after our answer, sent after that.
        stopped: Deferred[None] = Deferred()
        result = port.stopListening()
        if isinstance(result, Deferred):
            result.addBoth(lambda _: stopped.callback(None))
        else:
            stopped.callback(None)
        return stopped

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._port is None:
            return None
        return self._stop_listening()
