"""
Tests for L{gateway.front.limits}: the connection-limit policies and the address key.

Every test is synchronous and reads no real clock.  Time is the C{now} the
policies are given: a plain float, or the C{seconds()} of a
L{twisted.internet.task.Clock} that a test advances, as the factories that
apply these policies will read their reactor.  The policies are checked by
example and, for the counting and the token bucket, by hypothesis against a
simple model of what they promise.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, defaultdict

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.front.limits import (
    RATE_TABLE_SIZE,
    AddressCap,
    AddressLimits,
    AddressRate,
    Refusal,
    TotalCap,
    address_key,
    default_burst,
)
from gateway.interfaces import IAddressPolicy

CLOCK_SLACK = 1e-6
"""
Seconds by which an admission may come early when the bucket is compared
with a model: C{(now - stamp) * rate} is float arithmetic, and a policy may
forgive up to a microsecond of refill to rounding (a POSIX time as a float is
only good to about 0.24 microseconds), as the fix proposed for
L{test_address_rate_refill_exact_at_any_instant} does.
"""


def connect(policy: IAddressPolicy, key: str, now: float) -> bool:
    """
    Count a connection from C{key} at C{now} if C{policy} allows it, as
    L{AddressLimits.admit} does for a single policy.

    @return: whether the connection was admitted.
    """
    if policy.allows(key, now):
        policy.acquire(key, now)
        return True
    return False


def admitted_in_a_row(policy: IAddressPolicy, key: str, now: float, tries: int = 1000) -> int:
    """
    How many connections from C{key} C{policy} admits at C{now}, one after
    the other, before the first refusal (at most C{tries}).
    """
    for count in range(tries):
        if not connect(policy, key, now):
            return count
    return tries


# address_key


def test_ipv4_is_its_own_key() -> None:
    """
    An IPv4 address is limited by itself.
    """
    assert address_key("10.0.0.1") == "10.0.0.1"
    assert address_key("192.0.2.200") == "192.0.2.200"


def test_ipv6_same_64_shares_a_key() -> None:
    """
    Two IPv6 addresses in one /64, written in any form, share one key: the
    /64 network.
    """
    keys = {
        address_key("2001:db8:1:2::1"),
        address_key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
        address_key("2001:0db8:0001:0002:0000:0000:0000:0001"),
        address_key("2001:DB8:1:2:a:b:c:d"),
    }
    assert keys == {"2001:db8:1:2::/64"}


def test_ipv6_different_64s_have_different_keys() -> None:
    """
    IPv6 addresses in neighbouring /64s have different keys, even when they
    differ only in the last bit of the prefix.
    """
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"


@settings(max_examples=200)
@given(
    st.ip_addresses(v=6),
    st.integers(min_value=0, max_value=2**64 - 1),
)
def test_ipv6_key_is_the_64(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, host: int
) -> None:
    """
    The key of any (non-mapped) IPv6 address is its /64 network, and every
    other (non-mapped) address of that /64 has the same key.  (C{::/64}
    holds the IPv4-mapped block C{::ffff:0:0/96}, whose addresses are keyed
    as IPv4 instead.)
    """
    assert isinstance(address, ipaddress.IPv6Address)
    assume(address.ipv4_mapped is None)
    network = ipaddress.IPv6Network((address, 64), strict=False)
    neighbour = ipaddress.IPv6Address(int(network.network_address) + host)
    assume(neighbour.ipv4_mapped is None)
    assert address_key(str(address)) == str(network)
    assert address_key(str(neighbour)) == address_key(str(address))
    assert address_key(address.exploded) == address_key(address.compressed)


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    """
    An IPv4-mapped IPv6 address (what a dual-stack socket reports for an IPv4
    client) is limited as that IPv4 address, together with the plain form.
    """
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("::ffff:a00:1") == "10.0.0.1"
    assert address_key("::ffff:10.0.0.1") == address_key("10.0.0.1")


def test_scoped_ipv6_drops_the_zone() -> None:
    """
    A scoped IPv6 address (C{fe80::1%eth0}) is keyed by its /64 without the
    zone, like the same address unscoped.
    """
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("fe80::1%eth0") == address_key("fe80::1")
    assert address_key("fe80::1%eth0") == address_key("fe80::2%eth1")


@pytest.mark.parametrize(
    "host",
    ["/run/gateway.sock", "", "example.com", "10.0.0.256", "2001:db8::g", "localhost%eth0"],
)
def test_non_ip_is_its_own_key(host: str) -> None:
    """
    Anything that is not an IP address (a UNIX socket name, a hostname, a
    malformed address) is its own key, unchanged.
    """
    assert address_key(host) == host


# TotalCap


def test_total_cap_zero_is_never_full() -> None:
    """
    A cap of 0 means no cap: however many connections are counted, it is
    never full.
    """
    cap = TotalCap(0)
    for _ in range(10_000):
        assert not cap.full
        cap.acquire()
    assert cap.active == 10_000
    assert not cap.full


def test_total_cap_full_at_limit() -> None:
    """
    A cap of N is full exactly when N connections are counted, and no longer
    full once one of them is released.
    """
    cap = TotalCap(3)
    for active in range(3):
        assert cap.active == active
        assert not cap.full
        cap.acquire()
    assert cap.active == 3
    assert cap.full
    cap.release()
    assert cap.active == 2
    assert not cap.full


def test_total_cap_release_below_zero_raises() -> None:
    """
    Releasing more often than acquiring raises L{RuntimeError} and leaves the
    count at 0.
    """
    cap = TotalCap(2)
    with pytest.raises(RuntimeError):
        cap.release()
    cap.acquire()
    cap.release()
    with pytest.raises(RuntimeError):
        cap.release()
    assert cap.active == 0


def test_total_cap_negative_limit_rejected() -> None:
    """
    A negative cap is refused with L{ValueError}.
    """
    with pytest.raises(ValueError):
        TotalCap(-1)


# AddressCap


def test_address_cap_provides_policy() -> None:
    """
    L{AddressCap} provides L{IAddressPolicy} and refuses with
    L{Refusal.ADDRESS_CAP}.
    """
    cap = AddressCap(1)
    assert verifyObject(IAddressPolicy, cap)
    assert cap.reason is Refusal.ADDRESS_CAP


def test_address_cap_counts_per_key() -> None:
    """
    Each key may have up to C{limit} live connections; the next is refused
    while other keys are unaffected.
    """
    cap = AddressCap(2)
    assert admitted_in_a_row(cap, "10.0.0.1", 0.0) == 2
    assert cap.count("10.0.0.1") == 2
    assert not cap.allows("10.0.0.1", 0.0)
    assert cap.count("10.0.0.2") == 0
    assert cap.allows("10.0.0.2", 0.0)
    assert admitted_in_a_row(cap, "10.0.0.2", 0.0) == 2
    assert cap.count("10.0.0.1") == 2
    assert len(cap) == 2


def test_address_cap_release_frees_a_slot() -> None:
    """
    Releasing one of a full key's connections allows one more, and the
    count follows.
    """
    cap = AddressCap(2)
    admitted_in_a_row(cap, "k", 0.0)
    cap.release("k")
    assert cap.count("k") == 1
    assert cap.allows("k", 0.0)


def test_address_cap_forgets_a_key_at_zero() -> None:
    """
    A key is kept only while it has live connections: its entry goes once
    its count is back to 0, so the table is never larger than the number of
    addresses connected.
    """
    cap = AddressCap(3)
    cap.acquire("a", 0.0)
    cap.acquire("a", 0.0)
    cap.acquire("b", 0.0)
    assert len(cap) == 2
    cap.release("a")
    assert len(cap) == 2
    cap.release("a")
    assert len(cap) == 1
    assert cap.count("a") == 0
    cap.release("b")
    assert len(cap) == 0


def test_address_cap_release_without_acquire_raises() -> None:
    """
    Releasing a key with no live connection raises L{RuntimeError} and adds
    no entry for it.
    """
    cap = AddressCap(1)
    with pytest.raises(RuntimeError):
        cap.release("never-seen")
    cap.acquire("k", 0.0)
    cap.release("k")
    with pytest.raises(RuntimeError):
        cap.release("k")
    assert len(cap) == 0
    assert cap.count("k") == 0


@pytest.mark.parametrize("limit", [0, -1])
def test_address_cap_limit_must_be_positive(limit: int) -> None:
    """
    A per-address cap below 1 is refused with L{ValueError}: it would refuse
    everyone.
    """
    with pytest.raises(ValueError):
        AddressCap(limit)


_cap_steps = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=0, max_value=3), st.integers(min_value=0)),
    max_size=60,
)


@settings(max_examples=150)
@given(st.integers(min_value=1, max_value=4), _cap_steps)
def test_address_cap_counts_live_connections(
    limit: int, steps: list[tuple[bool, int, int]]
) -> None:
    """
    For any interleaving of connects (admitted only when the cap allows) and
    disconnects of live connections across a few keys: a connect is allowed
    exactly when its key has fewer than C{limit} live connections, each
    count equals its key's live connections (never negative, never above
    the limit), C{len()} is the number of keys with live connections, and
    after everyone disconnects the table is empty.
    """
    cap = AddressCap(limit)
    live: Counter[str] = Counter()
    connections: list[str] = []
    for is_connect, key_index, pick in steps:
        if is_connect or not connections:
            key = f"10.0.0.{key_index}"
            assert cap.allows(key, 0.0) == (live[key] < limit)
            if connect(cap, key, 0.0):
                live[key] += 1
                connections.append(key)
        else:
            key = connections.pop(pick % len(connections))
            cap.release(key)
            live[key] -= 1
        for index in range(4):
            key = f"10.0.0.{index}"
            assert 0 <= cap.count(key) == live[key] <= limit
        assert len(cap) == sum(1 for count in live.values() if count > 0)
    for key in connections:
        cap.release(key)
    assert len(cap) == 0


# AddressRate


def test_address_rate_provides_policy() -> None:
    """
    L{AddressRate} provides L{IAddressPolicy} and refuses with
    L{Refusal.RATE}.
    """
    rate = AddressRate(1)
    assert verifyObject(IAddressPolicy, rate)
    assert rate.reason is Refusal.RATE


@pytest.mark.parametrize(("burst", "admitted"), [(1, 1), (3, 3), (10, 10), (2.5, 2)])
def test_address_rate_new_key_gets_burst(burst: float, admitted: int) -> None:
    """
    A new key starts with a full bucket: C{burst} connections (its whole
    part) are admitted at once, then the next is refused.
    """
    rate = AddressRate(1, burst=burst)
    assert rate.tokens("k", 0.0) == burst
    assert admitted_in_a_row(rate, "k", 0.0) == admitted
    assert not rate.allows("k", 0.0)


@pytest.mark.parametrize("per_second", [0.25, 0.5, 1, 2, 4, 8, 64])
def test_address_rate_refills_one_per_interval(per_second: float) -> None:
    """
    Once a key's burst is spent, exactly one more connection is admitted
    after C{1/rate} seconds (none just before), and one more for each
    further C{1/rate} seconds.  The rates are powers of two so that the
    clock's sums are exact; L{test_address_rate_refill_exact_at_any_instant}
    shows what rounding does to other rates.
    """
    clock = Clock()
    rate = AddressRate(per_second, burst=3)
    assert admitted_in_a_row(rate, "k", clock.seconds()) == 3
    interval = 1 / per_second
    assert not rate.allows("k", clock.seconds() + interval * 0.999)
    clock.advance(interval)
    assert admitted_in_a_row(rate, "k", clock.seconds()) == 1
    clock.advance(interval * 2)
    assert admitted_in_a_row(rate, "k", clock.seconds()) == 2


@pytest.mark.parametrize(
    ("per_second", "start"),
    [(3, 1.0), (5, 1.0), (7, 1000.0), (10, 1_700_000_000.0), (100, 1000.0)],
)
def test_address_rate_refill_exact_at_any_instant(per_second: float, start: float) -> None:
    """
    The refill does not depend on when the clock started: a key that spent
    its burst at any instant gets its next token when the clock has advanced
    by C{1/rate} seconds, including on a clock at a present-day POSIX time.
    """
    clock = Clock()
    clock.advance(start)
    rate = AddressRate(per_second, burst=1)
    assert connect(rate, "k", clock.seconds())
    clock.advance(1 / per_second)
    assert rate.allows("k", clock.seconds())


def test_address_rate_tokens_capped_at_burst() -> None:
    """
    However long a key stays quiet, its bucket holds at most C{burst}
    tokens: after a long pause it gets one burst, not the pause's worth.
    """
    clock = Clock()
    rate = AddressRate(2, burst=4)
    assert admitted_in_a_row(rate, "k", clock.seconds()) == 4
    clock.advance(1.0)
    assert rate.tokens("k", clock.seconds()) == 2
    clock.advance(3600.0)
    assert rate.tokens("k", clock.seconds()) == 4
    assert admitted_in_a_row(rate, "k", clock.seconds()) == 4


@pytest.mark.parametrize(
    ("per_second", "burst"), [(0.1, 10), (1, 10), (5, 10), (6, 12), (100, 200), (7.5, 15)]
)
def test_default_burst(per_second: float, burst: float) -> None:
    """
    Without an explicit burst, the burst is twice the rate and at least 10,
    and L{AddressRate} uses it; an explicit burst wins.
    """
    assert default_burst(per_second) == burst
    assert AddressRate(per_second).burst == burst
    assert AddressRate(per_second, burst=2).burst == 2


def test_address_rate_default_table_size() -> None:
    """
    Without an explicit bound, the table holds L{RATE_TABLE_SIZE} addresses.
    """
    assert AddressRate(1).max_entries == RATE_TABLE_SIZE


def test_address_rate_forgets_a_refilled_key() -> None:
    """
    A key whose bucket has refilled (C{burst/rate} seconds after its last
    connection) is forgotten by the next acquire of any key, since expiry
    runs there; until then it is remembered.
    """
    clock = Clock()
    rate = AddressRate(1, burst=2)
    rate.acquire("a", clock.seconds())
    clock.advance(1.5)
    rate.acquire("b", clock.seconds())
    assert len(rate) == 2
    clock.advance(0.5)
    # "a" has refilled now, but only an acquire expires entries.
    assert rate.allows("b", clock.seconds())
    assert len(rate) == 2
    rate.acquire("c", clock.seconds())
    assert len(rate) == 2
    clock.advance(2.0)
    rate.acquire("d", clock.seconds())
    assert len(rate) == 1


def test_address_rate_forgotten_key_is_like_new() -> None:
    """
    A key forgotten after refilling behaves exactly like a key never seen:
    the same admissions and the same tokens through the same sequence of
    connections.
    """
    clock = Clock()
    rate = AddressRate(1, burst=3)
    assert admitted_in_a_row(rate, "old", clock.seconds()) == 3
    clock.advance(3.0)
    rate.acquire("other", clock.seconds())
    assert len(rate) == 1

    fresh = AddressRate(1, burst=3)
    for advance in [0.0, 0.0, 0.0, 0.0, 0.4, 0.6, 0.0, 1.0, 5.0, 0.0]:
        clock.advance(advance)
        now = clock.seconds()
        assert rate.tokens("old", now) == fresh.tokens("old", now)
        assert connect(rate, "old", now) == connect(fresh, "old", now)


def test_address_rate_keys_are_independent() -> None:
    """
    Spending one key's bucket, and being refused on it, does not change
    another key's tokens.
    """
    rate = AddressRate(1, burst=3)
    assert admitted_in_a_row(rate, "a", 0.0) == 3
    for _ in range(10):
        assert not connect(rate, "a", 0.0)
    assert rate.tokens("b", 0.0) == 3
    assert admitted_in_a_row(rate, "b", 0.0) == 3


def test_address_rate_table_is_bounded() -> None:
    """
    With C{max_entries=1000}, 100,000 distinct keys at one instant (none
    can have refilled) never make the table hold more than 1000 keys: each
    new key past the 1000th evicts the quietest, 99,000 evictions in all.
    """
    rate = AddressRate(1, max_entries=1000)
    for index in range(100_000):
        assert connect(rate, f"k{index}", 0.0)
        assert len(rate) <= 1000
    assert len(rate) == 1000
    assert rate.evicted == 99_000


@pytest.mark.parametrize(
    "arguments",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": 1, "burst": 0.5},
        {"rate": 1, "burst": 0},
        {"rate": 1, "burst": -1},
        {"rate": 1, "max_entries": 0},
        {"rate": 1, "max_entries": -1},
    ],
)
def test_address_rate_invalid_arguments(arguments: dict[str, float]) -> None:
    """
    A rate of 0 or less, a burst under 1 (nobody could ever connect) or a
    table of no entries is refused with L{ValueError}.
    """
    with pytest.raises(ValueError):
        AddressRate(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "arguments",
    [
        {"rate": math.nan},
        {"rate": math.inf},
        {"rate": 1, "burst": math.nan},
        {"rate": 1, "burst": math.inf},
    ],
)
def test_address_rate_non_finite_arguments(arguments: dict[str, float]) -> None:
    """
    A rate or burst that is not a finite number (NaN or infinity) is refused
    with L{ValueError}, as C{check_rate} refuses it on the command line,
    rather than building a policy that limits nothing.
    """
    with pytest.raises(ValueError):
        AddressRate(**arguments)  # type: ignore[arg-type]


_rate_steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),
        st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=3.0)),
    ),
    max_size=80,
)


@settings(max_examples=150)
@given(
    st.floats(min_value=0.1, max_value=20.0),
    st.one_of(st.none(), st.floats(min_value=1.0, max_value=8.0)),
    _rate_steps,
)
def test_address_rate_is_a_token_bucket(
    per_second: float, burst: float | None, steps: list[tuple[int, float]]
) -> None:
    """
    For any sequence of (key, time advance) with a connection attempted at
    each step: for each key, the connections admitted in any window
    [t, t + T] number at most C{burst + rate * T} (over the whole run too);
    a refusal happens only when an exact token bucket would hold less than
    one token; tokens stay in [0, burst].  Both comparisons allow
    L{CLOCK_SLACK} of rounding per admission.  The table is large enough here
    that nothing is evicted (eviction resets a key, by design: see
    L{test_address_rate_small_table}); forgetting refilled keys is allowed,
    and must change nothing.
    """
    clock = Clock()
    rate = AddressRate(per_second, burst)
    size = rate.burst
    slack = per_second * CLOCK_SLACK
    model: dict[str, tuple[float, float]] = {}
    admissions: defaultdict[str, list[float]] = defaultdict(list)
    for key_index, advance in steps:
        clock.advance(advance)
        now = clock.seconds()
        key = f"k{key_index}"
        tokens, stamp = model.get(key, (size, now))
        tokens = min(size, tokens + (now - stamp) * per_second)
        if connect(rate, key, now):
            assert tokens >= 1 - slack
            admissions[key].append(now)
            tokens -= 1
        else:
            assert tokens < 1 + slack
        model[key] = (tokens, now)
        for index in range(3):
            assert 0 <= rate.tokens(f"k{index}", now) <= size
        assert len(rate) <= 3
    assert rate.evicted == 0
    for times in admissions.values():
        for first in range(len(times)):
            for last in range(first, len(times)):
                window = times[last] - times[first]
                count = last - first + 1
                assert count <= size + per_second * (window + count * CLOCK_SLACK)


@settings(max_examples=100)
@given(
    st.integers(min_value=1, max_value=3),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=6), st.floats(min_value=0.0, max_value=2.0)),
        max_size=60,
    ),
)
def test_address_rate_small_table(max_entries: int, steps: list[tuple[int, float]]) -> None:
    """
    With more keys than the table holds, the table never exceeds
    C{max_entries}, tokens stay in [0, burst] for every key, and every
    eviction is counted (the table's size plus evictions plus expiries
    account for every new entry).
    """
    clock = Clock()
    rate = AddressRate(1, burst=2, max_entries=max_entries)
    for key_index, advance in steps:
        clock.advance(advance)
        now = clock.seconds()
        evicted = rate.evicted
        before = len(rate)
        connect(rate, f"k{key_index}", now)
        assert len(rate) <= max_entries
        assert rate.evicted - evicted in (0, 1)
        if rate.evicted > evicted:
            assert before == max_entries
        for index in range(7):
            assert 0 <= rate.tokens(f"k{index}", now) <= 2


# AddressLimits


@implementer(IAddressPolicy)
class Recorder:
    """
    A policy that allows what it is told and records every call, to see
    what L{AddressLimits} does with each of its policies.
    """

    reason = Refusal.TIMEOUT

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.calls: list[tuple[str, str]] = []

    def allows(self, key: str, now: float, share: int = 1) -> bool:
        """
        Record the question and answer C{allow}.
        """
        self.calls.append(("allows", key))
        return self.allow

    def acquire(self, key: str, now: float, share: int = 1) -> None:
        """
        Record the count.
        """
        self.calls.append(("acquire", key))

    def release(self, key: str) -> None:
        """
        Record the release.
        """
        self.calls.append(("release", key))


def test_recorder_provides_policy() -> None:
    """
    The recording policy used below is a true L{IAddressPolicy}.
    """
    assert verifyObject(IAddressPolicy, Recorder())


def test_address_limits_admits_when_all_allow() -> None:
    """
    When every policy allows, the connection is admitted (L{None}) and every
    policy counts it.
    """
    cap, rate = AddressCap(2), AddressRate(1, burst=5)
    limits = AddressLimits([cap, rate])
    assert limits.admit("k", 0.0) is None
    assert cap.count("k") == 1
    assert rate.tokens("k", 0.0) == 4


def test_address_limits_cap_refusal_counts_nothing() -> None:
    """
    When the cap refuses, the answer is L{Refusal.ADDRESS_CAP} and the rate
    spends no token for the refused connection.
    """
    cap, rate = AddressCap(1), AddressRate(1, burst=5)
    limits = AddressLimits([rate, cap])
    assert limits.admit("k", 0.0) is None
    for _ in range(3):
        assert limits.admit("k", 0.0) is Refusal.ADDRESS_CAP
    assert cap.count("k") == 1
    assert rate.tokens("k", 0.0) == 4


def test_address_limits_rate_refusal_counts_nothing() -> None:
    """
    When the rate refuses, the answer is L{Refusal.RATE} and the cap counts
    no connection for it.
    """
    cap, rate = AddressCap(10), AddressRate(1, burst=2)
    limits = AddressLimits([cap, rate])
    assert limits.admit("k", 0.0) is None
    assert limits.admit("k", 0.0) is None
    for _ in range(3):
        assert limits.admit("k", 0.0) is Refusal.RATE
    assert cap.count("k") == 2
    assert rate.tokens("k", 0.0) == 0


@pytest.mark.parametrize("rate_first", [True, False])
def test_address_limits_first_refusal_wins(rate_first: bool) -> None:
    """
    When several policies refuse, the answer is the reason of the first one
    in order, and no policy acquires anything.
    """
    cap, rate = AddressCap(1), AddressRate(1, burst=1)
    policies: list[IAddressPolicy] = [rate, cap] if rate_first else [cap, rate]
    limits = AddressLimits(policies)
    assert limits.admit("k", 0.0) is None
    expected = Refusal.RATE if rate_first else Refusal.ADDRESS_CAP
    assert limits.admit("k", 0.0) is expected
    assert cap.count("k") == 1
    assert rate.tokens("k", 0.0) == 0


def test_address_limits_refusal_acquires_nowhere() -> None:
    """
    A refusal by a later policy means no policy, earlier or later, is asked
    to acquire; admission asks all policies before counting in any.
    """
    first, refusing, last = Recorder(), Recorder(allow=False), Recorder()
    limits = AddressLimits([first, refusing, last])
    assert limits.admit("k", 0.0) is Refusal.TIMEOUT
    assert first.calls == [("allows", "k")]
    assert refusing.calls == [("allows", "k")]
    assert last.calls == []


def test_address_limits_release_releases_all() -> None:
    """
    Releasing an admitted connection releases it in every policy.
    """
    recorders = [Recorder(), Recorder()]
    cap = AddressCap(1)
    limits = AddressLimits([recorders[0], cap, recorders[1]])
    assert limits.admit("k", 0.0) is None
    limits.release("k")
    for recorder in recorders:
        assert recorder.calls == [("allows", "k"), ("acquire", "k"), ("release", "k")]
    assert cap.count("k") == 0
    assert len(cap) == 0
    assert limits.admit("k", 0.0) is None


def test_address_limits_memory_is_bounded() -> None:
    """
    The memory bound under a flood of distinct addresses: 100,000 clients
    from 100,000 different IPv6 /64s each connect and disconnect through
    C{AddressLimits([AddressCap(5), AddressRate(2, max_entries=1000)])}.
    The cap's table never holds more than the addresses with a live
    connection (here at most 1, and 0 at the end); the rate's table never
    holds more than C{max_entries} = 1000 addresses.  So both stay at or
    under 1000 entries whatever the number of clients.

    The keys are written directly in L{address_key}'s form (C{2001:a:b:1::/64},
    no zero group to compress), and checked against it for every 100th client
    address: C{ipaddress} is most of the cost otherwise.
    """
    clock = Clock()
    cap, rate = AddressCap(5), AddressRate(2, max_entries=1000)
    limits = AddressLimits([cap, rate])
    for index in range(100_000):
        clock.advance(0.0001)
        high, low = 1 + index // 1000, 1 + index % 1000
        key = f"2001:{high:x}:{low:x}:1::/64"
        if index % 100 == 0:
            assert address_key(f"2001:{high:x}:{low:x}:1:{high:x}::{low:x}") == key
        assert limits.admit(key, clock.seconds()) is None
        assert len(cap) <= 1
        assert len(rate) <= 1000
        limits.release(key)
    assert len(cap) == 0
    assert len(rate) == 1000
    assert rate.evicted == 99_000


def test_address_limits_keys_are_independent() -> None:
    """
    With a cap and a rate on several keys, each key is limited by the
    stricter of the two on its own: refusals for one key leave the others'
    admissions unchanged.
    """
    cap, rate = AddressCap(2), AddressRate(1, burst=3)
    limits = AddressLimits([cap, rate])
    keys = ["10.0.0.1", "10.0.0.2", "2001:db8::/64"]
    for key in keys:
        assert limits.admit(key, 0.0) is None
        assert limits.admit(key, 0.0) is None
        assert limits.admit(key, 0.0) is Refusal.ADDRESS_CAP
    for key in keys:
        limits.release(key)
        assert limits.admit(key, 0.0) is None
        limits.release(key)
        assert limits.admit(key, 0.0) is Refusal.RATE
        assert cap.count(key) == 1


def test_default_rate_table_bound_holds() -> None:
    """
    With the default table size (RATE_TABLE_SIZE, 65,536 addresses), 70,000
    distinct /64 networks at one instant leave exactly 65,536 remembered and
    4,464 evicted: docs/guide.md's bound, at its real size.
    """
    policy = AddressRate(rate=1)
    for number in range(70_000):
        policy.acquire(f"2001:db8:{number >> 16:x}:{number & 0xFFFF:x}::/64", 0.0)
    assert RATE_TABLE_SIZE == 65_536
    assert len(policy) == RATE_TABLE_SIZE
    assert policy.evicted == 70_000 - RATE_TABLE_SIZE
