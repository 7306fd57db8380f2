"""
Connection-limit policies: plain objects with one job each, driven by the
caller's clock.

  - L{TotalCap}: at most N connections at once, of every kind.
  - L{AddressCap}: at most N connections at once from one client address.
  - L{AddressRate}: at most R new connections per second from one client
    address, as a token bucket holding up to B tokens (the burst).
  - L{AddressLimits}: several per-address policies together: a connection is
    admitted only if every policy allows it, and then counted by all of them.

Addresses are reduced to a key by L{address_key}: an IPv4 address is its own
key; an IPv6 address counts as its /64 network (one subscriber usually has a
whole /64, so limiting single IPv6 addresses limits nothing); an IPv4-mapped
IPv6 address is the IPv4 address.

Memory is bounded whatever the clients do: L{AddressCap} keeps an entry only
for an address with a live connection (so at most as many entries as
connections), and L{AddressRate} forgets an address once its bucket has
refilled (it is then the same as a new address) and never keeps more than
C{max_entries} addresses, evicting the one that was quiet longest.

In a cluster (C{--cluster}) the limits are decided in Redis
(L{gateway.cluster.admission}), and these objects count this node's own
connections; when Redis does not answer, they decide with each limit divided
by the nodes last seen alive (the C{share} arguments).

These objects do no I/O and read no clock: callers pass C{now}.  The
factories that apply them to connections are in L{gateway.front.admission}.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Sequence
from enum import Enum

from zope.interface import implementer

from gateway.interfaces import IAddressPolicy

__all__ = [
    "RATE_TABLE_SIZE",
    "AddressCap",
    "AddressLimits",
    "AddressRate",
    "Refusal",
    "TotalCap",
    "address_key",
    "default_burst",
]

RATE_TABLE_SIZE = 65536
"""Default bound on the addresses L{AddressRate} remembers at once."""

_CLOCK_SLACK = 1e-6
"""Seconds of refill forgiven to float rounding (a POSIX time is good to ~0.24 us)."""


class Refusal(Enum):
    """
    Why a connection was refused: the closed vocabulary of counters and logs.
    """

    TOTAL_CAP = "total-cap"
    ADDRESS_CAP = "address-cap"
    RATE = "rate"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad-request"
    NO_BACKEND = "no-backend"
    """A game session for which no backend was up (or every attempt failed)."""
    LOCAL_RESOURCES = "local-resources"
    """A game session whose backend connection failed for want of the
    gateway's own resources (file descriptors, buffers, memory, local ports)."""
    WEBSOCKET_HANDSHAKE = "websocket-handshake"
    """A WebSocket upgrade whose handshake is broken (400, or 426 for
    another version of the protocol)."""
    WEBSOCKET_ORIGIN = "origin"
    """A WebSocket upgrade from an origin that may not open sessions (403)."""
    ROUTE_RATE = "route-rate"
    """An HTTP request over its route's C{rate-per-ip} (429)."""
    QUEUE_FULL = "queue-full"
    """A game session no backend could take, with the waiting room full."""
    QUEUE_TIMEOUT = "queue-timeout"
    """A game session that waited C{--queue-timeout} seconds in vain."""
    CLUSTER_CAP = "cluster-cap"
    """A game session beyond the cluster's cap (C{--cluster-max-sessions})."""


def address_key(host: str) -> str:
    """
    The key a client address is limited by.

    @param host: an IPv4 or IPv6 address in text form (anything else, such
        as a UNIX socket name, is its own key).
    @return: the IPv4 address, or the IPv6 /64 network as C{"2001:db8::/64"}.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def default_burst(rate: float) -> float:
    """
    The burst for a rate when none is given: twice the rate, at least 10, so
    that a browser opening several connections at once is not refused.
    """
    return max(10.0, 2.0 * rate)


class TotalCap:
    """
    At most C{limit} connections at once.

    @ivar limit: the cap; 0 means no cap.
    @ivar active: connections counted now.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"a cap cannot be negative: {limit}")
        self.limit = limit
        self.active = 0

    def resize(self, limit: int) -> None:
        """
        A new cap (a reload): the connections counted now stay counted, and
        may be more than the new cap until they end.
        """
        if limit < 0:
            raise ValueError(f"a cap cannot be negative: {limit}")
        self.limit = limit

    @property
    def full(self) -> bool:
        """
        Whether a new connection would exceed the cap.
        """
        return bool(self.limit) and self.active >= self.limit

    def acquire(self) -> None:
        """
        Count a new connection (the caller checked L{full}).
        """
        self.active += 1

    def release(self) -> None:
        """
        A counted connection ended.

        @raise RuntimeError: nothing is counted (a release without acquire).
        """
        if self.active <= 0:
            raise RuntimeError("TotalCap released more often than acquired")
        self.active -= 1


