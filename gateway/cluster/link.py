"""
The node's connections to the cluster's Redis: L{RedisLink}.

Two connections, both made by txredisapi over Twisted endpoints built here
(TCP, TLS for C{rediss://} verified against the system's trust roots and
the host name, or a UNIX socket), each authenticated (C{AUTH}, with an ACL
user if one is given) and on the configured database, and each reconnecting
by itself after Redis goes away:

  - the command connection, through which every command goes with a
    timeout (L{RedisLink.call}); a command that times out or fails marks
    Redis down (logged once), and while it is down no command is queued
    behind a dead connection: calls fail at once, except one probe at a
    time, so the gateway never builds up pending commands while Redis is
    away;
  - the subscriber connection, on the cluster's channel, whose messages
    go to a callback.

Nothing here is on a session's data path: callers decide what a failed call
means (the membership skips a heartbeat; shared operations stay local).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.config import ClusterSpec

__all__ = ["RedisDownError", "RedisLink", "endpoint_of"]

CONNECT_TIMEOUT = 5.0
"""Seconds a connection attempt to Redis may take."""


class RedisDownError(Exception):
    """
    Redis did not answer: it is away, or a command timed out.
    """


def endpoint_of(spec: ClusterSpec, reactor: Any) -> IStreamClientEndpoint:
    """
    The client endpoint of the cluster's Redis: TCP, TLS (C{rediss}: the
    server's certificate checked against the system's trust roots and the
    host name) or a UNIX socket.
    """
    if spec.scheme == "unix":
        assert spec.path is not None
        return UNIXClientEndpoint(reactor, spec.path, timeout=CONNECT_TIMEOUT)
    assert spec.host is not None
    tcp = HostnameEndpoint(reactor, spec.host, spec.port, timeout=CONNECT_TIMEOUT)
    if spec.scheme == "rediss":
        return wrapClientTLS(optionsForClientTLS(spec.host), tcp)
    return tcp


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """
    The subscriber connection: (re)subscribes to the factory's channel on
    every connection, and passes each message on.
    """

    def connectionMade(self) -> Any:  # noqa: N802 - Twisted's name
        ready = super().connectionMade()
        factory = self.factory

        def subscribe(_: object) -> Any:
            subscribed = self.subscribe(factory.channel)
            # Whatever was published while this connection was down is lost:
            # the owner reads the state kept in Redis again.
            subscribed.addCallback(lambda _: factory.on_subscribed())
            return subscribed

        if isinstance(ready, Deferred):
            ready.addCallback(subscribe)
            ready.addErrback(lambda failure: None)  # the connection's own log says it
            return ready
        return subscribe(None)

    def messageReceived(self, pattern: object, channel: object, message: object) -> None:  # noqa: N802
        deliver = self.factory.deliver
        if deliver is not None:
            deliver(message)


class RedisLink(Service):
    """
    The command and subscriber connections of one node (see the module's
    docstring).

    @ivar up: whether Redis answered the last command.
    @ivar failures: commands that failed, timed out or could not be sent
        (no connection) so far.
    """

    _log = Logger()

    def __init__(
        self,
        spec: ClusterSpec,
        reactor: Any,
        *,
        timeout: float,
        channel: str,
        deliver: Callable[[dict[str, Any]], None],
        subscribed: Callable[[], None] = lambda: None,
    ) -> None:
        """
        @param timeout: seconds a command may take (C{--cluster-timeout}
            for admissions; membership and operations use a longer one).
        @param channel: the cluster's pub/sub channel.
        @param deliver: called with each message on the channel, decoded
            from JSON (a message that is not a JSON object is logged and
            dropped).
        @param subscribed: called each time the subscriber connection has
            (re)subscribed: messages published while it was down are lost.
        """
        self.spec = spec
        self._reactor = reactor
        self.timeout = timeout
        self._channel = channel
        self._deliver = deliver
        self._subscribed = subscribed
        self.up = False
        self.failures = 0
        self._known = False
        self._probing = False
        self._commands: Any = None
        self._factories: list[Any] = []

    @override
    def startService(self) -> None:
        super().startService()
        spec = self.spec
        commands = txredisapi.RedisFactory(
            spec.shown(),
            spec.db,
            1,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            password=spec.password,
            username=spec.username,
            convertNumbers=False,
        )
        commands.maxDelay = 2.0
        subscriber = txredisapi.SubscriberFactory(isLazy=True)
        subscriber.protocol = _Subscriber
        subscriber.password = spec.password
        subscriber.username = spec.username
        subscriber.dbid = spec.db
        subscriber.maxDelay = 2.0
        subscriber.channel = self._channel
        subscriber.deliver = self._message
        subscriber.on_subscribed = self._subscribed
        subscriber.initialDelay = 0.1
        commands.initialDelay = 0.1
        self._factories = [commands, subscriber]
        self._commands = commands.handler
        for factory in self._factories:
            factory.startConnecting(endpoint_of(spec, self._reactor))

    @override
    def stopService(self) -> Any:
        super().stopService()
        factories, self._factories = self._factories, []
        for factory in factories:
            factory.continueTrying = False
            factory.stopTrying()
            for connection in list(getattr(factory, "pool", [])):
                connection.transport.loseConnection()
        return None

    def call(self, *args: object, timeout: float | None = None) -> Deferred[Any]:
        """
        Run one Redis command.

        @param timeout: seconds it may take (default: L{timeout}).
        @return: its reply; or a failure, L{RedisDownError} when Redis did not
            answer in time or is known to be away (then at most one command
            at a time is sent, to find out when it is back), or Redis' own
            error.
        """
        factory = self._factories[0] if self._factories else None
        if factory is None or not factory.pool:
            # No connection: txredisapi would keep the command until one
            # is made, however long Redis is away.  Not sent at all.
            self.failures += 1
            if self._known:
                self._mark(False, "no connection")
            return fail(RedisDownError("no connection to Redis"))
        if self._known and not self.up:
            if self._probing:
                return fail(RedisDownError("Redis is away"))
            self._probing = True
        result: Deferred[Any] = self._commands.execute_command(*args)
        limit = self.timeout if timeout is None else timeout
        result.addTimeout(limit, self._reactor)
        result.addCallbacks(self._answered, self._failed, errbackArgs=(limit,))
        return result

    def _answered(self, reply: object) -> object:
        self._probing = False
        self._mark(True, "")
        return reply

    def _failed(self, failure: Failure, limit: float) -> Failure:
        self._probing = False
        if failure.check(txredisapi.ResponseError):
            # Redis answered, with an error of its own: it is there.
            self._mark(True, "")
            return failure
        self.failures += 1
        if failure.check(TimeoutError, CancelledError):
            why = f"no answer within {limit:g} s"
        else:
            why = failure.getErrorMessage() or repr(failure.value)
        self._mark(False, why)
        return Failure(RedisDownError(why))

    def _mark(self, up: bool, why: str) -> None:
        if self._known and self.up is up:
            return
        first = not self._known
        self._known = True
        self.up = up
        if up:
            self._log.info(
                "cluster: Redis {where} {how}",
                where=self.spec.shown(),
                how="reached" if first else "is back",
            )
        else:
            self._log.warn(
                "cluster: Redis {where} does not answer ({why}); going on with what this "
                "node knows until it is back",
                where=self.spec.shown(),
                why=why,
            )

    def _message(self, message: object) -> None:
        try:
            text = message.decode() if isinstance(message, bytes) else str(message)
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            self._log.warn("cluster: a message that is not a JSON object was dropped")
            return
        self._deliver(decoded)
