"""
The lean static path (C{--no-http-fast-path} turns it off): plain C{GET} and
C{HEAD} requests for small static files answered from a cache, before
C{twisted.web} builds a request for them.

A front door whose site serves only a L{StaticRoot} (no routes, no WebSocket
paths) offers each chunk of an HTTP connection's bytes to the site's
L{LeanStatic} first (L{LeanStatic.feed}).  It answers the whole requests at
the chunk's start that it can answer exactly as C{twisted.web} would, byte
for byte but the C{Date}, with the same access event; at the first request
it cannot answer (or a head cut by the chunk's end) it hands the unread
bytes to the connection's C{twisted.web} channel, which keeps the
connection from then on.  When in doubt, it hands over.

It answers only:

  - a whole head in the chunk, at most L{HEAD_LIMIT} bytes and
    L{MAX_FIELDS} header lines, lines ended by CRLF;
  - the request line C{GET|HEAD SP /path SP HTTP/1.1|HTTP/1.0}, the target
    printable ASCII without C{%}, C{#}, C{//} or C{/.};
  - header names that are tokens, values without control characters, no
    continuation line, no name twice, and none of C{Content-Length},
    C{Transfer-Encoding}, C{Range}, C{If-Range}, C{Upgrade}, C{Expect};
  - a path that L{StaticRoot.getChild} (the same checks: hidden files,
    links out of the root) resolves to a regular file of at most
    L{FILE_LIMIT} bytes whose extension implies no content coding; a path
    ending in C{/} only when that is the folder's first index name
    (C{index.html}: no later file can be chosen before it).

A file's cache entry holds its body and prebuilt headers, and is checked by
one C{stat} per request (device, inode, size, modification and change
times, mode): any change resolves the path again in full.  Precompressed
siblings are chosen as L{StaticRoot} chooses them, with their own entries.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.web import http
from twisted.web.static import getTypeAndEncoding

from gateway.http.channel import SEND_TIMEOUT
from gateway.http.codings import SIBLINGS, preferred_codings
from gateway.http.conditional import MODIFIED, PRECONDITION_FAILED, entity_tag, evaluate
from gateway.http.static import StaticRoot
from gateway.ops.access import HTTP_COMPLETE, log_http_request
from gateway.session.stream import close_now, send_now, write_now

__all__ = ["FILE_LIMIT", "HEAD_LIMIT", "MAX_FIELDS", "LeanRequest", "LeanStatic", "parse_head"]

FILE_LIMIT = 64 * 1024
"""The largest file (or precompressed sibling) the lean path serves."""

HEAD_LIMIT = 8192
"""The longest request head (line and headers) the lean path reads."""

MAX_FIELDS = 64
"""The most header lines of a request the lean path reads."""

CACHE_BYTES = 16 * 1024 * 1024
"""The bodies a site's lean cache holds at most (then it starts again)."""

CACHE_ENTRIES = 4096
"""The paths a site's lean cache holds at most (then it starts again)."""

HEAD_CACHE_ENTRIES = 1024
"""The request heads whose responses a site's lean path remembers (then it
starts again)."""

HEAD_CACHE_LIMIT = 2048
"""The longest request head whose response is remembered."""

_WRITE_BATCH = 64 * 1024
"""Response bytes gathered before they are written (and the transport's
back-pressure looked at)."""

_TARGET = re.compile(rb"/[!\x24\x26-\x7e]*\Z")  # printable, no SP, %, #
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_REFUSED = frozenset(
    (b"content-length", b"transfer-encoding", b"range", b"if-range", b"upgrade", b"expect")
)
_CONDITIONS = (b"if-match", b"if-unmodified-since", b"if-none-match", b"if-modified-since")
_SUFFIXES = dict(SIBLINGS)
_PHRASES = {200: b"200 OK", 304: b"304 Not Modified", 412: b"412 Precondition Failed"}


