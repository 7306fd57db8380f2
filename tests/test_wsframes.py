"""
Tests for L{gateway.session.wsframes}, the receive fast path of the
WebSocket bridge, and for L{MessageReader} with and without it.

The main test is a property: for any sequence of the browser's frames (whole
and fragmented data messages with random masks, pings, pongs, closes, and
frames wsproto must refuse), cut anywhere into reads, the reader delivers
exactly what it delivers with the fast path turned off (every frame through
wsproto): the same payload chunks, the same frames back to the browser
(pongs, close codes and reasons), the same end of the session.  Frames are
written by hand here, so that broken ones can be.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import Event
from wsproto.frame_protocol import XorMaskerSimple

import gateway.session.websocket
from gateway.session.websocket import MessageReader, MessageStream
from gateway.session.wsframes import at_message_boundary, unmask, whole_message
from tests.test_relay import FakeTransport
from tests.test_websocket_unit import Bridge, open_pair

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes,
    *,
    key: bytes | None = b"\x12\x34\x56\x78",
    fin: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """
    One frame on the wire, as a browser would send it (masked with C{key}),
    or broken as asked.

    @param key: the masking key; C{None} sends the frame unmasked.
    @param rsv: the RSV bits (0 to 7).
    @param length: the length field's form: 7, 16 or 64 bits; the fewest
        that hold the size if C{None}.
    """
    size = len(payload)
    if length is None:
        length = 7 if size < 126 else 16 if size < 65536 else 64
    mask = 0x80 if key is not None else 0
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    if length == 7:
        head += bytes([mask | size])
    elif length == 16:
        head += bytes([mask | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask | 127]) + struct.pack("!Q", size)
    if key is None:
        return head + payload
    return head + key + bytes(XorMaskerSimple(key).process(bytearray(payload)))


keys = st.binary(min_size=4, max_size=4)
small = st.binary(max_size=40)
# Sizes at and just over the limits the tests use, sizes that take a 16-bit
# length on both sides of wsframes._SMALL, and a few that take a 64-bit one;
# made by repetition, which is cheap to draw.
larger = st.builds(
    lambda size, byte: (bytes([byte, byte ^ 0x5A]) * size)[:size],
    st.sampled_from([16, 17, 100, 101, 126, 300, 767, 768, 1000, 1001, 65536, 70001]),
    st.integers(0, 255),
)
texts = st.text(max_size=20).map(lambda text: text.encode("utf-8"))
# A payload that is itself a valid frame: read from the wrong place (inside
# a frame wsproto has begun), it would pass for a whole message.
nested = st.builds(lambda data, key: frame(BINARY, data, key=key), small, keys)


@st.composite
def whole_messages(draw: st.DrawFn) -> list[bytes]:
    """
    A whole data message in one frame: the frames the fast path is for.
    """
    kind = draw(st.sampled_from(["text", "small", "larger", "nested"]))
    if kind == "text":
        return [frame(TEXT, draw(texts), key=draw(keys))]
    if kind == "nested":
        # Masked with the zero key, the payload is on the wire as is.
        return [frame(BINARY, draw(nested), key=bytes(4))]
    return [frame(BINARY, draw(small if kind == "small" else larger), key=draw(keys))]


@st.composite
def fragmented(draw: st.DrawFn) -> list[bytes]:
    """
    A message in fragments (text cut anywhere, even inside a character),
    with pings between them.
    """
    text = draw(st.booleans())
    whole = draw(texts if text else small)
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), min_size=1, max_size=3)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    frames = []
    for index, piece in enumerate(pieces):
        opcode = (TEXT if text else BINARY) if index == 0 else CONTINUATION
        frames.append(frame(opcode, piece, key=draw(keys), fin=index == len(pieces) - 1))
        if draw(st.booleans()):
            frames.append(frame(PING, draw(small), key=draw(keys)))
    return frames


@st.composite
def pings(draw: st.DrawFn) -> list[bytes]:
    """
    A ping or a pong.
    """
    return [frame(draw(st.sampled_from([PING, PONG])), draw(small), key=draw(keys))]


@st.composite
def unfinished(draw: st.DrawFn) -> list[bytes]:
    """
    A message begun and never finished: the data frame that follows is a
    protocol error.
    """
    fragments = draw(fragmented())
    return [part for part in fragments if part[0] & 0x80 == 0]


@st.composite
def closes(draw: st.DrawFn) -> list[bytes]:
    """
    A close frame, with or without a code and reason.
    """
    body = b""
    if draw(st.booleans()):
        code = draw(st.sampled_from([1000, 1001, 1008, 3000, 4999]))
        body = struct.pack("!H", code) + draw(texts)
    return [frame(CLOSE, body, key=draw(keys))]


@st.composite
def bad_data(draw: st.DrawFn) -> list[bytes]:
    """
    A data frame the fast path must leave to wsproto, which refuses it (or,
    over the limit, closes with 1009): it looks like a message but for one
    thing.
    """
    key = draw(keys)
    data = draw(small)
    choices: list[bytes] = [
        frame(BINARY, data, key=key, rsv=draw(st.integers(1, 7))),
        frame(BINARY, data, key=None),
        frame(TEXT, data, key=None),
        frame(TEXT, draw(texts) + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))),
        frame(BINARY, data, key=key, length=draw(st.sampled_from([16, 64]))),
        frame(BINARY, b"x" * 300, key=key, length=64),
        frame(BINARY, b"o" * 2000, key=key),
    ]
    return [draw(st.sampled_from(choices))]


@st.composite
def bad_other(draw: st.DrawFn) -> list[bytes]:
    """
    Another frame wsproto refuses: an unknown opcode, a continuation of
    nothing, a control frame fragmented or too long, a bad close frame.
    """
    key = draw(keys)
    data = draw(small)
    choices: list[bytes] = [
        frame(draw(st.sampled_from([3, 4, 7, 0xB, 0xF])), data, key=key),
        frame(CONTINUATION, data, key=key),
        frame(PING, data, key=key, fin=False),
        frame(PING, b"p" * 126, key=key),
        frame(CLOSE, b"\x03", key=key),
        frame(
            CLOSE, struct.pack("!H", draw(st.sampled_from([999, 1004, 1005, 2999, 5000]))), key=key
        ),
    ]
    return [draw(st.sampled_from(choices))]


good = st.sampled_from([whole_messages()] * 6 + [fragmented(), pings()]).flatmap(lambda s: s)
"""Traffic that keeps the session: mostly whole messages, as browsers send."""


@st.composite
def wire_items(draw: st.DrawFn) -> list[list[bytes]]:
    """
    What a browser sends, frame by frame (grouped as drawn): good traffic,
    then often an end (a close frame, or a frame wsproto refuses), and more
    traffic after it.
    """
    items = draw(st.lists(good, max_size=8))
    if draw(st.integers(0, 2)) > 0:
        ends = [closes(), bad_data(), bad_data(), bad_data(), bad_other(), unfinished()]
        items.append(draw(st.sampled_from(ends).flatmap(lambda s: s)))
        items += draw(st.lists(good, max_size=3))
    return items


@contextmanager
def wsproto_only() -> Iterator[None]:
    """
    Turn the fast path off: the reader sees no message boundary, so every
    byte goes through wsproto, as before the fast path existed.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway.session.websocket, "at_message_boundary", lambda connection: False)
        yield


