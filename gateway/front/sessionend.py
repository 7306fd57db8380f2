"""
A game session's client end once the front door is done with it.

The front door sniffs a connection and starts its game session; from then on
it only passes the client's events to the session and, at the end, takes the
connection out of the registry and runs its close hooks (the cap's, the
address gate's, a worker's).  On the TCP fast path
(L{gateway.session.bareclient.BareClient}) the front door gives those duties
to a L{SessionEnd} when the session starts, and the bare client's protocol
becomes it: a slotted object of four fields instead of the front door and its
dictionary (about 250 bytes), for as long as the session lives, which for a
mostly quiet game session is most of its memory's life
(docs/performance.md).  Nothing changes in what happens: the same session
methods are called, in the same order, as the front door calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.connection import CloseHooks
from gateway.session.bareclient import BareClient
from gateway.session.stream import Stream

if TYPE_CHECKING:
    from gateway.ops.registry import SessionRegistry
    from gateway.session.relay import GameSession

__all__ = ["SessionEnd"]


@implementer(IHalfCloseableProtocol)
class SessionEnd(CloseHooks):
    """
    The protocol of a game session's client connection after its start, on
    a bare client (and on the transport it may become): passes the client's
    events to the session, and at the end takes the session out of the
    registry and runs the connection's close hooks.

    @ivar session: the game session.
    """

    __slots__ = ("_registry", "_registry_id", "session")

    def __init__(
        self,
        session: GameSession,
        registry: SessionRegistry | None,
        registry_id: int | None,
        hooks: CloseHooks,
    ) -> None:
        """
        @param registry: where the session is listed, if anywhere.
        @param registry_id: its number there.
        @param hooks: the front door, whose close hooks move here.
        """
        self.session = session
        self._registry = registry
        self._registry_id = registry_id
        self._close_hooks, hooks._close_hooks = hooks._close_hooks, None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.session.client_data(data)

    def readConnectionLost(self) -> None:  # noqa: N802 - Twisted's name
        self.session.client_eof()

    def writeConnectionLost(self) -> None:  # noqa: N802 - Twisted's name
        """
        Our half-close towards the client completed; nothing to do.
        """

    def replace_transport(self, transport: ITransport) -> None:
        """
        The bare client became C{transport}
        (L{gateway.session.bareclient.BareClient.full}): the session relays
        through it from now on.
        """
        if isinstance(self.session.client, BareClient):
            self.session.client = cast(Stream, transport)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        # As the front door's connectionLost does for a game session.
        self.session.client_lost()
        number, self._registry_id = self._registry_id, None
        if number is not None and self._registry is not None:
            self._registry.remove(number)
        self.run_close_hooks()
