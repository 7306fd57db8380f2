"""
Which precompressed sibling of a static file a client gets: the
C{Accept-Encoding} negotiation (RFC 9110 section 12.5.3), pure.

An operator who builds C{app.js.br} and C{app.js.gz} next to C{app.js}
(C{brotli -k}, C{gzip -k}, or the game's bundler) gets them served to the
clients that accept them, with no compression work in the gateway.  The
codings tried are L{SIBLINGS}, Brotli first (smaller) when a client
accepts both equally.
"""

from __future__ import annotations

__all__ = ["SIBLINGS", "preferred_codings"]

SIBLINGS: tuple[tuple[bytes, str], ...] = ((b"br", ".br"), (b"gzip", ".gz"))
"""The content codings served from siblings, with their file suffixes, in
the order preferred among equals."""

_ALIASES = {b"x-gzip": b"gzip"}
"""Codings named otherwise in old clients (RFC 9110 section 8.4.1.3)."""


def _quality(params: list[bytes]) -> float:
    """
    A coding's C{q} weight (1 when absent; 0 when it does not parse, so a
    malformed weight never selects a coding).
    """
    for param in params:
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def preferred_codings(accept_encoding: bytes | None) -> list[bytes]:
    """
    The codings of L{SIBLINGS} this client accepts, best first: by C{q}
    weight, then in L{SIBLINGS}' order.  A coding with C{q=0} is refused; a
    coding not named takes C{*}'s weight, if C{*} is named; no header:
    none (identity only, RFC 9110 section 12.5.3).

    @param accept_encoding: the request's C{Accept-Encoding} value.
    """
    if not accept_encoding:
        return []
    weights: dict[bytes, float] = {}
    for item in accept_encoding.split(b","):
        name, *params = item.split(b";")
        coding = name.strip(b" \t").lower()
        if coding:
            coding = _ALIASES.get(coding, coding)
            # The highest weight given wins if a coding is named twice.
            weights[coding] = max(weights.get(coding, 0.0), _quality(params))
    star = weights.get(b"*", 0.0)
    ranked = [
        (-weights.get(coding, star), order, coding)
        for order, (coding, _suffix) in enumerate(SIBLINGS)
    ]
    return [coding for weight, _order, coding in sorted(ranked) if weight < 0]
