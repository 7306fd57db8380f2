"""
Tests of the validators and conditional requests of static files
(L{gateway.http.conditional}) and of the C{Accept-Encoding} negotiation of
precompressed siblings (L{gateway.http.codings}): pure functions.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http import datetimeToString

from gateway.http.codings import preferred_codings
from gateway.http.conditional import (
    MODIFIED,
    NOT_MODIFIED,
    PRECONDITION_FAILED,
    entity_tag,
    evaluate,
    parse_entity_tags,
    range_applies,
    strong_match,
    weak_match,
)

ETAG = entity_tag(1234, 1_700_000_000_123_456_789)
MTIME = 1_700_000_000

_opaque = st.text(
    alphabet=st.characters(min_codepoint=0x23, max_codepoint=0x7E, exclude_characters='"'),
    max_size=12,
).map(lambda text: b'"' + text.encode() + b'"')
_tags = st.lists(st.tuples(st.booleans(), _opaque), max_size=6)
_spaces = st.sampled_from([b"", b" ", b"  ", b"\t"])


def test_entity_tag_is_quoted_size_and_time_and_names_a_coding() -> None:
    """
    A tag is strong, quoted, made of the size and modification time in
    hexadecimal, and a compressed sibling's names its coding.
    """
    assert entity_tag(255, 4096) == b'"ff-1000"'
    assert entity_tag(255, 4096, b"br") == b'"ff-1000-br"'


@given(_tags, _spaces, _spaces)
def test_parse_reads_back_every_tag_of_a_list(
    tags: list[tuple[bool, bytes]], before: bytes, after: bytes
) -> None:
    """
    Any list of entity tags, weak or strong, with any optional whitespace
    around its commas (and empty elements), parses to the same tags.
    """
    header = (after + b"," + before).join((b"W/" if weak else b"") + tag for weak, tag in tags)
    assert parse_entity_tags(before + header + after + b",") == tags


@given(_tags, st.booleans(), st.integers(0, 6))
def test_weak_comparison_matches_a_tag_anywhere_weak_or_not(
    tags: list[tuple[bool, bytes]], weak: bool, at: int
) -> None:
    """
    C{If-None-Match} matches by weak comparison: the current tag anywhere in
    the list, with or without C{W/}; never a list without it.
    """
    header = b", ".join((b"W/" if w else b"") + tag for w, tag in tags)
    assert weak_match(header, ETAG) == any(tag == ETAG for _w, tag in tags)
    listed = [*tags[:at], (weak, ETAG), *tags[at:]]
    header = b", ".join((b"W/" if w else b"") + tag for w, tag in listed)
    assert weak_match(header, ETAG)
    assert strong_match(header, ETAG) == any(tag == ETAG and not w for w, tag in listed)


def test_star_and_junk() -> None:
    """
    C{*} matches any current file; elements that are not tags match
    nothing (Twisted's own comparison splits on spaces: a list with commas
    never matched).
    """
    assert weak_match(b" * ", ETAG)
    assert strong_match(b"*", ETAG)
    assert weak_match(b'"x",' + ETAG, ETAG)
    assert not weak_match(b"unquoted, W/junk", ETAG)
    assert not weak_match(ETAG[:-1], ETAG)  # unterminated
    assert parse_entity_tags(b'junk, "a" x, "b"') == [(False, b'"a"'), (False, b'"b"')]


def _conditions(**values: bytes) -> dict[bytes, bytes | None]:
    return {name.replace("_", "-").encode(): value for name, value in values.items()}


def test_if_none_match_wins_over_if_modified_since() -> None:
    """
    A matching C{If-None-Match} is a 304; a non-matching one is a 200 even
    with an C{If-Modified-Since} that alone would be a 304 (RFC 9110 13.1.3).
    """
    later = datetimeToString(MTIME + 60)
    assert evaluate(_conditions(if_none_match=ETAG), ETAG, MTIME) == NOT_MODIFIED
    assert evaluate(_conditions(if_none_match=b'"other"'), ETAG, MTIME) == MODIFIED
    conditions = _conditions(if_none_match=b'"other"', if_modified_since=later)
    assert evaluate(conditions, ETAG, MTIME) == MODIFIED


def test_if_modified_since() -> None:
    """
    C{If-Modified-Since} at or after the file's time is a 304, before it a
    200, and a date that does not parse is ignored.
    """
    assert evaluate({}, ETAG, MTIME) == MODIFIED
    same = _conditions(if_modified_since=datetimeToString(MTIME))
    assert evaluate(same, ETAG, MTIME) == NOT_MODIFIED
    earlier = _conditions(if_modified_since=datetimeToString(MTIME - 1))
    assert evaluate(earlier, ETAG, MTIME) == MODIFIED
    assert evaluate(_conditions(if_modified_since=b"yesterday"), ETAG, MTIME) == MODIFIED


def test_if_match_and_if_unmodified_since_fail_with_412() -> None:
    """
    C{If-Match} compares strongly (a weak tag fails); without it,
    C{If-Unmodified-Since} before the file's time fails.
    """
    assert evaluate(_conditions(if_match=ETAG), ETAG, MTIME) == MODIFIED
    assert evaluate(_conditions(if_match=b"W/" + ETAG), ETAG, MTIME) == PRECONDITION_FAILED
    before = _conditions(if_unmodified_since=datetimeToString(MTIME - 1))
    assert evaluate(before, ETAG, MTIME) == PRECONDITION_FAILED
    after = _conditions(if_unmodified_since=datetimeToString(MTIME))
    assert evaluate(after, ETAG, MTIME) == MODIFIED


def test_if_range() -> None:
    """
    C{If-Range} honours the range for the current strong tag or the exact
    modification date, and not for a weak tag, another tag or another date.
    """
    assert range_applies(None, ETAG, MTIME)
    assert range_applies(ETAG, ETAG, MTIME)
    assert not range_applies(b"W/" + ETAG, ETAG, MTIME)
    assert not range_applies(b'"other"', ETAG, MTIME)
    assert range_applies(datetimeToString(MTIME), ETAG, MTIME)
    assert not range_applies(datetimeToString(MTIME + 1), ETAG, MTIME)
    assert not range_applies(b"garbage", ETAG, MTIME)


def test_codings_by_weight() -> None:
    """
    Brotli before gzip among equals; a higher weight first; q=0 refuses;
    C{*} stands for codings not named; no header: identity only.
    """
    assert preferred_codings(None) == []
    assert preferred_codings(b"gzip, deflate, br, zstd") == [b"br", b"gzip"]
    assert preferred_codings(b"br;q=0.5, gzip") == [b"gzip", b"br"]
    assert preferred_codings(b"gzip, br;q=0") == [b"gzip"]
    assert preferred_codings(b"*;q=0.1, gzip;q=0") == [b"br"]
    assert preferred_codings(b"x-gzip") == [b"gzip"]
    assert preferred_codings(b"identity") == []
    assert preferred_codings(b"br;q=nope, gzip;q=2") == []


@given(st.binary(max_size=60))
def test_codings_of_any_header(header: bytes) -> None:
    """
    Any C{Accept-Encoding} value gives a subset of the siblings' codings,
    without an error.
    """
    assert set(preferred_codings(header)) <= {b"br", b"gzip"}
