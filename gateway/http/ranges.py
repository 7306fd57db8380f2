"""
Byte ranges of static files (C{Range: bytes=...}): which parts of a file a
response carries (L{select_ranges}, pure), and L{FileParts}, the producer that
sends them, reading the file L{CHUNK} bytes at a time whatever the ranges.

The policy, chosen after nginx and Apache (whose C{MaxRanges} and range
merging came after the "Apache Killer", CVE-2011-3192):

  - a Range header that does not parse (an empty C{bytes=}, a reversed or
    non-numeric range, another unit) is ignored: C{200} with the whole file,
    as RFC 9110 section 14.2 allows (Apache does the same);
  - more than L{MAX_RANGES} ranges: ignored, C{200} with the whole file
    (Apache's C{MaxRanges}; nginx's C{max_ranges});
  - ranges that start past the end are dropped; if none is left, C{416};
  - ranges that overlap or touch are merged, and the parts are sent in file
    order (RFC 9110 section 14.3 lets a server coalesce ranges "regardless of
    the order"), so no byte is sent twice: a response is never larger than
    the file plus one part header per part;
  - one range left: a plain C{206} with C{Content-Range}; several: a
    C{206} C{multipart/byteranges} response.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

__all__ = [
    "CHUNK",
    "MAX_RANGES",
    "FileChangedError",
    "FileParts",
    "Multipart",
    "ResponseConsumer",
    "select_ranges",
]

CHUNK = 64 * 1024
"""The most bytes read from a file at once (and written per step)."""

MAX_RANGES = 64
"""More ranges than this in one request: the whole file is sent instead."""

_MAX_DIGITS = 18
"""Longer positions are not byte positions of any file: the header is ignored."""

Span = tuple[int, int]
"""A part of a file: (first byte, one past the last byte)."""


def _position(text: bytes) -> int | None:
    if not text or len(text) > _MAX_DIGITS or not text.isdigit():
        return None
    return int(text)


def _parse(header: bytes) -> list[tuple[int | None, int | None]] | None:
    """
    The range specs of a C{Range} header, or L{None} if it is not a valid
    C{bytes} ranges-specifier.
    """
    unit, equals, value = header.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes":
        return None
    specs: list[tuple[int | None, int | None]] = []
    for item in value.split(b","):
        item = item.strip(b" \t")
        if not item:
            continue  # empty list elements are allowed (RFC 9110 5.6.1)
        first, dash, last = item.partition(b"-")
        if not dash:
            return None
        if not first:
            suffix = _position(last)
            if suffix is None:
                return None
            specs.append((None, suffix))
            continue
        start = _position(first)
        end = _position(last) if last else None
        if start is None or (last and end is None) or (end is not None and end < start):
            return None
        specs.append((start, end))
    return specs or None


def select_ranges(
    header: bytes | None, size: int, max_ranges: int = MAX_RANGES
) -> list[Span] | None:
    """
    Which parts of a file of C{size} bytes a request with this C{Range}
    header gets.

    @param header: the request's C{Range} value, if any.
    @return: L{None} for the whole file (no header, an invalid one, too many
        ranges, or an empty file); an empty list if no range is satisfiable
        (C{416}); otherwise the parts, merged where they overlap or touch,
        in file order.
    """
    if header is None or size == 0:
        return None
    specs = _parse(header)
    if specs is None or len(specs) > max_ranges:
        return None
    spans: list[Span] = []
    for start, end in specs:
        if start is None:
            assert end is not None
            if end == 0:
                continue  # a zero-length suffix selects nothing
            spans.append((max(0, size - end), size))
        elif start < size:
            spans.append((start, size if end is None else min(end + 1, size)))
    spans.sort()
    merged: list[Span] = []
    for start, stop in spans:
        if merged and start <= merged[-1][1]:
            if stop > merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


class Multipart:
    """
    The framing of a C{multipart/byteranges} body: a boundary, each part's
    header, the closing delimiter.

    @ivar content_type: the response's C{Content-Type}.
    """

    def __init__(self, part_type: bytes, size: int) -> None:
        """
        @param part_type: the file's content type, named in each part.
        @param size: the file's size, named in each part's C{Content-Range}.
        """
        self._boundary = secrets.token_hex(12).encode()
        self._part_type = part_type
        self._size = size
        self.content_type = b'multipart/byteranges; boundary="' + self._boundary + b'"'

    def head(self, span: Span) -> bytes:
        """
        What precedes the bytes of C{span}.
        """
        return b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (
            self._boundary,
            self._part_type,
            span[0],
            span[1] - 1,
            self._size,
        )

    @property
    def tail(self) -> bytes:
        """
        What follows the last part.
        """
        return b"\r\n--" + self._boundary + b"--\r\n"

    def length(self, spans: list[Span]) -> int:
        """
        The body's length for these parts.
        """
        return sum(len(self.head(span)) + span[1] - span[0] for span in spans) + len(self.tail)


class FileChangedError(Exception):
    """
    The file ended before the bytes its response promised (it was cut while
    being sent): the response cannot be completed.
    """


class ResponseConsumer(Protocol):
    """
    What L{FileParts} needs of a request.
    """

    def registerProducer(self, producer: object, streaming: bool) -> None: ...  # noqa: N802
    def unregisterProducer(self) -> None: ...  # noqa: N802
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...


class _Readable(Protocol):
    """
    What L{FileParts} needs of a file.
    """

    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


@implementer(IPullProducer)
class FileParts:
    """
    Writes parts of an open file to a request, at most L{CHUNK} bytes of the
    file per step (plus a part header), then finishes the request: a pull
    producer, so its consumer asks for each step when the previous one has
    been sent.

    A file that ends early raises L{FileChangedError}: the consumer must then
    close the connection, since the promised length can no longer be met.
    """

    def __init__(
        self,
        request: ResponseConsumer,
        file: _Readable,
        spans: list[Span],
        multipart: Multipart | None = None,
    ) -> None:
        """
        @param spans: the parts, in order (empty: an empty body).
        @param multipart: the framing, for a multipart body.
        """
        self._request: ResponseConsumer | None = request
        self._file = file
        self._spans = spans
        self._multipart = multipart
        self._index = 0
        self._position: int | None = None

    def start(self) -> None:
        """
        Register with the request; it asks for the first step.
        """
        assert self._request is not None
        self._request.registerProducer(self, False)

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        """
        Write the next step: a part's header and up to L{CHUNK} of its bytes;
        after the last part, finish the request.

        @raise FileChangedError: the file ended before the part did.
        """
        request = self._request
        if request is None:
            return
        pieces: list[bytes] = []
        done = self._index >= len(self._spans)
        if not done:
            start, stop = self._spans[self._index]
            if self._position is None:
                if self._multipart is not None:
                    pieces.append(self._multipart.head((start, stop)))
                self._file.seek(start)
                self._position = start
            wanted = min(CHUNK, stop - self._position)
            data = self._file.read(wanted)
            if len(data) < wanted:
                raise FileChangedError(
                    f"file ended at byte {self._position + len(data)} of {stop}"
                )
            pieces.append(data)
            self._position += wanted
            if self._position == stop:
                self._index += 1
                self._position = None
                done = self._index == len(self._spans)
                if done and self._multipart is not None:
                    pieces.append(self._multipart.tail)
        if pieces:
            request.write(b"".join(pieces))
        if done and self._request is not None:
            self._request.unregisterProducer()
            self._request.finish()
            self.stopProducing()

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        """
        Stop: close the file and forget the request.
        """
        self._request = None
        self._file.close()
