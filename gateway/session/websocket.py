"""
The browser's end of a WebSocket session: framing on one side, a byte stream
on the other.

Once the front door has answered a WebSocket upgrade (L{gateway.front.websocket}),
the connection is a game session like a TCP one (L{gateway.session.relay.GameSession}),
whose client happens to speak WebSocket.  Two objects stand between the
session and the browser's TCP transport, both driving one wsproto
C{Connection} (the RFC 6455 engine Twisted's own C{twisted.web.websocket} is
built on):

  - L{MessageStream} is the client transport the session writes to: each
    write becomes one message (binary, or text under the C{text}
    subprotocol); closing sends a close frame first; pausing, resuming and
    the producer registration go to the TCP transport, so a browser that
    reads slowly holds back the backend, and a backend that reads slowly
    holds back the browser (flow control both ways, as for TCP);
  - L{MessageReader} gets the browser's bytes (whole data messages at the
    front of a read through the fast path of L{gateway.session.wsframes},
    everything else through wsproto): it hands the payload of data
    messages to the session as it arrives (a message is never gathered
    whole, so memory stays bounded whatever its size), answers pings, sends
    its own pings to keep the way open and to find browsers that are gone,
    and ends the session on a close frame, a protocol error or a message
    over the size limit.

Message boundaries do not survive: the backend sees one TCP byte stream, as
websockify gives it.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import Logger
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from gateway.session.lifecycle import CloseReason
from gateway.session.stream import write_now
from gateway.session.wsframes import at_message_boundary, whole_message

if TYPE_CHECKING:
    from gateway.session.relay import GameSession

__all__ = [
    "data_frame",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_LATER",
    "MessageReader",
    "MessageStream",
]

CLOSE_NORMAL = 1000
"""The close code of a session that ended the ordinary way (RFC 6455 7.4.1)."""

CLOSE_GOING_AWAY = 1001
"""The close code when the gateway ends the session (shutdown, no answer to pings)."""

CLOSE_TOO_BIG = 1009
"""The close code for a message over C{--websocket-max-message}."""

CLOSE_TRY_LATER = 1013
"""The close code for a session no backend could take (RFC 6455's registry: Try Again Later)."""

_OPEN_STATES = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)

_TEXT, _BINARY = 0x81, 0x82
"""The first byte of a whole (FIN) text or binary frame."""


def data_frame(first: int, payload: bytes) -> bytes:
    """
    One unmasked frame holding a whole message, as a server sends it
    (RFC 6455 5.2): what wsproto's C{send} makes of a whole message, without
    its per-message machinery (measured: 5.4 us a message against 0.2; the
    browser's frames are still parsed by wsproto, and closes go through it).
    """
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


