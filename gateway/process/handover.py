"""
Hand-over of the listening sockets from a running gateway to a new one
(C{--handover PATH}), so that an upgrade or restart refuses no connection
and cuts no session.

Both processes are started with the same C{--handover PATH} (a UNIX socket).
A gateway that finds another one answering at PATH when it starts takes
over its fronts instead of binding them:

  1. the new process connects and sends C{TAKEOVER}; the old one checks that
     the peer runs as the same user (or root) and that no other process is
     taking its sockets over or has taken them, then sends the file
     descriptors of its listening sockets (C{SCM_RIGHTS}), followed by one
     JSON line naming them (C{{"pid": ..., "sockets": [{"description": ...,
     "family": ...}]}}); or it refuses with one line C{{"error": REASON}}
     (a second taker: the sockets are handed over once);
  2. the new process adopts each socket whose description matches one of
     its own C{--listen}/C{--admin} strings (the same socket: one kernel
     accept queue, now read by both), binds the others, and once its reactor
     runs sends C{READY [descriptions]};
  3. the old process stops accepting on the sockets it handed over (it
     keeps them open, so nothing waiting in the queue is lost) and answers
     C{HANDED-OVER}; it keeps listening at PATH (refusing any other taker)
     until the new process, which has meanwhile put its own listening
     socket at PATH (bound at a temporary name and renamed over PATH, so
     PATH always leads to a live gateway), closes the connection.  If the
     connection closes while PATH is still the old process's (the new one
     died after READY), the old one accepts on those sockets again.

The new process never waits longer than L{HANDOVER_TIMEOUT} for an answer.
If the old process dies or misbehaves before its whole answer of step 1 has
arrived (nothing, part of the sockets, a truncated or garbled line, no
answer in time), nothing is adopted: every received descriptor is closed
and every front is bound afresh, which works when the old process is gone
and fails (a one-line error, exit status 2) while it still holds the ports.
Adopting part of an answer could leave two processes accepting when the old
one is alive.  If it dies after step 1, the new process accepts on
everything already and goes on.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from typing_extensions import override

__all__ = [
    "HANDOVER_TIMEOUT",
    "Handover",
    "HandoverError",
    "HandoverLostError",
    "HandoverRefusedError",
    "HandoverServer",
    "take_over",
]

HANDOVER_TIMEOUT = 10.0
"""Seconds the new process waits for each answer of the old one."""

_MAX_FDS = 64
"""The most sockets one hand-over carries."""

_MAX_ANSWER = 1 << 20
"""The longest answer line the new process reads."""


class HandoverError(Exception):
    """
    The hand-over failed.
    """


class HandoverRefusedError(HandoverError):
    """
    The running gateway answered and refused (another process takes or has
    taken its sockets over, or this one runs as another user), or PATH
    cannot be reached: this process must not start, and binds nothing.
    """


class HandoverLostError(HandoverError):
    """
    The old process died or misbehaved before its whole answer arrived (it
    closed the connection, answered something that is not the protocol, or
    did not answer in time): nothing was taken over.
    """


@dataclass
class Handover:
    """
    The sockets taken over from a running gateway, and the connection to it.

    @ivar sockets: description -> (file descriptor, address family).
    @ivar peer_pid: the old process's ID.
    @ivar timeout: seconds to wait for the old process's answer to READY.
    """

    connection: socket.socket
    sockets: dict[str, tuple[int, int]] = field(default_factory=dict)
    peer_pid: int = 0
    timeout: float = HANDOVER_TIMEOUT

    def take(self, description: str) -> tuple[int, int] | None:
        """
        The socket the old process listened on for C{description}, if any
        (each is taken once).
        """
        return self.sockets.pop(description, None)

    def ready(self, adopted: list[str]) -> None:
        """
        Tell the old process that this one accepts now on the sockets whose
        descriptions are C{adopted}, and wait (at most C{timeout} seconds)
        until it has stopped accepting on them.  The connection stays open:
        the old process answers other takers until L{close}.

        @raise HandoverLostError: it did not answer as expected.
        """
        try:
            self.connection.settimeout(self.timeout)
            self.connection.sendall(b"READY " + json.dumps(adopted).encode() + b"\n")
            answer = _read_line(self.connection, time.monotonic() + self.timeout, time.monotonic)
        except OSError as error:
            raise HandoverLostError(f"the old gateway did not answer: {_reason(error)}") from None
        if answer != b"HANDED-OVER":
            raise HandoverLostError(f"unexpected answer from the old gateway: {answer[:80]!r}")

    def close(self) -> None:
        """
        End the conversation (once this process listens at PATH).
        """
        self.connection.close()

    def close_unused(self) -> list[str]:
        """
        Close the sockets that no front took; their descriptions.
        """
        unused = list(self.sockets)
        for fd, _family in self.sockets.values():
            os.close(fd)
        self.sockets.clear()
        return unused


def _reason(error: OSError) -> str:
    """
    A short text for a socket error (a timeout's own text is empty).
    """
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return error.strerror or str(error)


def _read_line(
    connection: socket.socket,
    deadline: float,
    now: Callable[[], float],
    fds: list[int] | None = None,
) -> bytes:
    """
    One line from C{connection}, without its newline, read before
    C{deadline} (however slowly the peer sends it); the descriptors that
    come with it are added to C{fds}.

    @raise HandoverLostError: the peer closed first, or the line is too long.
    @raise OSError: a socket error, or C{TimeoutError} at the deadline.
    """
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - now()
        if left <= 0:
            raise TimeoutError()
        connection.settimeout(left)
        if fds is None:
            chunk = connection.recv(4096)
        else:
            chunk, got, _flags, _address = socket.recv_fds(connection, 65536, _MAX_FDS)
            fds.extend(got)
        if not chunk:
            raise HandoverLostError(
                "the old gateway closed the connection"
                + (f" after {len(fds)} sockets" if fds else "")
            )
        data += chunk
        if len(data) > _MAX_ANSWER:
            raise HandoverLostError("the old gateway's answer is too long")
    return data[:-1]


def take_over(
    path: str,
    timeout: float = HANDOVER_TIMEOUT,
    now: Callable[[], float] = time.monotonic,
) -> Handover | None:
    """
    Take over the listening sockets of the gateway answering at C{path}.

    Waits at most C{timeout} seconds in all.  Either every socket of the
    answer is taken, or none (the received descriptors are closed).

    @param now: the clock that bounds the wait.
    @return: the sockets, or L{None} when no gateway answers there (then
        this one starts as the first).
    @raise HandoverRefusedError: the running gateway refused, or PATH cannot be
        reached (permissions).
    @raise HandoverLostError: it died or misbehaved before its whole answer.
    """
    deadline = now() + timeout
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        connection.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        connection.close()
        return None
    except TimeoutError:
        # Its backlog is full and it does not accept: a hung process.
        connection.close()
        raise HandoverLostError("the old gateway does not accept connections") from None
    except OSError as error:
        connection.close()
        raise HandoverRefusedError(
            f"cannot reach the running gateway at {path}: {error}"
        ) from None
    fds: list[int] = []
    try:
        connection.sendall(b"TAKEOVER\n")
        line = _read_line(connection, deadline, now, fds)
        document = json.loads(line)
        if isinstance(document, dict) and "error" in document:
            raise HandoverRefusedError(f"the running gateway refused: {document['error']}")
        listed = document["sockets"]
        sockets = {str(entry["description"]): int(entry["family"]) for entry in listed}
        if len(listed) != len(fds) or len(sockets) != len(fds):
            raise HandoverLostError(f"got {len(fds)} sockets for {len(listed)} fronts")
        peer_pid = int(document.get("pid", 0))
    except HandoverError:
        _discard(connection, fds)
        raise
    except OSError as error:
        _discard(connection, fds)
        raise HandoverLostError(_reason(error)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        _discard(connection, fds)
        raise HandoverLostError(f"the old gateway's answer is garbled: {error}") from None
    handover = Handover(connection, peer_pid=peer_pid, timeout=timeout)
    for (description, family), fd in zip(sockets.items(), fds, strict=True):
        handover.sockets[description] = (fd, family)
    return handover


def _discard(connection: socket.socket, fds: list[int]) -> None:
    """
    Close the connection and every descriptor received on it.
    """
    for fd in fds:
        os.close(fd)
    connection.close()


class _HandoverProtocol(LineOnlyReceiver):
    """
    The old process's side of one hand-over: C{TAKEOVER} (sockets given,
    or a refusal), then C{READY} (stop accepting, answer C{HANDED-OVER}),
    then wait for the new process to close.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 16
    _log = Logger()

    def __init__(self, server: HandoverServer) -> None:
        self._server = server
        self._given: list[tuple[str, IListeningPort]] = []
        self.handed: list[tuple[str, IListeningPort]] = []
        self._done = False
        self.peer_pid = 0
        self._peer_uid = -1

    @override
    def connectionMade(self) -> None:
        self.peer_pid, self._peer_uid = _peer_credentials(self.transport)

    @override
    def lineReceived(self, line: bytes) -> None:
        if line == b"TAKEOVER" and not self._given and not self._done:
            self._take_over()
        elif line.startswith(b"READY ") and self._given and not self._done:
            try:
                adopted = set(json.loads(line[len(b"READY ") :]))
            except (ValueError, TypeError):
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            # Only what the new process took: a front it does not have stays
            # ours, accepting, until this process drains.
            self.handed = [(d, port) for d, port in self._given if d in adopted]
            self._done = True
            self._server.handed_over(self.handed, self.peer_pid)
            self.sendLine(b"HANDED-OVER")
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _take_over(self) -> None:
        refusal = self._server.reserve(self, self._peer_uid)
        if refusal is not None:
            self._log.warn(
                "refused a hand-over to process {pid}: {reason}",
                pid=self.peer_pid,
                reason=refusal,
            )
            self.sendLine(json.dumps({"error": refusal}).encode())
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
            pid=self.peer_pid,
        )

    @override
    def connectionLost(self, reason: object = None) -> None:
        self._server.released(self, completed=self._done)


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


