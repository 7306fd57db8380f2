"""
Validators of static files and the conditional requests that use them
(RFC 9110 sections 8.8 and 13): pure functions of header values, the file's
entity tag and its modification time.

The entity tag is strong and made from the file's size and modification
time in nanoseconds (L{entity_tag}), the way nginx and Apache 2.4 make
theirs (C{FileETag MTime Size}): it costs no read of the file, and two
gateways that serve the same deployed files (copied with their times, as
C{rsync -t}, C{tar} and container images do) give the same tag, which an
inode number would not.  A content hash would also survive a copy that
resets the times, but needs the whole file read once per change.

For C{GET} and C{HEAD} the preconditions are evaluated in the order of
RFC 9110 section 13.2.2 (L{evaluate}): C{If-Match}, else
C{If-Unmodified-Since} (C{412} when false); then C{If-None-Match}, else
C{If-Modified-Since} (C{304} when false).  C{If-Range} is
L{range_applies}.
"""

from __future__ import annotations

from twisted.web.http import stringToDatetime

__all__ = [
    "MODIFIED",
    "NOT_MODIFIED",
    "PRECONDITION_FAILED",
    "entity_tag",
    "evaluate",
    "parse_entity_tags",
    "range_applies",
    "strong_match",
    "weak_match",
]

MODIFIED = 200
"""L{evaluate}: serve the file (or its ranges)."""

NOT_MODIFIED = 304
"""L{evaluate}: the client's copy is current."""

PRECONDITION_FAILED = 412
"""L{evaluate}: a precondition (C{If-Match}, C{If-Unmodified-Since}) failed."""

_ANY = b"*"


def entity_tag(size: int, mtime_ns: int, coding: bytes = b"") -> bytes:
    """
    The strong entity tag of a file: C{"SIZE-MTIME"} in hexadecimal, plus
    C{-CODING} for a precompressed representation (so it differs from the
    tag of the uncompressed bytes, as RFC 9110 section 8.8.3 requires).

    @param size: the file's size in bytes.
    @param mtime_ns: its modification time, in nanoseconds.
    @param coding: the content coding, if the file is a compressed sibling.
    """
    tail = b"-" + coding if coding else b""
    return b'"%x-%x%s"' % (size, mtime_ns, tail)


def parse_entity_tags(header: bytes) -> list[tuple[bool, bytes]] | None:
    """
    The entity tags of an C{If-Match} or C{If-None-Match} value: each as
    (weak, opaque tag with its quotes), or L{None} for C{*}.  Elements that
    are not entity tags are skipped (they match nothing), so a mangled
    header makes the request unconditional rather than refused.
    """
    if header.strip(b" \t") == _ANY:
        return None
    tags: list[tuple[bool, bytes]] = []
    rest = header
    while rest:
        rest = rest.lstrip(b" \t,")
        if not rest:
            break
        weak = rest.startswith(b"W/")
        if weak:
            rest = rest[2:]
        if rest.startswith(b'"'):
            end = rest.find(b'"', 1)
            if end == -1:
                break  # an unterminated tag: nothing more can be read
            tags.append((weak, rest[: end + 1]))
            rest = rest[end + 1 :]
        # skip to the next element (also past anything that is not a tag)
        comma = rest.find(b",")
        rest = rest[comma + 1 :] if comma != -1 else b""
    return tags


def _opaque(tag: bytes) -> tuple[bool, bytes]:
    return (True, tag[2:]) if tag.startswith(b"W/") else (False, tag)


def weak_match(header: bytes, etag: bytes) -> bool:
    """
    Whether an C{If-None-Match} value matches the current tag by weak
    comparison (RFC 9110 section 8.8.3.2: the opaque tags are equal, either
    or both may be weak); C{*} matches any current representation.
    """
    tags = parse_entity_tags(header)
    if tags is None:
        return True
    current = _opaque(etag)[1]
    return any(opaque == current for _weak, opaque in tags)


def strong_match(header: bytes, etag: bytes) -> bool:
    """
    Whether an C{If-Match} value matches the current tag by strong
    comparison (both strong and equal); C{*} matches any current
    representation.
    """
    tags = parse_entity_tags(header)
    if tags is None:
        return True
    weak, current = _opaque(etag)
    return not weak and any(not w and opaque == current for w, opaque in tags)


def _date(value: bytes | None) -> int | None:
    """
    An HTTP-date as seconds since the epoch, or L{None} if it is not one
    (then the condition is ignored, RFC 9110 section 13.1.3).
    """
    if value is None:
        return None
    try:
        return int(stringToDatetime(value.split(b";", 1)[0].strip()))
    except (ValueError, IndexError, KeyError, OverflowError):
        return None


def evaluate(headers: dict[bytes, bytes | None], etag: bytes, last_modified: int) -> int:
    """
    The outcome of a C{GET} or C{HEAD}'s preconditions for a file.

    @param headers: the request's C{if-match}, C{if-unmodified-since},
        C{if-none-match} and C{if-modified-since} values (absent or L{None}:
        not sent), names in lower case.
    @param etag: the file's current entity tag.
    @param last_modified: its modification time, in whole seconds.
    @return: L{MODIFIED}, L{NOT_MODIFIED} or L{PRECONDITION_FAILED}.
    """
    if_match = headers.get(b"if-match")
    if if_match is not None:
        if not strong_match(if_match, etag):
            return PRECONDITION_FAILED
    else:
        since = _date(headers.get(b"if-unmodified-since"))
        if since is not None and last_modified > since:
            return PRECONDITION_FAILED
    if_none_match = headers.get(b"if-none-match")
    if if_none_match is not None:
        return NOT_MODIFIED if weak_match(if_none_match, etag) else MODIFIED
    since = _date(headers.get(b"if-modified-since"))
    if since is not None and last_modified <= since:
        return NOT_MODIFIED
    return MODIFIED


def range_applies(if_range: bytes | None, etag: bytes, last_modified: int) -> bool:
    """
    Whether a C{Range} header is honoured given C{If-Range} (RFC 9110
    section 13.1.5): an entity tag must match the current one by strong
    comparison (a weak tag never does); a date must equal the file's
    modification time exactly.  Otherwise the whole file is sent.

    @param if_range: the request's C{If-Range} value, if any.
    """
    if if_range is None:
        return True
    value = if_range.strip(b" \t")
    if value.startswith(b'"'):
        return _opaque(etag) == (False, value)
    if value.startswith(b"W/"):
        return False
    return _date(value) == last_modified