class MessageStream:
    """
    What a game session writes to when its client speaks WebSocket: the
    relay's L{gateway.session.stream.Stream}, on top of the browser's TCP
    transport.

    @ivar transport: the browser's TCP (or TLS) transport.
    @ivar close_code: the code of the close frame L{loseConnection} sends.
    @ivar close_text: the reason text of that close frame.
    @ivar dropped: bytes from the backend that arrived after the close frame
        was sent (a WebSocket cannot carry them any more).
    @ivar reading_paused: whether the session paused reading the browser
        (flow control, or a full hold while it waits for a seat).
    """

    def __init__(self, transport: Any, connection: Connection, *, text: bool = False) -> None:
        """
        @param transport: the browser's transport.
        @param connection: the wsproto connection, open.
        @param text: send text messages (the C{text} subprotocol): the bytes
            are decoded as UTF-8, a sequence cut between two writes is
            completed by the next one, and bytes that are not UTF-8 become
            U+FFFD (binary protocols should use the C{binary} subprotocol).
        """
        self.transport = transport
        self._ws = connection
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if text else None
        self.close_code = CLOSE_NORMAL
        self.close_text = ""
        self.dropped = 0
        self.reading_paused = False

    @property
    def open(self) -> bool:
        """
        Whether messages can still be sent (no close frame sent yet).
        """
        return self._ws.state is ConnectionState.OPEN or (
            self._ws.state is ConnectionState.REMOTE_CLOSING
        )

    def send_event(self, event: Any) -> None:
        """
        Send one wsproto event (a pong, a ping), if the connection still takes it.
        """
        if self._ws.state in _OPEN_STATES:
            try:
                self.transport.write(self._ws.send(event))
            except LocalProtocolError:
                pass

    def write(self, data: bytes) -> None:
        """
        Send C{data} as one message.
        """
        if not data:
            return
        if self._ws.state is not ConnectionState.OPEN:
            self.dropped += len(data)
            return
        if self._decoder is not None:
            text = self._decoder.decode(data)
            if text:
                write_now(self.transport, data_frame(_TEXT, text.encode("utf-8")))
            return
        write_now(self.transport, data_frame(_BINARY, data))

    def send_text(self, text: str) -> None:
        """
        Send C{text} as one text message, whatever the subprotocol (the
        waiting room telling a browser its place, before the game's bytes).
        """
        if self._ws.state is ConnectionState.OPEN:
            write_now(self.transport, data_frame(_TEXT, text.encode("utf-8")))

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802 - ITransport
        self.write(b"".join(data))

    def send_close(self, code: int | None = None, text: str | None = None) -> None:
        """
        Send the close frame (once): C{code} and C{text}, else L{close_code}
        and L{close_text}.  The browser's own close frame is answered with
        its code.
        """
        if self._ws.state not in _OPEN_STATES:
            return
        if self._decoder is not None and self._ws.state is ConnectionState.OPEN:
            rest = self._decoder.decode(b"", final=True)
            if rest:
                self.transport.write(self._ws.send(TextMessage(data=rest)))
        event = CloseConnection(
            code=self.close_code if code is None else code,
            reason=self.close_text if text is None else text,
        )
        self.transport.write(self._ws.send(event))

    def refuse(self, line: str | None) -> None:
        """
        No backend could take the session: close with code 1013 (try again
        later), the busy line, if any, as the close frame's reason (cut to
        the 123 bytes a close frame holds).
        """
        text = (line or "").encode("utf-8")[:123].decode("utf-8", "ignore")
        self.send_close(CLOSE_TRY_LATER, text)
        self.transport.loseConnection()

    def loseConnection(self) -> None:  # noqa: N802 - ITransport
        """
        Send the close frame, then close the TCP connection once it is flushed.
        """
        self.send_close()
        self.transport.loseConnection()

    def abortConnection(self) -> None:  # noqa: N802 - ITCPTransport
        self.transport.abortConnection()

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.reading_paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.reading_paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        self.transport.stopProducing()

    def registerProducer(self, producer: object, streaming: bool) -> None:  # noqa: N802
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802 - IConsumer
        self.transport.unregisterProducer()

    def getPeer(self) -> IAddress:  # noqa: N802 - ITransport
        peer: IAddress = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:  # noqa: N802 - ITransport
        host: IAddress = self.transport.getHost()
        return host


