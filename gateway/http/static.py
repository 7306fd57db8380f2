"""
The static files of the public HTTP side (C{--http-root}): L{StaticRoot}.

L{StaticRoot} is C{twisted.web.static.File} (content types, HEAD, ranges, files
streamed by a pull producer 64 KiB at a time, so memory stays bounded for any
file size) with the defaults a public server wants:

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
    response body is read from its file 64 KiB at a time, ranges or not;
  - content types come from a pinned table for the common web types (so they
    do not depend on the host's C{/etc/mime.types}), then the host's table,
    and unknown extensions are C{application/octet-stream}, never HTML.
"""

from __future__ import annotations

import os
from typing import IO, cast

from twisted.web import http, pages, resource
from twisted.web.iweb import IRequest
from twisted.web.static import File
from typing_extensions import override

from gateway.http.ranges import FileParts, Multipart, ResponseConsumer, select_ranges

__all__ = ["ALLOWED_METHODS", "WEB_TYPES", "StaticRoot"]

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
    """

    childNotFound = _NOT_FOUND  # type: ignore[assignment]
    contentTypes = {**File.contentTypes, **WEB_TYPES}

    def __init__(self, path: str, *, listing: bool = False, root_real: str | None = None) -> None:
        """
        @param path: the folder (or, for children, the file) this resource serves.
        @param listing: list folders that have no index file.
        @param root_real: the resolved root; L{None} for the root itself.
        """
        super().__init__(path, defaultType="application/octet-stream")
        # Only real HTML index files: File's default list also has "index" and
        # "index.rpy", and this server runs no resource scripts.
        self.indexNames = ["index.html", "index.htm"]
        self.listing = listing
        self.root_real = root_real if root_real is not None else os.path.realpath(path)

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
    def makeProducer(self, request: IRequest, fileForReading: IO[bytes]) -> FileParts:  # noqa: N803
        # Instead of Twisted's producers: its multi-range one reads a whole
        # file at once once part headers pass 64 KiB (a negative read size),
        # or fails mid-response; and none of them notices a file cut short.
        size = self.getFileSize()
        spans = select_ranges(request.getHeader(b"range"), size)
        consumer = cast(ResponseConsumer, request)
        if spans is None:
            self._setContentHeaders(request)
            request.setResponseCode(http.OK)
            return FileParts(consumer, fileForReading, [(0, size)] if size else [])
        if not spans:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            request.setHeader(b"content-length", b"0")
            return FileParts(consumer, fileForReading, [])
        request.setResponseCode(http.PARTIAL_CONTENT)
        if len(spans) == 1:
            start, stop = spans[0]
            self._setContentHeaders(request, stop - start)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, stop - 1, size))
            return FileParts(consumer, fileForReading, spans)
        multipart = Multipart((self.type or "application/octet-stream").encode("ascii"), size)
        request.setHeader(b"content-type", multipart.content_type)
        request.setHeader(b"content-length", b"%d" % multipart.length(spans))
        return FileParts(consumer, fileForReading, spans, multipart)

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
        return StaticRoot(path, listing=self.listing, root_real=self.root_real)

    @override
    def directoryListing(self) -> resource.IResource:
        if self.listing:
            return super().directoryListing()  # type: ignore[no-any-return]
        return self.childNotFound
