"""
A game session in the waiting room: L{SessionWaiting}, the part of
L{gateway.session.relay.GameSession} that enters its pool's
L{gateway.pool.room.WaitingRoom} when every backend that could take it is
full, hears from the room (admitted to a backend, told its place, timed
out, dismissed) and leaves it.

A mixin over the session's slots, like L{gateway.session.ending}: the
waiting steps read and change the session's phase, its hold and its
dialer, and a session is the one object per player the gateway keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.front.limits import Refusal
from gateway.pool.room import Standing, Ticket, WaitingRoom
from gateway.session.ending import SessionEnding
from gateway.session.lifecycle import CloseReason, Phase

if TYPE_CHECKING:
    from gateway.interfaces import IBackendChooser
    from gateway.pool.backends import Backend
    from gateway.session.dialer import Dialer

__all__ = ["WAIT_HOLD_LIMIT", "SessionWaiting"]

WAIT_HOLD_LIMIT = 8 * 1024
"""Client bytes held while waiting in the waiting room before its reading is
paused: a thousand waiting players hold at most 8 MiB."""


class SessionWaiting(SessionEnding):
    """
    Waiting for a seat (see the module's docstring; the attributes are
    L{GameSession}'s).
    """

    # The slots of what the waiting steps set (the session's others are its own).
    __slots__ = ("_dialer", "_room", "_standing", "_ticket")

    _dialer: Dialer | None
    _room: WaitingRoom | None
    _standing: Standing
    _ticket: Ticket | None

    if TYPE_CHECKING:
        key: bytes | None
        _chooser: IBackendChooser
        _held_size: int

        def _new_dialer(self) -> Dialer: ...
        def _bound_hold(self) -> None: ...

    @property
    def ticket(self) -> Ticket | None:
        """
        Its place in the waiting room while it waits.
        """
        return self._ticket if self._phase is Phase.WAITING else None

    def admit(self, backend: Backend) -> None:
        """
        The waiting room has a slot on C{backend} for this session: connect.
        """
        self._enter(Phase.CONNECTING)
        self._new_dialer().dial(backend)

    def tell(self, text: str) -> None:
        """
        Tell the waiting player their place: a line, or a WebSocket text message.
        """
        send_text = getattr(self.client, "send_text", None)
        if send_text is not None:
            send_text(text)
        else:
            self.client.write(text.encode() + b"\r\n")

    def expire(self) -> None:
        """
        The wait timed out: refuse the session.
        """
        timeout = self._room.settings.timeout if self._room is not None else 0.0
        self._chooser.nothing_available()
        self._refuse(
            Refusal.QUEUE_TIMEOUT,
            CloseReason.QUEUE_TIMEOUT,
            f"waited {timeout:g} s in the waiting room",
        )

    def _wait(self, detail: str) -> bool:
        """
        No backend can take the session now: wait in the room if it holds
        sessions (or refuse it, C{queue-full}, if the room is full).

        @return: whether the session waits or was refused here.
        """
        room = self._room
        if room is None or not room.can_hold(self._standing):
            return False
        ticket = room.enter(self, self._standing, self._ticket)
        if ticket is None:
            self._chooser.nothing_available()
            self._refuse(
                Refusal.QUEUE_FULL,
                CloseReason.QUEUE_FULL,
                f"the waiting room is full ({room.settings.size} waiting); {detail}",
            )
            return True
        self._ticket = ticket
        self._dialer = None
        self._enter(Phase.WAITING)
        self._bound_hold()
        return True

    def dismiss(self, detail: str) -> None:
        """
        No seat can come (the pool left the configuration): refuse the
        session, C{no-backend}, with the busy line.
        """
        self._chooser.nothing_available()
        self._refuse(Refusal.NO_BACKEND, CloseReason.NO_BACKEND, detail)

    def _leave_room(self, *, left: bool = True) -> None:
        """
        Leave the waiting room (the client left, or the gateway stops), and
        give a pending attempt's slot to the next waiter.

        @param left: whether the player left (rather than being turned away).
        """
        room = self._room
        if self._phase is Phase.WAITING and self._ticket is not None and room is not None:
            room.leave(self._ticket, left=left)
        if self._dialer is not None:
            self._dialer.abandon()
            if room is not None:
                room.kick()
