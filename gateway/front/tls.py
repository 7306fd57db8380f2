"""
TLS on a C{tls:CERTDIR:port=N} front: the endpoint string, and the OpenSSL
connections that choose their certificate by the server name the client sends.

The gateway parses C{tls:} front strings itself instead of through Twisted's
C{tls:} endpoint parser, whose PEM-folder loader (C{twisted.protocols._sni})
never returns for a folder holding a root certificate, re-reads the whole
folder in the reactor thread at every handshake with an unknown name, and
fails every client that offers ALPN (it answers no protocol, which OpenSSL
turns into an "internal error" alert).  Here:

 - L{parse_tls_front} reads the string with the arguments of Twisted's
   (C{tls:PATH[:port=443][:backlog=50][:interface=::]}, escapes included);
 - L{SNICertificates} is the connection creator: the folder is read by
   L{gateway.front.pemfolder.load_folder} at start and on L{SNICertificates.reload}
   (SIGHUP), never during a handshake; each certificate has one OpenSSL
   context; a handshake starts on the default one (the folder's first
   certificate) and switches by server name (exact, then C{*.} wildcard).
   An unknown name keeps the default certificate, as Twisted's does, and is
   logged sampled by L{UnknownNames};
 - ALPN: L{select_protocol} picks C{http/1.1} (or C{http/1.0}) when the
   client offers it, and otherwise negotiates no protocol (the handshake
   goes on), so game clients, with or without ALPN, connect as before.
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from OpenSSL.SSL import NO_OVERLAPPING_PROTOCOLS, Connection, Context
from twisted.internet.endpoints import TCP6ServerEndpoint, _parse, wrapServerTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from gateway.front.pemfolder import CertificateFolder, FolderError, ServerCertificate, load_folder

__all__ = [
    "ALPN_PROTOCOLS",
    "SNICertificates",
    "TLSFront",
    "UnknownNames",
    "is_tls_front",
    "parse_tls_front",
    "printable_name",
    "select_protocol",
    "tls_front_endpoint",
]

ALPN_PROTOCOLS = (b"http/1.1", b"http/1.0")
"""What the front answers to a client's ALPN offer, in order of preference:
only what the gateway's HTTP channel speaks (no C{h2})."""

TLS_PREFIX = "tls:"

NAME_LIMIT = 64
"""Bytes of a client's server name shown in a log line."""


def is_tls_front(description: str) -> bool:
    """
    Whether a front's endpoint string (without its C{haproxy:} prefix) is a
    C{tls:} one.
    """
    return description.startswith(TLS_PREFIX)


@dataclass(frozen=True, slots=True)
class TLSFront:
    """
    A parsed C{tls:} front.

    @ivar folder: the PEM folder, absolute.
    @ivar port: the TCP port.
    @ivar backlog: the listen queue's length, if the string gives one.
    @ivar interface: the address to bind (IPv6 syntax; C{::} is every address).
    """

    folder: str
    port: int
    backlog: int | None
    interface: str


def _front(
    path: str, port: str = "443", backlog: str | None = None, interface: str = "::"
) -> TLSFront:
    queue = int(backlog) if backlog is not None else None
    return TLSFront(os.path.abspath(path), int(port), queue, interface)


def parse_tls_front(description: str) -> TLSFront:
    """
    Parse C{tls:PATH[:port=N][:backlog=N][:interface=ADDRESS]} (the arguments
    of Twisted's C{tls:} server endpoint, which may be given by position too).

    @raise ValueError: it does not parse; the message says why.
    """
    args, kwargs = _parse(description)
    if not args or args[0] != "tls" or len(args) < 2 or not args[1]:
        raise ValueError("expected tls:FOLDER[:port=N][:interface=ADDRESS]")
    try:
        return _front(*args[1:], **kwargs)
    except TypeError as error:
        raise ValueError(str(error).replace("_front()", "tls:")) from None


def printable_name(name: bytes, limit: int = NAME_LIMIT) -> str:
    """
    A client's server name for a log line: quoted, every byte but printable
    ASCII escaped (so it cannot end the line or fake a quote), and cut at
    C{limit} bytes.
    """
    shown = "".join(
        chr(byte) if 0x21 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}"
        for byte in name[:limit]
    )
    more = f" (+{len(name) - limit} bytes)" if len(name) > limit else ""
    return f'"{shown}"{more}'


def select_protocol(connection: Connection, offered: Sequence[bytes]) -> Any:
    """
    The ALPN choice: the first of L{ALPN_PROTOCOLS} the client offers, or
    none (the handshake goes on without an application protocol).
    """
    for protocol in ALPN_PROTOCOLS:
        if protocol in offered:
            return protocol
    return NO_OVERLAPPING_PROTOCOLS


