"""
The public HTTP side of the front: static files from C{--http-root}, served by
C{twisted.web}.

L{StaticRoot} is C{twisted.web.static.File} (content types, HEAD, ranges, files
streamed by a pull producer 64 KiB at a time, so memory stays bounded for any
file size) with the defaults a public server wants:

  - no folder listing unless asked (C{--http-listing});
  - nothing outside the root: C{..} segments are refused by C{FilePath}, and a
    symbolic link inside the root that resolves outside it is a 404;
  - hidden files (a segment starting with C{.}, such as C{.git} or C{.env})
    are a 404, except C{.well-known}.

L{make_site} builds the C{Site} whose channels the front door attaches to
connections it classified as HTTP.
"""

from __future__ import annotations

import os

from twisted.internet.interfaces import IReactorTime
from twisted.web import pages, resource
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.server import Site
from twisted.web.static import File
from typing_extensions import override

__all__ = ["HTTP_IDLE_DEFAULT", "StaticRoot", "make_site"]

HTTP_IDLE_DEFAULT = 60.0
"""Seconds an HTTP keep-alive connection may sit idle when --idle-timeout is 0."""

_NOT_FOUND = pages.notFound("No Such Resource", "No such file.")


class StaticRoot(File):
    """
    A folder of static files that never serves anything outside its root.

    @ivar root_real: the resolved (symlink-free) path of the root folder.
    @ivar listing: whether folders without an index file are listed.
    """

    childNotFound = _NOT_FOUND  # type: ignore[assignment]

    def __init__(self, path: str, *, listing: bool = False, root_real: str | None = None) -> None:
        """
        @param path: the folder (or, for children, the file) this resource serves.
        @param listing: list folders that have no index file.
        @param root_real: the resolved root; L{None} for the root itself.
        """
        super().__init__(path)
        # Only real HTML index files: File's default list also has "index" and
        # "index.rpy", and this server runs no resource scripts.
        self.indexNames = ["index.html", "index.htm"]
        self.listing = listing
        self.root_real = root_real if root_real is not None else os.path.realpath(path)

    @override
    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        if path.startswith(b".") and path != b".well-known":
            return self.childNotFound
        return super().getChild(path, request)  # type: ignore[no-any-return]

    @override
    def createSimilarFile(self, path: str) -> resource.IResource:
        real = os.path.realpath(path)
        if real != self.root_real and not real.startswith(self.root_real + os.sep):
            # A symbolic link that leaves the root.
            return self.childNotFound
        return StaticRoot(path, listing=self.listing, root_real=self.root_real)

    @override
    def directoryListing(self) -> resource.IResource:
        if self.listing:
            return super().directoryListing()  # type: ignore[no-any-return]
        return self.childNotFound


class _HTTPSite(Site):
    """
    A C{Site} that builds plain HTTP/1.x channels.

    The front door needs the channel itself (not Twisted's generic wrapper that
    can switch to HTTP/2 after TLS ALPN) to finish a response for a client that
    half-closed its side.
    """

    protocol = HTTPChannel  # type: ignore[assignment]
    displayTracebacks = False


def make_site(
    http_root: str | None,
    *,
    listing: bool,
    idle_timeout: float,
    reactor: IReactorTime,
) -> Site:
    """
    Build the public HTTP site.

    @param http_root: the folder to serve, or L{None} to answer 404 to everything.
    @param listing: list folders without an index file.
    @param idle_timeout: seconds a connection may be idle; 0 means the default
        of L{HTTP_IDLE_DEFAULT}.
    @param reactor: the reactor for the channels' timeouts.
    """
    root: resource.IResource
    if http_root is None:
        root = pages.notFound(
            "No Such Resource", "This gateway serves no HTTP content (no --http-root)."
        )
    else:
        root = StaticRoot(http_root, listing=listing)
    return _HTTPSite(root, timeout=idle_timeout or HTTP_IDLE_DEFAULT, reactor=reactor)