class MessageReader:
    """
    Reads the browser's frames and gives the session what they carry.

    Until L{attach} is called, payload goes to the sink given at creation
    (the front door, while it waits for the first message to find the
    session key).

    @ivar session: the game session, once attached.
    @ivar finished: whether the browser sent a close frame (or the
        connection failed the protocol).
    """

    _log = Logger()

    def __init__(
        self,
        stream: MessageStream,
        connection: Connection,
        clock: IReactorTime,
        *,
        max_message: int,
        ping_interval: float,
        sink: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        """
        @param max_message: the largest message accepted, in bytes; a larger
            one ends the session with close code 1009.
        @param ping_interval: seconds between pings; a browser that has not
            answered the last one when the next is due is gone, and its
            session is closed.  0 sends none.
        @param sink: where payload goes before a session is attached, with
            whether it ended a message.
        """
        self._stream = stream
        self._ws = connection
        self._clock = clock
        self._max_message = max_message
        self._ping_interval = ping_interval
        self._sink = sink
        self._message_size = 0
        self._awaiting_pong = False
        self._ping_call: IDelayedCall | None = None
        self._failed: CloseReason | None = None
        self.session: GameSession | None = None
        self.finished = False
        if ping_interval > 0:
            self._ping_call = clock.callLater(ping_interval, self._ping)

    def attach(self, session: GameSession) -> None:
        """
        From now on, payload goes to C{session}.
        """
        self.session = session
        self._sink = None
        if self._failed is not None:
            session.close(self._failed)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - IProtocol's name
        """
        Bytes from the browser.
        """
        if self.finished:
            return  # after a close frame (or a protocol error), nothing counts
        if at_message_boundary(self._ws):
            data = self._whole_messages(data)
            if not data or self.finished:
                return
        self._ws.receive_data(data)
        for event in self._ws.events():
            if self.finished:
                return
            if isinstance(event, Message):
                self._message(event)
            elif isinstance(event, Ping):
                self._stream.send_event(event.response())
            elif isinstance(event, Pong):
                self._awaiting_pong = False
            elif isinstance(event, CloseConnection):
                self._close_frame(event)

    def _whole_messages(self, data: bytes) -> bytes:
        """
        Deliver the whole data messages at the front of C{data} without
        wsproto (L{gateway.session.wsframes}); the rest, from the first frame
        the fast path does not take, is for wsproto.
        """
        offset = 0
        while not self.finished and self._ws.state is ConnectionState.OPEN:
            found = whole_message(data, offset, self._max_message)
            if found is None:
                break
            chunk, offset = found
            # As _message does for a whole message under the size limit.
            if self.session is not None:
                if chunk:
                    self.session.client_data(chunk)
            elif self._sink is not None:
                self._sink(chunk, True)
        return data[offset:] if offset else data

    def _message(self, event: Message[Any]) -> None:
        payload = event.data
        chunk = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        self._message_size += len(chunk)
        if self._message_size > self._max_message:
            self.fail(
                CLOSE_TOO_BIG,
                f"message over {self._max_message} bytes",
                CloseReason.MESSAGE_TOO_BIG,
            )
            return
        if event.message_finished:
            self._message_size = 0
        if self.session is not None:
            if chunk:
                self.session.client_data(chunk)
        elif self._sink is not None:
            self._sink(chunk, event.message_finished)

    def _close_frame(self, event: CloseConnection) -> None:
        self.finished = True
        if self._ws.state is ConnectionState.OPEN:
            # wsproto found the browser's frames broken (unmasked, a
            # fragmented control frame, a bad close code, text that is not
            # UTF-8...): it says so with the close event it would send.
            self.finished = False
            self.fail(event.code, event.reason or "", CloseReason.PROTOCOL_ERROR)
            return
        # The browser closed: answer with its code, and end the session like
        # a TCP client's end of stream (the backend gets its last bytes and
        # an end of stream).
        self._stop_pinging()
        self._stream.send_close(event.code if event.code != 1005 else CLOSE_NORMAL, "")
        if self.session is not None:
            self.session.client_eof()
        else:
            self._stream.transport.loseConnection()

    def fail(self, code: int, text: str, reason: CloseReason) -> None:
        """
        End the session with close code C{code}: the close frame goes out
        before the connection is closed.
        """
        if self.finished:
            return
        self.finished = True
        self._stop_pinging()
        self._stream.close_code = code
        self._stream.close_text = text
        if self.session is not None:
            self.session.close(reason)
        else:
            self._failed = reason
            self._stream.loseConnection()

    def _ping(self) -> None:
        self._ping_call = None
        if self._stream.reading_paused:
            # Its pong cannot be read while the session does not read it (a
            # slow backend, or a full hold in the waiting room): not the
            # browser's fault.  Ask again once it is read.
            self._awaiting_pong = False
            self._ping_call = self._clock.callLater(self._ping_interval, self._ping)
            return
        if self._awaiting_pong:
            self._log.info(
                "websocket session from {peer}: no answer to a ping in {interval:g} s; closing it",
                peer=self.session.peer if self.session is not None else "-",
                interval=self._ping_interval,
            )
            self.fail(CLOSE_GOING_AWAY, "no answer to ping", CloseReason.PING_TIMEOUT)
            return
        self._awaiting_pong = True
        self._stream.send_event(Ping(payload=b"gateway"))
        self._ping_call = self._clock.callLater(self._ping_interval, self._ping)

    def _stop_pinging(self) -> None:
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None

    def connection_lost(self) -> None:
        """
        The browser's connection is gone.
        """
        self._stop_pinging()
        self.finished = True
