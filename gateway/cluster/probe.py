"""
The start-up check of the cluster's Redis: L{check_redis}.

Before the node serves, it connects once, as its client will (TLS verified
for C{rediss}), authenticates and selects its database, and pings, with a
short timeout: so that an unreachable Redis or a refused password is one
clear line at start (and, with C{--cluster-required}, a refusal to start)
rather than a client retrying in the background.  A blocking exchange of
three commands, run once before the reactor serves anything; the node's
own client (txredisapi, L{gateway.cluster.link}) does everything after.
"""

from __future__ import annotations

import socket
import ssl

from gateway.config import ClusterSpec

__all__ = ["check_redis"]


def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _reply(stream: socket.SocketIO) -> str:
    """
    One simple reply (C{+OK}, C{+PONG}, C{-ERR ...}) as text; an error's
    text starts with C{-}.
    """
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = stream.read(1)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        line += chunk
        if len(line) > 4096:
            raise ConnectionError("an answer that is not Redis'")
    return line[:-2].decode("utf-8", "replace")


def check_redis(spec: ClusterSpec, timeout: float) -> str | None:
    """
    Connect, authenticate, select the database and ping, within C{timeout}
    seconds each step.

    @return: L{None} when Redis answered, else why not (one line, without the
        password).
    """
    where = spec.shown()
    try:
        if spec.scheme == "unix":
            assert spec.path is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(spec.path)
        else:
            assert spec.host is not None
            sock = socket.create_connection((spec.host, spec.port), timeout=timeout)
            if spec.scheme == "rediss":
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=spec.host)
    except (OSError, ssl.SSLError) as error:
        return f"cannot reach Redis at {where}: {error.strerror or error}"
    with sock:
        stream = socket.SocketIO(sock, "rb")
        try:
            if spec.password is not None:
                user = [spec.username] if spec.username else []
                sock.sendall(_command("AUTH", *user, spec.password))
                answer = _reply(stream)
                if answer.startswith("-"):
                    return f"Redis at {where} refuses the password: {answer[1:].rstrip('.')}"
            sock.sendall(_command("SELECT", str(spec.db)) + _command("PING"))
            for answer in (_reply(stream), _reply(stream)):
                if answer.startswith("-"):
                    return f"Redis at {where} answers: {answer[1:]}"
        except TimeoutError:
            return f"Redis at {where} did not answer within {timeout:g} s"
        except OSError as error:
            return f"Redis at {where}: {error.strerror or error}"
    return None
