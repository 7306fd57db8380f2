"""
The static files of the public HTTP side (C{--http-root}): L{StaticRoot}.

L{StaticRoot} is C{twisted.web.static.File} (content types, HEAD, ranges, files
streamed by a pull producer 64 KiB at a time, so memory stays bounded for any
file size, or sent by C{sendfile(2)}: L{gateway.http.sendfile}) with the
defaults a public server wants:

  - no folder listing unless asked (C{--http-listing});
  - nothing outside the root: C{..} segments are refused by C{FilePath}, and a
    symbolic link inside the root that resolves outside it is a 404;
  - hidden files (a segment starting with C{.}, such as C{.git} or C{.env})
    are a 404, except C{.well-known}; a listing does not show them either, nor
    links that leave the root;
  - a path segment with a NUL byte or invalid UTF-8 is a 404 (not a 500, and
    no traceback in the log per request);
  - methods other than GET and HEAD get a 405 with C{Allow: GET, HEAD};
  - C{Range} requests follow the policy of L{gateway.http.ranges} (invalid or
    more than 64 ranges: the whole file; overlapping ones merged), and every
    response body is read from its file 64 KiB at a time, ranges or not
    (or sent by the kernel, for one large span on a plain connection);
  - content types come from a pinned table for the common web types (so they
    do not depend on the host's C{/etc/mime.types}), then the host's table,
    and unknown extensions are C{application/octet-stream}, never HTML;
  - every file response carries a strong C{ETag} and C{Last-Modified}, and
    conditional requests are answered as L{gateway.http.conditional} says
    (C{304}, C{412}, C{If-Range});
  - C{Cache-Control} follows a L{CachePolicy} (C{--cache-control},
    C{--cache-immutable});
  - a precompressed sibling (C{app.js.br}, C{app.js.gz}) is sent instead of
    the file to a client that accepts its coding (L{gateway.http.codings}),
    with the file's content type and C{Vary: Accept-Encoding}.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import IO, cast

from twisted.web import http, pages, resource, server
from twisted.web.iweb import IRequest
from twisted.web.static import File, getTypeAndEncoding
from typing_extensions import override

from gateway.config import DEFAULT_CACHE_CONTROL
from gateway.http.codings import SIBLINGS, preferred_codings
from gateway.http.conditional import (
    MODIFIED,
    PRECONDITION_FAILED,
    entity_tag,
    evaluate,
    range_applies,
)
from gateway.http.ranges import MAX_RANGES, FileParts, Multipart, ResponseConsumer, select_ranges
from gateway.http.sendfile import FileSender, file_sender

__all__ = [
    "ALLOWED_METHODS",
    "IMMUTABLE",
    "WEB_TYPES",
    "CachePolicy",
    "StaticRoot",
]

IMMUTABLE = b"public, max-age=31536000, immutable"
"""C{Cache-Control} of fingerprinted names (L{CachePolicy.immutable}): a
year, and no revalidation on reload, since the name changes with the
content."""

_CONDITIONS = (b"if-match", b"if-unmodified-since", b"if-none-match", b"if-modified-since")
_SUFFIXES = dict(SIBLINGS)


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """
    The caching headers of static files.

    @ivar cache_control: the C{Cache-Control} value of every file; L{None}:
        no header.
    @ivar immutable: request paths (searched, as sent, percent-encoded)
        that get L{IMMUTABLE} instead; L{None}: none.
    @ivar precompressed: serve precompressed siblings.
    """

    cache_control: bytes | None = DEFAULT_CACHE_CONTROL.encode("ascii")
    immutable: re.Pattern[bytes] | None = None
    precompressed: bool = True

    def header_for(self, path: bytes) -> bytes | None:
        """
        The C{Cache-Control} value for a file at this request path.
        """
        if self.immutable is not None and self.immutable.search(path):
            return IMMUTABLE
        return self.cache_control

    @classmethod
    def from_settings(cls, cache_control: str | None, immutable: str | None) -> CachePolicy:
        """
        The policy of C{--cache-control} and C{--cache-immutable} (already
        checked: one printable line, a regular expression that compiles).
        """
        return cls(
            cache_control.encode("latin-1") if cache_control else None,
            re.compile(immutable.encode("utf-8")) if immutable else None,
        )


_NOT_FOUND = pages.notFound("No Such Resource", "No such file.")

WEB_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
}
"""Content types pinned for the files a game's web site serves."""