@implementer(IAddressPolicy)
class AddressCap:
    """
    At most C{limit} connections at once from one address key.
    """

    reason = Refusal.ADDRESS_CAP

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a per-address cap must be at least 1: {limit}")
        self.limit = limit
        self._counts: dict[str, int] = {}

    def resize(self, limit: int) -> None:
        """
        A new cap (a reload): the live counts stay, an address over the new
        cap takes no more until its connections end.
        """
        if limit <= 0:
            raise ValueError(f"a per-address cap must be at least 1: {limit}")
        self.limit = limit

    def __len__(self) -> int:
        """
        How many addresses have live connections (the table's size).
        """
        return len(self._counts)

    def count(self, key: str) -> int:
        """
        Live connections from C{key}.
        """
        return self._counts.get(key, 0)

    def counts(self) -> dict[str, int]:
        """
        Live connections by address key (a copy).
        """
        return dict(self._counts)

    def allows(self, key: str, now: float, share: int = 1) -> bool:
        """
        Whether C{key} has fewer live connections than the limit, or than
        this node's C{share} of it (the limit divided by C{share}, at least
        one connection).
        """
        limit = self.limit if share <= 1 else max(1, self.limit // share)
        return self._counts.get(key, 0) < limit

    def acquire(self, key: str, now: float, share: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def release(self, key: str) -> None:
        count = self._counts.get(key, 0)
        if count <= 0:
            raise RuntimeError(f"AddressCap released {key!r} more often than acquired")
        if count == 1:
            del self._counts[key]
        else:
            self._counts[key] = count - 1


@implementer(IAddressPolicy)
class AddressRate:
    """
    At most C{rate} new connections per second from one address key, with
    bursts of up to C{burst} connections (a token bucket per address).

    @ivar evicted: addresses forgotten because the table was full.
    """

    reason = Refusal.RATE

    def __init__(
        self, rate: float, burst: float | None = None, max_entries: int = RATE_TABLE_SIZE
    ) -> None:
        """
        @param rate: tokens added per second.
        @param burst: the bucket's size; L{default_burst} when L{None}.
        @param max_entries: the most addresses remembered at once.
        """
        if not 0 < rate < math.inf:
            raise ValueError(f"a rate must be a finite number more than 0: {rate}")
        burst = default_burst(rate) if burst is None else burst
        if not 1 <= burst < math.inf:
            raise ValueError(f"a burst must be a finite number of at least 1: {burst}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1: {max_entries}")
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self.evicted = 0
        # key -> [tokens, time of the last update]; ordered from the least
        # recently updated, so the quiet (and refilled) ones are at the front.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._refill_time = burst / rate

    def __len__(self) -> int:
        """
        How many addresses are remembered (the table's size).
        """
        return len(self._buckets)

    def tokens(self, key: str, now: float) -> float:
        """
        The tokens C{key} has at C{now} (a full bucket for an unknown key).
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        tokens, stamp = bucket
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def _cost(self, share: int) -> float:
        """
        The tokens one connection takes: C{share} when this node decides
        alone for C{share} nodes (the rate and the burst divided by them),
        at most the whole burst.
        """
        return float(min(max(1, share), self.burst))

    def allows(self, key: str, now: float, share: int = 1) -> bool:
        cost = 1.0 if share <= 1 else self._cost(share)
        return self.tokens(key, now + _CLOCK_SLACK) >= cost

    def acquire(self, key: str, now: float, share: int = 1) -> None:
        self._expire(now)
        cost = 1.0 if share <= 1 else self._cost(share)
        tokens = max(0.0, self.tokens(key, now) - cost)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = [tokens, now]
            if len(self._buckets) >= self.max_entries:
                self._buckets.popitem(last=False)
                self.evicted += 1
        else:
            bucket[0], bucket[1] = tokens, now
        self._buckets[key] = bucket

    def release(self, key: str) -> None:
        """
        Nothing to do: a rate counts arrivals, not live connections.
        """

    def _expire(self, now: float) -> None:
        """
        Forget the addresses whose buckets are full again: they are the same
        as addresses never seen.  The oldest are first, so this stops at the
        first one still refilling.
        """
        buckets = self._buckets
        while buckets:
            key, (_tokens, stamp) = next(iter(buckets.items()))
            if now - stamp < self._refill_time:
                break
            del buckets[key]


class AddressLimits:
    """
    Several per-address policies applied together.
    """

    def __init__(self, policies: Sequence[IAddressPolicy]) -> None:
        self.policies = tuple(policies)

    def admit(self, key: str, now: float, share: int = 1) -> Refusal | None:
        """
        Admit a new connection from C{key} if every policy allows it.

        @param share: the number of nodes whose limits this node applies
            alone (its share of each limit is the limit divided by them).
        @return: L{None} when admitted (then every policy counts it), else the
            reason of the first policy that refused (then nothing is counted).
        """
        policies = self.policies
        if share > 1:
            return self._admit_share(key, now, share)
        for policy in policies:
            if not policy.allows(key, now):
                reason: Refusal = policy.reason
                return reason
        for policy in policies:
            policy.acquire(key, now)
        return None

    def _admit_share(self, key: str, now: float, share: int) -> Refusal | None:
        """
        L{admit} for a node deciding alone for C{share} nodes (a policy of
        one's own may not take a share: it is passed only when there is one,
        off the common path).
        """
        for policy in self.policies:
            if not policy.allows(key, now, share):
                reason: Refusal = policy.reason
                return reason
        for policy in self.policies:
            policy.acquire(key, now, share)
        return None

    def count(self, key: str, now: float) -> None:
        """
        Count a connection from C{key} that was admitted elsewhere (by the
        cluster's shared limits), without checking.
        """
        for policy in self.policies:
            policy.acquire(key, now)

    def shape(self) -> tuple[int, float, float]:
        """
        The limits as numbers: the per-address cap (0: none), the rate and
        its burst (0: no rate).
        """
        cap, rate, burst = 0, 0.0, 0.0
        for policy in self.policies:
            if isinstance(policy, AddressCap):
                cap = policy.limit
            elif isinstance(policy, AddressRate):
                rate, burst = policy.rate, policy.burst
        return cap, rate, burst

    @property
    def address_cap(self) -> AddressCap | None:
        """
        The per-address cap among the policies, if any.
        """
        for policy in self.policies:
            if isinstance(policy, AddressCap):
                return policy
        return None

    def counts(self) -> dict[str, int]:
        """
        This node's live connections by address key (empty without a cap).
        """
        cap = self.address_cap
        return cap.counts() if cap is not None else {}

    def release(self, key: str) -> None:
        """
        An admitted connection from C{key} ended.
        """
        for policy in self.policies:
            policy.release(key)