class UnknownNames:
    """
    Handshakes naming a server the folder has no certificate for: each is
    counted; the first C{burst} of a window of C{window} seconds are logged
    one by one, the rest tallied by name (at most L{TRACKED} names) and
    summed up in one line when the window ends.

    @ivar count: such handshakes since start.
    """

    TRACKED = 1000
    """Distinct names tallied per window; the rest are "others"."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        front: str,
        *,
        window: float = 10.0,
        burst: int = 5,
        top: int = 5,
    ) -> None:
        """
        @param front: the front, as logged.
        """
        self._clock = clock
        self.front = front
        self.window = window
        self.burst = burst
        self.top = top
        self.count = 0
        self._logged = 0
        self._tally: Counter[str] = Counter()
        self._others = 0
        self._flush_call: IDelayedCall | None = None

    def seen(self, name: bytes, default: str) -> None:
        """
        One handshake for C{name}, answered with the certificate of C{default}.
        """
        self.count += 1
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(self.window, self._flush)
        if self._logged < self.burst:
            self._logged += 1
            self._log.warn(
                "{front}: no certificate for the server name {name}: "
                "answered with the default one ({default})",
                front=self.front,
                name=printable_name(name),
                default=default,
            )
            return
        shown = printable_name(name)
        if shown in self._tally or len(self._tally) < self.TRACKED:
            self._tally[shown] += 1
        else:
            self._others += 1

    def _flush(self) -> None:
        self._flush_call = None
        count = sum(self._tally.values()) + self._others
        if count:
            most = ", ".join(f"{shown} ({n})" for shown, n in self._tally.most_common(self.top))
            self._log.warn(
                "{front}: {count} more handshakes for unknown server names in the last "
                "{window:g} s without logging each; most: {most}",
                front=self.front,
                count=count,
                window=self.window,
                most=most + (f", others ({self._others})" if self._others else ""),
            )
        self._logged = 0
        self._tally.clear()
        self._others = 0


def _context(server: ServerCertificate) -> Context:
    """
    An OpenSSL context serving C{server}, with Twisted's defaults (protocol
    versions, ciphers, curves, sessions).
    """
    # Twisted's options without a certificate, which they would want as
    # pyOpenSSL objects (deprecated); pyOpenSSL takes cryptography's.
    context: Context = CertificateOptions().getContext()
    context.use_certificate(server.certificate)
    context.use_privatekey(cast(Any, server.key))
    for above in server.chain:
        context.add_extra_chain_cert(above)
    context.check_privatekey()
    # Replaces Twisted's ALPN callback, which answers "no protocol" as an
    # error unless the wrapped factory provides IProtocolNegotiationFactory.
    context.set_alpn_select_callback(select_protocol)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class SNICertificates:
    """
    The connection creator of a C{tls:} front: certificates by server name.

    @ivar folder: what is served now.
    """

    _log = Logger()

    def __init__(self, folder: CertificateFolder, unknown: UnknownNames) -> None:
        """
        @param folder: the certificates to serve.
        @param unknown: where handshakes for unknown names are counted.
        """
        self.unknown = unknown
        self.use(folder)

    def use(self, folder: CertificateFolder) -> None:
        """
        Serve C{folder} from now on (handshakes under way finish with what
        they had).
        """
        contexts = {id(server): _context(server) for server in folder.servers}
        for context in contexts.values():
            context.set_tlsext_servername_callback(self._server_name)
        self._by_name = {name: contexts[id(server)] for name, server in folder.by_name.items()}
        self._default = contexts[id(folder.servers[0])]
        self.folder = folder

    def reload(self, now: datetime.datetime, *, quiet: bool = False) -> str:
        """
        Read the folder again; if it cannot be served, keep the certificates
        served now and log why (one line).

        @param now: the time certificates must be valid at.
        @param quiet: do not log a folder that cannot be served (a worker
            process: its acceptor, which read the same folder, logs it).
        @return: what happened, in words, for the reload's summary.
        """
        path = self.folder.path
        try:
            folder = load_folder(path, now)
        except FolderError as error:
            if quiet:
                return f"certificates of {self.unknown.front} kept: {error}"
            self._log.error(
                "{front}: the certificates stay as they were: {error}",
                front=self.unknown.front,
                error=str(error),
            )
            return f"certificates of {self.unknown.front} kept (see the error above)"
        self.use(folder)
        return f"certificates of {self.unknown.front} read again ({len(folder.servers)})"

    def serverConnectionForTLS(self, protocol: object) -> Connection:  # noqa: N802 - Twisted's
        """
        A server connection on the default certificate; the client's server
        name may switch it (see L{_server_name}).
        """
        return Connection(self._default)

    def _server_name(self, connection: Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        context = self.lookup(raw)
        if context is None:
            self.unknown.seen(raw, self.folder.servers[0].path)
        else:
            connection.set_context(context)

    def lookup(self, raw: bytes) -> Context | None:
        """
        The context for the server name C{raw}: its own, else its C{*.}
        wildcard's, else L{None}.
        """
        try:
            name = raw.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            return None
        found = self._by_name.get(name)
        if found is None and "." in name:
            found = self._by_name.get("*." + name.split(".", 1)[1])
        return found


def tls_front_endpoint(
    reactor: Any, description: str, clock: IReactorTime, *, backlog: int = 50
) -> tuple[IStreamServerEndpoint, SNICertificates]:
    """
    The endpoint of a C{tls:} front and its connection creator (the folder
    read now).

    @param description: the C{tls:} string (without C{haproxy:}).
    @param backlog: the listen queue, unless the string gives one.
    @raise ValueError: the string does not parse.
    @raise FolderError: the folder cannot be served.
    """
    front = parse_tls_front(description)
    now = datetime.datetime.fromtimestamp(clock.seconds(), datetime.UTC)
    creator = SNICertificates(load_folder(front.folder, now), UnknownNames(clock, description))
    endpoint = wrapServerTLS(
        creator,
        TCP6ServerEndpoint(
            reactor,
            front.port,
            front.backlog if front.backlog is not None else backlog,
            front.interface,
        ),
    )
    return endpoint, creator