@dataclass(frozen=True, slots=True)
class LeanRequest:
    """
    A request head the lean path may answer (see L{parse_head}).

    @ivar method: C{GET} or C{HEAD}.
    @ivar target: the request target as sent (path and query).
    @ivar path: the target without its query.
    @ivar version: C{HTTP/1.1} or C{HTTP/1.0}.
    @ivar headers: the header values by lower-cased name (each name once).
    """

    method: bytes
    target: bytes
    path: bytes
    version: bytes
    headers: dict[bytes, bytes]


def parse_head(head: bytes) -> LeanRequest | None:
    """
    The request of a head (without its final empty line), or L{None} if
    the lean path does not answer it: anything but the narrow form the
    module describes (C{twisted.web} then reads it).
    """
    if len(head) > HEAD_LIMIT:
        return None
    lines = head.split(b"\r\n")
    if len(lines) > MAX_FIELDS + 1:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method not in (b"GET", b"HEAD") or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    if not _TARGET.match(target):
        return None
    path = target.partition(b"?")[0]
    if b"//" in path or b"/." in path:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return None  # also a continuation line (it starts with SP or HTAB)
        name = name.lower()
        if name in headers or name in _REFUSED:
            return None
        value = value.strip(b" \t")
        if not _VALUE.match(value):
            return None
        headers[name] = value
    return LeanRequest(method, target, path, version, headers)


@dataclass(slots=True)
class _Body:
    """
    One representation of a file (the file, or a precompressed sibling).

    @ivar key: what its C{stat} said when it was read (see L{_key}).
    """

    key: tuple[int, ...]
    body: bytes
    validators: bytes
    etag: bytes
    last_modified: int
    coding: bytes


@dataclass(slots=True)
class _Entry:
    """
    A cached file: its representation and its precompressed siblings'.
    """

    leaf: StaticRoot
    plain: _Body
    common: bytes
    content_type: bytes
    precompressed: bool
    siblings: dict[bytes, _Body] = field(default_factory=dict)


@dataclass(slots=True)
class _Prepared:
    """
    The response to one request head, but its C{Date}: kept for that head
    (clients send the same head again and again) while its file's entry is
    the one it was made from.

    @ivar before: the status line to the C{Server} line.
    @ivar after: the lines after the C{Date} line, and the empty line.
    @ivar body: the body sent (empty for C{HEAD}, 304 and 412).
    @ivar keep: whether the connection stays open after it.
    @ivar method: the method, as logged.
    @ivar target: the target, as logged (cut to the path limit).
    """

    path: bytes
    entry: _Entry
    before: bytes
    after: bytes
    body: bytes
    code: int
    keep: bool
    method: str
    target: str


def _key(info: os.stat_result) -> tuple[int, ...]:
    return (
        info.st_dev,
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_mode,
    )


def _read(path: str, info: os.stat_result, coding: bytes) -> _Body | None:
    """
    A representation read from C{path}, if it is still what C{info} says
    (a regular file of at most L{FILE_LIMIT} bytes) once open.
    """
    if not stat.S_ISREG(info.st_mode) or info.st_size > FILE_LIMIT:
        return None
    try:
        with open(path, "rb") as file:
            body = file.read(FILE_LIMIT + 1)
            if _key(os.fstat(file.fileno())) != _key(info) or len(body) != info.st_size:
                return None
    except OSError:
        return None
    etag = entity_tag(info.st_size, info.st_mtime_ns, coding)
    last_modified = int(info.st_mtime)
    validators = (
        b"ETag: " + etag + b"\r\nLast-Modified: " + http.datetimeToString(last_modified) + b"\r\n"
    )
    return _Body(_key(info), body, validators, etag, last_modified, coding)


def _send(transport: Any, parts: list[bytes]) -> bool:
    """
    Write a chunk's responses: on a plain connection with nothing queued
    straight to the socket (one C{send(2)}: no C{epoll_ctl} to wait for
    writability, no reactor turn to write; L{write_now}), and what the socket
    does not take (or on any other transport: TLS, a C{haproxy:} front)
    through the transport's buffer as before.

    @return: whether the socket took every byte (nothing is queued).
    """
    return write_now(transport, b"".join(parts))


