"""
Unit tests of L{gateway.http.ranges}: the range policy (L{select_ranges}, pure,
also property-tested) and L{FileParts}, the producer that sends a file's
parts, driven step by step against a recording request and file.
"""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.ranges import (
    CHUNK,
    MAX_RANGES,
    FileChangedError,
    FileParts,
    Multipart,
    select_ranges,
)

SIZE = 10_000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        (b"bytes=", None),  # empty: ignored (was a 500 with a traceback)
        (b"bytes= , ,", None),
        (b"bytes=5-1", None),  # reversed
        (b"bytes=a-b", None),
        (b"bytes=+1-2", None),
        (b"bytes=1", None),
        (b"items=0-1", None),
        (b"bytes=" + b"9" * 40 + b"-", None),
        (b"bytes=0-9", [(0, 10)]),
        (b"BYTES = 0-9", [(0, 10)]),
        (b"bytes=-5", [(SIZE - 5, SIZE)]),
        (b"bytes=-99999", [(0, SIZE)]),  # a suffix longer than the file: all of it
        (b"bytes=9990-", [(9990, SIZE)]),
        (b"bytes=9990-20000", [(9990, SIZE)]),
        (b"bytes=20000-30000", []),  # unsatisfiable: 416
        (b"bytes=-0", []),
        (b"bytes=0-65328,100-199", [(0, SIZE)]),  # overlapping: merged
        (b"bytes=100-199,0-9", [(0, 10), (100, 200)]),  # file order
        (b"bytes=0-9,10-19", [(0, 20)]),  # touching: merged
        (b"bytes=0-9,,20-29,", [(0, 10), (20, 30)]),
        (b"bytes=0-0,20000-", [(0, 1)]),
    ],
)
def test_select_ranges(header: bytes | None, expected: list[tuple[int, int]] | None) -> None:
    """
    Invalid headers are ignored (whole file, L{None}); ranges are clipped to
    the file, unsatisfiable ones dropped (none left: an empty list, a 416),
    overlapping and touching ones merged, in file order.
    """
    assert select_ranges(header, SIZE) == expected


def test_too_many_ranges_get_the_whole_file() -> None:
    """
    More than L{MAX_RANGES} ranges (1,500 one-byte ranges in the finding)
    are not served as ranges: the whole file instead; up to the limit they are.
    """
    many = b"bytes=" + b",".join(b"%d-%d" % (2 * i, 2 * i) for i in range(1500))
    assert select_ranges(many, SIZE) is None
    at_limit = b"bytes=" + b",".join(b"%d-%d" % (2 * i, 2 * i) for i in range(MAX_RANGES))
    assert select_ranges(at_limit, SIZE) == [(2 * i, 2 * i + 1) for i in range(MAX_RANGES)]


def test_empty_file_ignores_ranges() -> None:
    """
    An empty file is sent whole (empty) whatever the ranges.
    """
    assert select_ranges(b"bytes=0-0", 0) is None


@given(
    size=st.integers(1, 5000),
    specs=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 6000), st.none()),
            st.tuples(st.integers(0, 6000), st.integers(0, 6000)),
            st.tuples(st.none(), st.integers(0, 6000)),
        ),
        min_size=1,
        max_size=MAX_RANGES,
    ),
)
def test_selected_parts_are_the_asked_bytes_once(
    size: int, specs: list[tuple[int | None, int | None]]
) -> None:
    """
    For any valid header, the parts are in order, disjoint and not
    touching, inside the file, and cover exactly the bytes the ranges ask
    for: no byte is sent twice, none is missing.
    """
    specs = [(a, b) if a is None or b is None or a <= b else (b, a) for a, b in specs]
    text = ",".join(
        f"-{b}" if a is None else f"{a}-" if b is None else f"{a}-{b}" for a, b in specs
    )
    parts = select_ranges(f"bytes={text}".encode(), size)
    assert parts is not None
    asked: set[int] = set()
    for a, b in specs:
        if a is None:
            assert b is not None
            asked.update(range(max(0, size - b), size) if b else ())
        else:
            asked.update(range(a, size if b is None else min(b + 1, size)))
    covered: set[int] = set()
    for index, (start, stop) in enumerate(parts):
        assert 0 <= start < stop <= size
        if index + 1 < len(parts):
            assert stop < parts[index + 1][0]
        covered.update(range(start, stop))
    assert covered == asked


