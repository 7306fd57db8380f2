"""
Every core in use (C{--workers N}): the acceptor's end of one worker's
control channel.

The channel is a stream of L{Framed} messages (see L{gateway.process.wire}).
A L{ControlChannel} sends what the supervisor
(L{gateway.process.supervisor.WorkerProcess}) tells the worker, and turns
each message the worker sends into a call on its supervisor, through one
table: its readiness, its drain, the connections that ended, a backend it
marked down, a status reply; its log events are written here, with the
acceptor's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as Structural

from twisted.internet.error import ConnectionDone
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.ops.access import ACCESS_ONLY
from gateway.pool.backends import BackendState
from gateway.process.wire import (
    BackendStateChange,
    Ended,
    Framed,
    LogEvent,
    Message,
    Op,
    StatusReply,
)

__all__ = ["ControlChannel", "Controlled"]


class Controlled(Structural):
    """
    What a control channel tells its worker's supervisor (a
    L{gateway.process.supervisor.WorkerProcess}).
    """

    @property
    def index(self) -> int:
        """
        The worker's number, from 1.
        """

    def control_made(self, channel: ControlChannel) -> None:
        """
        The channel is up.
        """

    def control_lost(self, channel: ControlChannel) -> None:
        """
        The channel closed.
        """

    def control_too_long(self, length: int) -> None:
        """
        A message too long to be read arrived: the channel is dropped.
        """

    def ready(self) -> None:
        """
        The worker is configured and takes connections.
        """

    def drains_on_its_own(self) -> None:
        """
        The worker drains on its own.
        """

    def ended(self, numbers: tuple[int, ...]) -> None:
        """
        Connections ended in the worker.
        """

    def backend_changed(self, name: str, state: BackendState, reason: str) -> None:
        """
        The worker changed a backend's state.
        """

    def status_received(self, reply: StatusReply) -> None:
        """
        The worker answered a status request.
        """


def _reemit(message: LogEvent, index: int) -> None:
    """
    Write a worker's log event with the acceptor's (to the access log only,
    for an access event kept out of the main log).
    """
    event = dict(message.fields)
    text = message.text
    event["log_level"] = LogLevel.levelWithName(message.level)
    event["log_format"] = "{log_text}"
    event["log_text"] = text if message.traceback is None else f"{text}\n{message.traceback}"
    event["log_system"] = f"worker {index}"
    event["log_worker"] = index
    (ACCESS_ONLY if message.access_only else globalLogPublisher)(event)


class ControlChannel(Framed):
    """
    The acceptor's end of a worker's control channel.

    @ivar worker: the worker's supervisor.
    """

    def __init__(self, worker: Controlled) -> None:
        super().__init__()
        self.worker = worker

    @override
    def connectionMade(self) -> None:
        self.worker.control_made(self)

    @override
    def message_received(self, message: Message) -> None:
        on_message = _ON_MESSAGE.get(message.op)
        if on_message is not None:
            on_message(self, message)

    def _on_ready(self, message: Message) -> None:
        self.worker.ready()

    def _on_draining(self, message: Message) -> None:
        self.worker.drains_on_its_own()

    def _on_ended(self, message: Ended) -> None:
        self.worker.ended(message.numbers)

    def _on_log(self, message: LogEvent) -> None:
        _reemit(message, self.worker.index)

    def _on_backend_state(self, message: BackendStateChange) -> None:
        self.worker.backend_changed(message.backend, message.state, message.reason)

    def _on_status(self, message: StatusReply) -> None:
        self.worker.status_received(message)

    @override
    def too_long(self, length: int) -> None:
        self.worker.control_too_long(length)
        super().too_long(length)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.worker.control_lost(self)


_ON_MESSAGE: dict[Op, Callable[[ControlChannel, Any], None]] = {
    Op.READY: ControlChannel._on_ready,
    Op.DRAINING: ControlChannel._on_draining,
    Op.ENDED: ControlChannel._on_ended,
    Op.LOG_EVENT: ControlChannel._on_log,
    Op.BACKEND_STATE: ControlChannel._on_backend_state,
    Op.STATUS_REPLY: ControlChannel._on_status,
}
"""What the acceptor does with each message a worker sends (a message of
another kind is never sent by a worker, and is ignored)."""