class LeanStatic:
    """
    The lean path of one site's files (see the module).

    @ivar root: the L{StaticRoot} it serves.
    """

    def __init__(
        self,
        root: StaticRoot,
        clock: Any,
        *,
        server: bytes,
        path_limit: int,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        """
        @param clock: the site's reactor (access events' durations, the send
            timeout).
        @param server: the C{Server} header's value.
        @param path_limit: characters of a path kept in its access event.
        @param send_timeout: seconds a closing connection answered on a bare
            client has to take what its socket did not take at once (the
            site's, as its channels').
        """
        self.root = root
        self._clock = clock
        self._server = b"Server: " + server + b"\r\n"
        self._path_limit = path_limit
        self._send_timeout = send_timeout
        self._cache: dict[bytes, _Entry] = {}
        self._cached_bytes = 0
        self._heads: dict[bytes, _Prepared] = {}
        self._date_second = -1
        self._date = b""

    # Finding and caching files -----------------------------------------------

    def _resolve(self, path: bytes) -> StaticRoot | None:
        """
        The leaf L{StaticRoot} of C{path}, walked as C{twisted.web} walks it
        (L{StaticRoot.getChild}: hidden names, links out of the root), or
        L{None} when anything else answers it.
        """
        found: Any = self.root
        for segment in path[1:].split(b"/"):
            found = found.getChildWithDefault(segment, None)
            if type(found) is not StaticRoot:
                return None
        leaf: StaticRoot = found
        return leaf

    def _entry(self, path: bytes) -> _Entry | None:
        """
        The cached file of C{path}, checked by one C{stat}, or L{None}.
        """
        entry = self._cache.get(path)
        if entry is not None:
            try:
                info = os.stat(entry.leaf.path)
            except OSError:
                info = None
            if info is not None and _key(info) == entry.plain.key:
                return entry
            self._forget(path)
        return self._load(path)

    def _load(self, path: bytes) -> _Entry | None:
        leaf = self._resolve(path)
        if leaf is None:
            return None
        if path.endswith(b"/") and leaf.basename() != self.root.indexNames[0]:
            # A folder's index: only its first name, which no file created
            # later can take the place of (the entry's stat would not see it).
            return None
        if leaf.type is None:
            leaf.type, leaf.encoding = getTypeAndEncoding(
                leaf.basename(), leaf.contentTypes, leaf.contentEncodings, leaf.defaultType
            )
        if leaf.encoding:
            return None
        try:
            info = os.stat(leaf.path)
        except OSError:
            return None
        plain = _read(leaf.path, info, b"")
        if plain is None:
            return None
        policy = leaf.cache
        common = b"Accept-Ranges: bytes\r\n"
        if policy.precompressed:
            common += b"Vary: Accept-Encoding\r\n"
        cache_control = policy.header_for(path)
        if cache_control is not None:
            common += b"Cache-Control: " + cache_control + b"\r\n"
        content_type = (leaf.type or leaf.defaultType).encode("ascii")
        entry = _Entry(leaf, plain, common, content_type, policy.precompressed)
        if len(self._cache) >= CACHE_ENTRIES or self._cached_bytes > CACHE_BYTES:
            self._cache.clear()
            self._cached_bytes = 0
            self._heads.clear()
        self._cache[path] = entry
        self._cached_bytes += len(plain.body)
        return entry

    def _forget(self, path: bytes) -> None:
        entry = self._cache.pop(path, None)
        if entry is not None:
            self._cached_bytes -= len(entry.plain.body) + sum(
                len(sibling.body) for sibling in entry.siblings.values()
            )

    def _representation(self, entry: _Entry, accept: bytes | None) -> _Body | None:
        """
        What L{StaticRoot._representation} would send: a precompressed
        sibling the client accepts (a regular file inside the root, not
        older than the file), else the file; L{None} if that is a sibling
        the lean path does not serve (too large, unreadable).
        """
        if not entry.precompressed:
            return entry.plain
        plain = entry.plain
        leaf = entry.leaf
        for coding in preferred_codings(accept):
            sibling = leaf.path + _SUFFIXES[coding]
            try:
                found = os.stat(sibling)
            except OSError:
                continue
            if not stat.S_ISREG(found.st_mode) or found.st_mtime_ns < plain.key[3]:
                continue
            cached = entry.siblings.get(coding)
            if cached is not None and cached.key == _key(found):
                return cached
            if not leaf._inside(os.path.realpath(sibling)):  # noqa: SLF001 - same rule
                continue
            body = _read(sibling, found, coding)
            if body is not None:
                entry.siblings[coding] = body
                self._cached_bytes += len(body.body)
            return body
        return plain

    # Answering ---------------------------------------------------------------

    def _date_line(self) -> bytes:
        # Twisted's Date comes from the wall clock too (time.time()).
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self._date = b"Date: " + http.datetimeToString(second) + b"\r\n"
        return self._date

    def answer(self, request: LeanRequest) -> tuple[bytes, int, int, bool] | None:
        """
        The response to C{request} as C{twisted.web} would write it (but the
        C{Date}), or L{None} to let C{twisted.web} answer it.

        @return: the response's bytes, its status, its body's length, and
            whether the connection stays open after it.
        """
        found = self._prepare(request)
        if found is None:
            return None
        prepared = found[0]
        response = (prepared.before, self._date_line(), prepared.after, prepared.body)
        return b"".join(response), prepared.code, len(prepared.body), prepared.keep

    def _prepare(self, request: LeanRequest) -> tuple[_Prepared, bool] | None:
        """
        The response to C{request} (see L{answer}), and whether it may be
        reused for the same head while its file's entry stays: not when a
        precompressed sibling was looked for (those are looked for again
        on each request).
        """
        entry = self._entry(request.path)
        if entry is None:
            return None
        headers = request.headers
        accept = headers.get(b"accept-encoding")
        body = self._representation(entry, accept)
        if body is None:
            return None
        connection = headers.get(b"connection")
        if request.version == b"HTTP/1.1":
            # HTTPChannel.checkPersistence: the first value's words.
            keep = connection is None or b"close" not in connection.lower().split(b" ")
        else:
            tokens = {token.strip().lower() for token in (connection or b"").split(b",")}
            keep = b"keep-alive" in tokens and b"close" not in tokens
        conditions: dict[bytes, bytes | None] = {
            name: headers[name] for name in _CONDITIONS if name in headers
        }
        code = evaluate(conditions, body.etag, body.last_modified) if conditions else MODIFIED
        if code not in _PHRASES:
            return None
        start = request.version + b" " + _PHRASES[code] + b"\r\n"
        if not keep and request.version == b"HTTP/1.1":
            start += b"Connection: close\r\n"
        parts = [entry.common, body.validators]
        sent = b""
        if code == PRECONDITION_FAILED:
            parts.append(b"Content-Length: 0\r\n")
        elif code == 200:
            coding = b"Content-Encoding: " + body.coding + b"\r\n" if body.coding else b""
            kind = b"Content-Type: " + entry.content_type + b"\r\n"
            length = b"Content-Length: %d\r\n" % len(body.body)
            if request.method == b"HEAD":
                parts += (coding, length, kind)
            else:
                parts += (coding, kind, length)
                sent = body.body
        if keep and request.version == b"HTTP/1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        prepared = _Prepared(
            request.path,
            entry,
            start + self._server,
            b"".join(parts),
            sent,
            code,
            keep,
            request.method.decode("ascii"),
            request.target.decode("ascii")[: self._path_limit],
        )
        return prepared, not (entry.precompressed and preferred_codings(accept))

    def _prepared(self, head: bytes) -> _Prepared | None:
        """
        The response to a request C{head} (see L{answer}): the one made for
        the same head before if its file's entry is still the one it was
        made from (checked by L{_entry}'s C{stat}), else a new one.
        """
        prepared = self._heads.get(head)
        if prepared is not None:
            if self._entry(prepared.path) is prepared.entry:
                return prepared
            self._heads.pop(head, None)
        request = parse_head(head)
        found = self._prepare(request) if request is not None else None
        if found is None:
            return None
        prepared, reusable = found
        if reusable and len(head) <= HEAD_CACHE_LIMIT:
            if len(self._heads) >= HEAD_CACHE_ENTRIES:
                self._heads.clear()
            self._heads[head] = prepared
        return prepared

    def _log(self, door: Any, prepared: _Prepared, started: float) -> None:
        """
        The access event of a request answered here (as C{twisted.web}'s).
        """
        log_http_request(
            peer=door.peer,
            method=prepared.method,
            path=prepared.target,
            status=prepared.code,
            bytes_in=0,
            bytes_out=len(prepared.body),
            duration=self._clock.seconds() - started,
            reason=HTTP_COMPLETE,
        )

    def answer_alone(self, door: Any, data: bytes) -> bool:
        """
        Answer a connection's first bytes, C{data}, without a C{twisted.web}
        channel when they are one whole request after which the connection
        closes (C{Connection: close}, or HTTP/1.0 without keep-alive), on a
        bare client (L{gateway.session.bareclient}): the response goes
        straight to the socket, which is then closed.  What the socket does
        not take goes through the transport the bare client then becomes,
        which closes the connection once it is sent.

        @param door: the front door (its C{transport} a bare client); told
            the body's size (C{count_out}) before the connection closes.
        @return: whether the request was answered; else nothing was done.
        """
        end = data.find(b"\r\n\r\n", 0, HEAD_LIMIT + 4)
        if end < 0 or end + 4 != len(data):
            return False
        started = self._clock.seconds()
        prepared = self._prepared(data[:end])
        if prepared is None or prepared.keep:
            return False
        door.count_out(len(prepared.body))
        self._log(door, prepared, started)
        response = b"".join((prepared.before, self._date_line(), prepared.after, prepared.body))
        transport = door.transport
        sent = send_now(transport.socket, response) or 0
        if sent == len(response):
            transport.loseConnection()  # closed now: the door hears it
        else:
            # A full socket buffer, or an error the transport will meet; a
            # client that does not read the rest is cut off after the send
            # timeout (as a channel's closing connection is).
            full = transport.full()
            full.write(response[sent:])
            full.loseConnection()
            timer = self._clock.callLater(self._send_timeout, full.abortConnection)
            door.add_close_hook(lambda: timer.cancel() if timer.active() else None)
        return True

    def feed(self, door: Any, data: bytes) -> bytes | None:
        """
        Answer the whole requests at the start of C{data}, read by
        C{door}'s connection.

        @return: L{None} if every byte was used (or the connection is
            closing), else the bytes from the first request not answered,
            which C{twisted.web} reads from now on.
        """
        transport = door.transport
        channel = door.http
        clock = self._clock
        position = 0
        out: list[bytes] = []
        gathered = 0
        rest: bytes | None = None
        if transport is None or transport.disconnecting:
            return data  # closing: twisted.web ignores what comes
        while position < len(data):
            started = clock.seconds()
            end = data.find(b"\r\n\r\n", position, position + HEAD_LIMIT + 4)
            prepared = self._prepared(data[position:end]) if end >= 0 else None
            if prepared is None:
                rest = data[position:]
                break
            length = len(prepared.body)
            out += (prepared.before, self._date_line(), prepared.after, prepared.body)
            gathered += len(prepared.after) + length
            channel.bytes_out += length
            self._log(door, prepared, started)
            position = end + 4
            if not prepared.keep:
                channel.persistent = False
                if _send(transport, out):
                    # Nothing left to send: closed now (no send timeout is
                    # armed, no turn waited for; the door and the channel
                    # hear connectionLost before this returns).
                    close_now(transport)
                else:
                    channel.loseConnection()
                return None
            if gathered >= _WRITE_BATCH:
                _send(transport, out)
                out, gathered = [], 0
                if getattr(channel, "_waitingForTransport", False):
                    # The client does not read: twisted.web reads the rest
                    # (and stops reading until it does).
                    rest = data[position:] or None
                    break
        if out:
            _send(transport, out)
        if position:
            channel.resetTimeout()
        return rest