ALLOWED_METHODS = (b"GET", b"HEAD")
"""The methods a file is served to (named in C{Allow} otherwise)."""


def _is_hidden(name: str) -> bool:
    return name.startswith(".") and name != ".well-known"


class StaticRoot(File):
    """
    A folder of static files that never serves anything outside its root.

    @ivar root_real: the resolved (symlink-free) path of the root folder.
    @ivar listing: whether folders without an index file are listed.
    @ivar cache: the caching headers of its files.
    """

    childNotFound = _NOT_FOUND  # type: ignore[assignment]
    contentTypes = {**File.contentTypes, **WEB_TYPES}

    def __init__(
        self,
        path: str,
        *,
        listing: bool = False,
        root_real: str | None = None,
        cache: CachePolicy = CachePolicy(),  # noqa: B008 - frozen, shared on purpose
    ) -> None:
        """
        @param path: the folder (or, for children, the file) this resource serves.
        @param listing: list folders that have no index file.
        @param root_real: the resolved root; L{None} for the root itself.
        @param cache: the caching headers of its files.
        """
        super().__init__(path, defaultType="application/octet-stream")
        # Only real HTML index files: File's default list also has "index" and
        # "index.rpy", and this server runs no resource scripts.
        self.indexNames = ["index.html", "index.htm"]
        self.listing = listing
        self.root_real = root_real if root_real is not None else os.path.realpath(path)
        self.cache = cache

    @override
    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        if "\x00" in name or _is_hidden(name):
            return self.childNotFound
        return super().getChild(path, request)  # type: ignore[no-any-return]

    @override
    def render(self, request: IRequest) -> bytes | int:
        if request.method not in ALLOWED_METHODS:
            request.setResponseCode(405)
            request.setHeader(b"allow", b", ".join(ALLOWED_METHODS))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"405 Method Not Allowed: this server only serves files (GET, HEAD).\n"
        return super().render(request)  # type: ignore[no-any-return]

    @override
    def render_GET(self, request: IRequest) -> bytes | int:  # noqa: N802 - File's name
        # File's own, plus: validators and conditional requests (304, 412,
        # If-Range), Cache-Control, precompressed siblings.  Twisted's
        # Request.setETag splits If-None-Match on spaces (a list with commas
        # never matches) and knows no weak tags, and its setLastModified
        # answers If-Modified-Since even when If-None-Match is present
        # (RFC 9110 section 13.1.3 says to ignore it then).
        try:
            info = os.stat(self.path)
        except OSError:
            return self.childNotFound.render(request)  # type: ignore[no-any-return]
        if stat.S_ISDIR(info.st_mode):
            return self.redirect(request)  # type: ignore[no-any-return]
        if self.type is None:
            self.type, self.encoding = getTypeAndEncoding(
                self.basename(), self.contentTypes, self.contentEncodings, self.defaultType
            )
        request.setHeader(b"accept-ranges", b"bytes")
        policy = self.cache
        if policy.precompressed:
            request.setHeader(b"vary", b"Accept-Encoding")
        cache_control = policy.header_for(request.path)
        if cache_control is not None:
            request.setHeader(b"cache-control", cache_control)
        try:
            file, info, coding = self._representation(request, info)
        except PermissionError:
            return self.forbidden.render(request)  # type: ignore[no-any-return]
        etag = entity_tag(info.st_size, info.st_mtime_ns, coding)
        last_modified = int(info.st_mtime)
        request.setHeader(b"etag", etag)
        request.setHeader(b"last-modified", http.datetimeToString(last_modified))
        headers = request.requestHeaders
        conditions: dict[bytes, bytes | None] = {}
        for name in _CONDITIONS:
            values = headers.getRawHeaders(name)
            if values:
                # A list may come on several lines (RFC 9110 section 5.3).
                conditions[name] = b",".join(values)
        outcome = evaluate(conditions, etag, last_modified)
        if outcome != MODIFIED:
            file.close()
            request.setResponseCode(outcome)
            if outcome == PRECONDITION_FAILED:
                request.setHeader(b"content-length", b"0")
            request.finish()  # no body, and no Content-Length for a 304
            return server.NOT_DONE_YET
        if coding:
            request.setHeader(b"content-encoding", coding)
        if request.method == b"HEAD":
            file.close()
            request.setHeader(b"content-length", b"%d" % info.st_size)
            self._set_type(request)
            return b""
        ranges = request.getHeader(b"range")
        if ranges is not None and not range_applies(
            request.getHeader(b"if-range"), etag, last_modified
        ):
            ranges = None
        self._producer(request, file, info.st_size, ranges, coding).start()
        return server.NOT_DONE_YET

    render_HEAD = render_GET  # noqa: N815 - File's name

    def _representation(
        self, request: IRequest, info: os.stat_result
    ) -> tuple[IO[bytes], os.stat_result, bytes]:
        """
        The file to send, its status and its content coding: a precompressed
        sibling the client accepts, if one exists inside the root and is not
        older than this file (a stale one is skipped), else this file.

        @raise PermissionError: this file cannot be read.
        """
        if self.cache.precompressed and not self.encoding:
            for coding in preferred_codings(request.getHeader(b"accept-encoding")):
                sibling = self.path + _SUFFIXES[coding]
                try:
                    found = os.stat(sibling)
                    if (
                        not stat.S_ISREG(found.st_mode)
                        or found.st_mtime_ns < info.st_mtime_ns
                        or not self._inside(os.path.realpath(sibling))
                    ):
                        continue
                    return open(sibling, "rb"), found, coding  # noqa: SIM115 - FileParts closes it
                except OSError:
                    continue
        return open(self.path, "rb"), info, b""  # noqa: SIM115 - FileParts closes it

    def _set_type(self, request: IRequest) -> None:
        request.setHeader(b"content-type", (self.type or self.defaultType).encode("ascii"))
        if self.encoding:
            request.setHeader(b"content-encoding", self.encoding.encode("ascii"))

    def _producer(
        self,
        request: IRequest,
        file: IO[bytes],
        size: int,
        header: bytes | None,
        coding: bytes,
    ) -> FileParts | FileSender:
        """
        The producer of a response's body, with its status and content
        headers set: the whole file, one range, or several.

        A large body on a plain connection goes by C{sendfile(2)}
        (L{gateway.http.sendfile}); the others are copied.

        Instead of Twisted's producers: its multi-range one reads a whole
        file at once once part headers pass 64 KiB (a negative read size),
        or fails mid-response; and none of them notices a file cut short.

        @param size: the size of the file sent (a compressed sibling's own).
        @param header: the C{Range} value to honour, if any.
        @param coding: the content coding of a precompressed sibling, if sent.
        """
        # Several ranges of compressed bytes would need a multipart body
        # whose parts are encoded but the whole is not: the whole file is
        # sent instead (one range is fine: a 206 of the encoded bytes).
        spans = select_ranges(header, size, 1 if coding else MAX_RANGES)
        consumer = cast(ResponseConsumer, request)
        if spans is None:
            self._set_type(request)
            request.setHeader(b"content-length", b"%d" % size)
            request.setResponseCode(http.OK)
            return file_sender(request, file, 0, size) or FileParts(
                consumer, file, [(0, size)] if size else []
            )
        if not spans:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            request.setHeader(b"content-length", b"0")
            return FileParts(consumer, file, [])
        request.setResponseCode(http.PARTIAL_CONTENT)
        if len(spans) == 1:
            start, stop = spans[0]
            self._set_type(request)
            request.setHeader(b"content-length", b"%d" % (stop - start))
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, stop - 1, size))
            return file_sender(request, file, start, stop) or FileParts(consumer, file, spans)
        multipart = Multipart((self.type or self.defaultType).encode("ascii"), size)
        request.setHeader(b"content-type", multipart.content_type)
        request.setHeader(b"content-length", b"%d" % multipart.length(spans))
        return FileParts(consumer, file, spans, multipart)

    @override
    def listNames(self) -> list[str]:
        names = super().listNames()
        folder = self.path
        return [
            name
            for name in names
            if not _is_hidden(name) and self._inside(os.path.realpath(os.path.join(folder, name)))
        ]

    def _inside(self, real: str) -> bool:
        """
        Whether a resolved path is the root or below it.
        """
        return real == self.root_real or real.startswith(self.root_real + os.sep)

    @override
    def createSimilarFile(self, path: str) -> resource.IResource:
        if not self._inside(os.path.realpath(path)):
            # A symbolic link that leaves the root.
            return self.childNotFound
        return StaticRoot(path, listing=self.listing, root_real=self.root_real, cache=self.cache)

    @override
    def directoryListing(self) -> resource.IResource:
        if self.listing:
            return super().directoryListing()  # type: ignore[no-any-return]
        return self.childNotFound