def header_size(part: bytes) -> int:
    """
    The length of the header (with the masking key) of the frame C{part}.
    """
    size = part[1] & 0x7F
    return 2 + (2 if size == 126 else 8 if size == 127 else 0) + (4 if part[1] & 0x80 else 0)


def reads(wire: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{wire} cut at C{cuts} into consecutive non-empty reads.
    """
    points = sorted({0, *cuts, len(wire)})
    return [wire[a:b] for a, b in zip(points, points[1:], strict=False) if wire[a:b]]


@dataclass(frozen=True)
class Outcome:
    """
    Everything a browser's bytes led to, as seen from outside the reader.
    """

    delivered: object
    """The payload the session (or the sink) got: bytes, or a list of calls."""
    answered: list[Event]
    """What the gateway sent back to the browser, as the browser parses it."""
    ended: object
    """How the session ended: reader, session and connection states."""


def through_session(
    pieces: list[bytes], max_message: int, early: int, backend_closes: bool
) -> Outcome:
    """
    Feed C{pieces} to a reader attached to a real session, whose backend
    connects after the first C{early} reads (and then, if
    C{backend_closes}, ends its side: the gateway's close frame goes out
    while the browser's frames still come).
    """
    bridge = Bridge(max_message=max_message)
    for piece in pieces[:early]:
        bridge.reader.dataReceived(piece)
    # The attempt is cancelled if the session ended while it was pending.
    backend = None if bridge.reactor.connectors[-1].stoppedConnecting else bridge.accept()
    if backend is not None and backend_closes:
        backend.protocol.readConnectionLost()  # type: ignore[union-attr]
    for piece in pieces[early:]:
        bridge.reader.dataReceived(piece)
    return Outcome(
        (backend.value() if backend else None, bridge.session.bytes_in),
        bridge.browser.read(),
        (
            bridge.reader.finished,
            bridge.session.close_reason,
            bridge.transport.disconnecting,
            backend and (backend.disconnecting, backend.write_closed),
        ),
    )


def through_sink(pieces: list[bytes], max_message: int) -> Outcome:
    """
    Feed C{pieces} to a reader with no session yet, whose payload goes to a
    sink (as while the front door waits for a session key): each call is
    recorded, so chunk boundaries and message ends count too.
    """
    gateway_ws, browser_ws = open_pair()
    transport = FakeTransport()
    calls: list[tuple[bytes, bool]] = []
    reader = MessageReader(
        MessageStream(transport, gateway_ws),
        gateway_ws,
        MemoryReactorClock(),
        max_message=max_message,
        ping_interval=0,
        sink=lambda chunk, finished: calls.append((chunk, finished)),
    )
    for piece in pieces:
        reader.dataReceived(piece)
    browser_ws.receive_data(transport.value())
    return Outcome(calls, list(browser_ws.events()), (reader.finished, transport.disconnecting))


@settings(max_examples=500, deadline=None)
@given(
    wire_items(),
    st.data(),
    st.sampled_from([16, 100, 1000, 1 << 20, 1 << 20]),
    st.integers(min_value=0, max_value=20),
    st.sampled_from(["sink", "session", "backend closes"]),
)
def test_fast_path_delivers_what_wsproto_alone_does(
    items: list[list[bytes]], data: st.DataObject, max_message: int, early: int, how: str
) -> None:
    """
    Whatever the browser sends, cut anywhere into reads, the reader with the
    fast path gives the session (or the sink) the same payload, sends the
    browser the same pongs and close frames (codes and reasons), and ends
    the session the same way as with every byte going through wsproto.
    """
    frames = [part for item in items for part in item]
    wire = b"".join(frames)
    # Often one frame a read (as browsers send them, and as the fast path
    # takes them best), or each frame's header in a read of its own; plus
    # cuts anywhere and cuts at frame starts and in and just after headers
    # (2, 6, 8 and 14 bytes long when masked), where a parser that lost its
    # place would go wrong.
    starts = [sum(map(len, frames[:index])) for index in range(len(frames) + 1)]
    near = st.builds(
        lambda start, delta: min(start + delta, len(wire)),
        st.sampled_from(starts),
        st.one_of(st.sampled_from([0, 2, 6, 8, 14]), st.integers(0, 15)),
    )
    mode = data.draw(st.sampled_from(["few", "frames", "headers"]), label="cuts")
    cuts = [] if mode == "few" else starts
    if mode == "headers":
        cuts = cuts + [
            start + header_size(part) for start, part in zip(starts[:-1], frames, strict=True)
        ]
    cuts = cuts + data.draw(st.lists(st.one_of(near, st.integers(0, len(wire))), max_size=8))
    assert_same_outcome(reads(wire, cuts), max_message, early, how)


def assert_same_outcome(pieces: list[bytes], max_message: int, early: int, how: str) -> None:
    """
    Feed C{pieces} to a reader with the fast path and to one without (see
    L{through_session} and L{through_sink} for C{early} and C{how}), and
    check that everything they did is the same.
    """
    feed: Callable[[], Outcome]
    if how == "sink":
        feed = lambda: through_sink(pieces, max_message)  # noqa: E731
    else:
        feed = lambda: through_session(  # noqa: E731
            pieces, max_message, early, how == "backend closes"
        )
    fast = feed()
    with wsproto_only():
        reference = feed()
    assert fast == reference


@pytest.mark.parametrize("how", ["sink", "session"])
@pytest.mark.parametrize("cut", ["one read", "a read per frame", "headers apart"])
@pytest.mark.parametrize(
    "middle",
    [
        pytest.param(frame(BINARY, b"b" * 16), id="binary-at-limit"),
        pytest.param(frame(TEXT, "\u20ac\u20ac\u20ac\u20ac\u20ac!".encode()), id="text-at-limit"),
        pytest.param(frame(BINARY, b"b" * 17), id="binary-over-limit"),
        pytest.param(frame(TEXT, ("\u20ac" * 6).encode()), id="text-over-limit"),
        *[pytest.param(frame(BINARY, b"rsv", rsv=rsv), id=f"rsv{rsv}") for rsv in (1, 2, 4)],
        pytest.param(frame(BINARY, b"bare", key=None), id="unmasked-binary"),
        pytest.param(frame(TEXT, b"bare", key=None), id="unmasked-text"),
        pytest.param(frame(TEXT, b"ab\xff"), id="text-bad-byte"),
        pytest.param(frame(TEXT, b"ab\xe2\x82"), id="text-cut-character"),
        pytest.param(frame(TEXT, b"\xed\xa0\x80"), id="text-surrogate"),
        pytest.param(frame(BINARY, b"long", length=16), id="length-16-not-minimal"),
        pytest.param(frame(BINARY, b"long", length=64), id="length-64-not-minimal"),
        pytest.param(frame(BINARY, b"unfinished", fin=False), id="unfinished-binary"),
        pytest.param(frame(TEXT, b"unfinished", fin=False), id="unfinished-text"),
        pytest.param(frame(CONTINUATION, b"nothing"), id="continuation"),
        pytest.param(frame(0x3, b"op"), id="opcode-3"),
        pytest.param(frame(PING, b"ping"), id="ping"),
        pytest.param(frame(CLOSE, b"\x03\xe8bye"), id="close"),
    ],
)
def test_each_kind_of_frame_between_messages(middle: bytes, cut: str, how: str) -> None:
    """
    One frame of each kind between two whole messages, under a 16-byte
    limit, in one read, in a read of its own, or with each header apart
    from its payload: the reader with the fast path does just what it does
    without.  (The property above meets each of these only now and then.)
    """
    frames = [frame(BINARY, b"before"), middle, frame(TEXT, b"after")]
    if cut == "one read":
        pieces = [b"".join(frames)]
    elif cut == "a read per frame":
        pieces = frames
    else:
        pieces = [piece for part in frames for piece in reads(part, [header_size(part)])]
    assert_same_outcome(pieces, 16, 0, how)


# The pieces


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 64, 125, 126, 767, 768, 769, 4096, 65536])
def test_unmask_matches_wsproto(size: int) -> None:
    """
    L{unmask} gives what wsproto's own masker gives, for sizes on both sides
    of the switch from one integer XOR to per-byte tables, and whatever the
    size modulo 4.
    """
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    key = b"\xa5\x01\xfe\x80"
    assert unmask(data, key) == bytes(XorMaskerSimple(key).process(bytearray(data)))


@pytest.mark.parametrize(
    ("opcode", "payload"),
    [(BINARY, b""), (BINARY, b"\x00" * 64), (TEXT, "caf\u00e9".encode()), (BINARY, b"z" * 300)],
)
def test_whole_message_reads_a_masked_data_frame(opcode: int, payload: bytes) -> None:
    """
    A whole, masked data frame at any offset is read to its unmasked payload
    and the offset just past it; no prefix of it is read at all.
    """
    wire = b"junk" + frame(opcode, payload) + b"\x89"
    assert whole_message(wire, 4, 1 << 20) == (payload, len(wire) - 1)
    for end in range(4, len(wire) - 1):
        assert whole_message(wire[:end], 4, 1 << 20) is None


def test_whole_message_reads_a_64_bit_length() -> None:
    """
    A frame whose length takes 64 bits is read too, up to the limit.
    """
    payload = b"\x01\x02" * 40000
    wire = frame(BINARY, payload)
    assert whole_message(wire, 0, len(payload)) == (payload, len(wire))
    assert whole_message(wire, 0, len(payload) - 1) is None


@pytest.mark.parametrize(
    "wire",
    [
        frame(BINARY, b"abc", fin=False),
        frame(BINARY, b"abc", rsv=4),
        frame(BINARY, b"abc", rsv=1),
        frame(BINARY, b"abc", key=None),
        frame(TEXT, b"ab\xff"),
        frame(TEXT, "\u20ac".encode()[:2]),
        frame(CONTINUATION, b"abc"),
        frame(PING, b"abc"),
        frame(PONG, b"abc"),
        frame(CLOSE, b"\x03\xe8"),
        frame(0x3, b"abc"),
        frame(BINARY, b"abc", length=16),
        frame(BINARY, b"a" * 300, length=64),
        frame(BINARY, b"a" * 11),
    ],
)
def test_whole_message_leaves_other_frames_to_wsproto(wire: bytes) -> None:
    """
    Fragments, RSV bits, unmasked frames, text that is not UTF-8, control
    frames, unknown opcodes, lengths not in the fewest bytes and messages
    over the limit are not read: wsproto judges them.
    """
    assert whole_message(wire, 0, 10) is None


def boundary_after(data: bytes) -> bool:
    """
    Whether a fresh server connection is at a message boundary once it has
    received and parsed C{data}.
    """
    connection = Connection(ConnectionType.SERVER)
    connection.receive_data(data)
    list(connection.events())
    return at_message_boundary(connection)


def test_message_boundary_follows_wsproto_state() -> None:
    """
    wsproto is at a message boundary when fresh and after whole messages,
    pings and pongs; not with part of a header or a payload buffered, a
    frame begun, a fragmented message begun, after a close frame, or after
    a protocol error (which leaves its state open).
    """
    whole = frame(BINARY, b"hello")
    assert boundary_after(b"")
    assert boundary_after(whole + frame(PING, b"p") + frame(TEXT, b"t"))
    assert not boundary_after(whole + whole[:1])
    assert not boundary_after(whole[:7])
    assert not boundary_after(frame(BINARY, b"hi", fin=False))
    assert not boundary_after(frame(BINARY, b"hi", fin=False) + frame(PING, b""))
    assert boundary_after(frame(BINARY, b"hi", fin=False) + frame(CONTINUATION, b"!"))
    assert not boundary_after(frame(CLOSE, b""))
    assert not boundary_after(frame(BINARY, b"hi", key=None))
    unread = Connection(ConnectionType.SERVER)
    unread.receive_data(whole)
    assert not at_message_boundary(unread)


def test_fast_path_leaves_wsproto_only_the_rest() -> None:
    """
    With whole messages at the front of a read, wsproto gets only what
    follows them (here, the first byte of a header): the fast path took the
    messages.  Without it, the reader parses them all through wsproto, to
    the same payload.
    """
    bridge = Bridge()
    backend = bridge.accept()
    bridge.reader.dataReceived(frame(BINARY, b"one") + frame(TEXT, b"two") + b"\x82")
    assert backend.value() == b"onetwo"
    decoder = bridge.stream._ws._proto._frame_decoder
    assert decoder.buffer.buffer == b"\x82"
    assert bridge.stream._ws.state is ConnectionState.OPEN