class Recorder:
    """
    A request that records what a producer does with it.
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.registered: tuple[object, bool] | None = None
        self.finished = False

    def registerProducer(self, producer: object, streaming: bool) -> None:  # noqa: N802
        """
        Note the producer.
        """
        self.registered = (producer, streaming)

    def unregisterProducer(self) -> None:  # noqa: N802
        """
        Forget the producer.
        """
        self.registered = None

    def write(self, data: bytes) -> None:
        """
        Note a write.
        """
        self.writes.append(data)

    def finish(self) -> None:
        """
        Note the end.
        """
        self.finished = True


class RecordingFile(io.BytesIO):
    """
    A file in memory that records the size of each read.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        """
        Read, noting the size asked.
        """
        self.reads.append(-1 if size is None else size)
        return super().read(size)


def run(producer: FileParts, request: Recorder, limit: int = 10_000) -> None:
    """
    Pull until the request is finished (at most C{limit} steps).
    """
    producer.start()
    for _ in range(limit):
        if request.finished:
            return
        producer.resumeProducing()
    raise AssertionError("the producer did not finish")


def test_multipart_body_reads_the_file_in_chunks() -> None:
    """
    The finding's request (C{bytes=0-65328,100-199}, whose first part and
    headers pass 64 KiB) on a large file: every read asks at most L{CHUNK}
    bytes (Twisted's producer asked a negative size, reading the whole file),
    each step writes at most a part header more, and the body is the
    announced multipart document, its length the one computed beforehand.
    """
    data = bytes(range(256)) * 4096  # 1 MiB
    spans = [(0, 65329), (70000, 70100), (200_000, 400_000)]
    multipart = Multipart(b"application/octet-stream", len(data))
    request = Recorder()
    file = RecordingFile(data)
    run(FileParts(request, file, spans, multipart), request)
    assert max(file.reads) <= CHUNK and min(file.reads) >= 0
    assert max(map(len, request.writes)) <= CHUNK + len(multipart.head(spans[0])) + len(
        multipart.tail
    )
    body = b"".join(request.writes)
    assert len(body) == multipart.length(spans)
    boundary = re.search(rb'boundary="([^"]+)"', multipart.content_type)
    assert boundary is not None
    pieces = body.split(b"\r\n--" + boundary.group(1))
    assert pieces[0] == b"" and pieces[-1] == b"--\r\n"
    for piece, (start, stop) in zip(pieces[1:-1], spans, strict=True):
        head, _, content = piece.partition(b"\r\n\r\n")
        assert b"Content-Range: bytes %d-%d/%d" % (start, stop - 1, len(data)) in head
        assert content == data[start:stop]
    assert request.registered is None and file.closed


def test_whole_file_and_empty_body() -> None:
    """
    A plain part list is sent as the bytes alone (no framing); no parts at
    all (a 416, an empty file) finishes at once.
    """
    data = b"x" * (3 * CHUNK + 5)
    request = Recorder()
    run(FileParts(request, io.BytesIO(data), [(0, len(data))]), request)
    assert b"".join(request.writes) == data
    empty = Recorder()
    run(FileParts(empty, io.BytesIO(data), []), empty)
    assert empty.writes == []


def test_file_cut_short_raises() -> None:
    """
    A file that ends before the promised bytes (cut while being sent)
    raises L{FileChangedError} instead of finishing a short response as if
    it were whole.
    """
    request = Recorder()
    producer = FileParts(request, io.BytesIO(b"x" * 100), [(0, 1000)])
    producer.start()
    with pytest.raises(FileChangedError):
        producer.resumeProducing()
    assert not request.finished