class _HandoverFactory(Factory):
    """
    Builds the hand-over socket's protocols, quietly (Twisted's factories
    log their start and stop).
    """

    noisy = False

    def __init__(self, server: HandoverServer) -> None:
        self._server = server

    @override
    def buildProtocol(self, addr: IAddress | None) -> _HandoverProtocol:
        return _HandoverProtocol(self._server)


class HandoverServer(Service):
    """
    Listens at C{--handover PATH} (mode 0600) for a new gateway to take over,
    and gives its sockets to one taker only.

    PATH is replaced atomically (a socket bound at a temporary name, then
    renamed over PATH), and this process unlinks PATH only while it is still
    its own: PATH never disappears while a gateway listens there, and is
    never taken from the process that put its socket there.

    @ivar path: the UNIX socket's path.
    @ivar handed_over_to: the process the sockets went to, once it is ready.
    @ivar hold: do not listen at start (this process takes over first).
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        reactor: Any,
        ports: Callable[[], list[tuple[str, IListeningPort]]],
        stop_accepting: Callable[[list[tuple[str, IListeningPort]]], None],
        resume_accepting: Callable[[list[tuple[str, IListeningPort]]], None] | None = None,
    ) -> None:
        """
        @param reactor: an C{IReactorSocket} (it adopts PATH's socket).
        @param ports: the listening ports to hand over, with their descriptions.
        @param stop_accepting: called with the ports handed over once the new
            process accepts on them.
        @param resume_accepting: called with them again if the new process
            goes away before it has put its socket at PATH.
        """
        self.path = path
        self._reactor = reactor
        self._ports = ports
        self._stop_accepting = stop_accepting
        self._resume_accepting = resume_accepting
        self._port: IListeningPort | None = None
        self._inode: int | None = None
        self._taker: _HandoverProtocol | None = None
        self.handed_over_to: int | None = None
        self._hold = False
        self.setName("handover")

    def ports(self) -> list[tuple[str, IListeningPort]]:
        """
        What a hand-over gives.
        """
        return self._ports()

    def reserve(self, taker: _HandoverProtocol, uid: int) -> str | None:
        """
        Give the sockets to C{taker}, unless they are another's.

        @return: L{None}, or why not (one line for the taker).
        """
        if uid not in (os.getuid(), 0):
            return f"process {taker.peer_pid} runs as user {uid}, not the same user"
        if self.handed_over_to is not None:
            return f"already handed over to process {self.handed_over_to}"
        if self._taker is not None and self._taker is not taker:
            return f"process {self._taker.peer_pid} is taking over already"
        self._taker = taker
        return None

    def released(self, taker: _HandoverProtocol, completed: bool) -> None:
        """
        C{taker}'s connection is closed: after a completed hand-over the new
        process listens at PATH now, so stop listening here (if PATH is still
        ours, it died before: accept again); before, the sockets are free
        for another taker (this process still accepts).
        """
        if taker is not self._taker:
            return
        if completed and not self._owns_path():
            self._close(unlink=False)
            return
        self._taker = None
        if completed:
            self.handed_over_to = None
            if self._resume_accepting is not None:
                self._resume_accepting(taker.handed)
            self._log.warn(
                "process {pid} went away before taking over {path}: accepting again on {fronts}",
                pid=taker.peer_pid,
                path=self.path,
                fronts=", ".join(description for description, _ in taker.handed),
            )
            return
        self._log.warn(
            "the hand-over to process {pid} did not complete: still accepting",
            pid=taker.peer_pid,
        )

    def hold_path(self) -> None:
        """
        Do not listen at PATH when started: it is still the old process's
        until it has answered this one's hand-over (L{release_path}).
        """
        self._hold = True

    def release_path(self) -> None:
        """
        The old process has answered (or is gone): listen at PATH now, if
        that was held back.
        """
        if self._hold:
            self._hold = False
            self.listen()

    @override
    def startService(self) -> None:
        super().startService()
        if not self._hold:
            self.listen()

    def listen(self) -> None:
        """
        Listen at PATH (atomically replacing whatever is there: the socket of
        a process that handed over to this one, or of one that died).
        """
        if self._port is not None:
            return
        temporary = f"{self.path}.{os.getpid()}.new"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(temporary):
                os.unlink(temporary)
            sock.bind(temporary)
            os.chmod(temporary, 0o600)
            sock.listen(50)
            sock.setblocking(False)
            factory = _HandoverFactory(self)
            # Adopted under its own name (Twisted chmods that name, 0666);
            # the peer's user is checked on every connection anyway.
            port = self._reactor.adoptStreamPort(sock.fileno(), socket.AF_UNIX, factory)
            os.chmod(temporary, 0o600)
            inode = os.stat(temporary).st_ino
            os.rename(temporary, self.path)
        finally:
            sock.close()
            if os.path.lexists(temporary):
                os.unlink(temporary)
        self._port, self._inode = port, inode
        self._log.info("waiting for a hand-over at {path}", path=self.path)

    def handed_over(self, given: list[tuple[str, IListeningPort]], pid: int) -> None:
        """
        The new process accepts: stop accepting on what was given.
        """
        self._stop_accepting(given)
        self.handed_over_to = pid
        self._log.info(
            "handed over to process {pid}: no longer accepting on {fronts}; "
            "send SIGTERM to drain this process",
            pid=pid,
            fronts=", ".join(description for description, _ in given),
        )

    def _owns_path(self) -> bool:
        """
        Whether PATH is still this process's listening socket.
        """
        try:
            return self._port is not None and os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    def _close(self, unlink: bool) -> None:
        """
        Stop listening at PATH; remove PATH only when C{unlink} and it is
        still this process's socket.
        """
        port, self._port = self._port, None
        if port is None:
            return
        if unlink and self.handed_over_to is None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
        # Not stopListening: Twisted would unlink the name the socket was
        # bound at, which is gone (renamed to PATH, and maybe replaced since).
        port.stopReading()  # type: ignore[attr-defined]
        port.socket.close()  # type: ignore[attr-defined]

    @override
    def stopService(self) -> None:
        super().stopService()
        self._close(unlink=True)
