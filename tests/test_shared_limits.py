"""
Tests of L{gateway.cluster.admission.SharedLimits}: the per-address limits
held across nodes, on a real C{redis-server}.

Several L{SharedLimits} (one per node) share one Redis, each through a
L{Link}: the real Redis runs every command at once, in the order sent (as
Redis runs one connection's pipelined commands), and the reply reaches the
caller either at once or when the test says (L{Link.hold}), so an answer
can come back after commands sent later have run: the race a reconciliation
must survive.  A link can also be B{away} (every call fails at once, with
nothing sent: what L{gateway.cluster.link.RedisLink} does while Redis is
away); the link itself and the admission's timeout are tested end to end in
C{test_e2e_cluster_limits.py}.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent

from gateway.cluster.admission import SharedLimits
from gateway.cluster.link import RedisDownError
from gateway.front.limits import AddressCap, AddressLimits, AddressRate, Refusal
from gateway.front.pending import Decision, Ticket
from tests.redisserver import RedisConnection, RedisError, RedisServer
from tests.support import DEADLINE

ADDRESS = "192.0.2.7"


class Link:
    """
    A node's commands to the real Redis (see the module's docstring).

    @ivar away: fail every call at once, sending nothing.
    @ivar hold: keep replies until L{deliver}.
    @ivar sent: every command sent, in order.
    """

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self.away = False
        self.hold = False
        self.sent: list[tuple[object, ...]] = []
        self._held: list[tuple[Deferred[Any], object]] = []

    def call(self, *args: object, timeout: float | None = None) -> Deferred[Any]:
        """
        Run a command now; its reply now or later.
        """
        if self.away:
            return fail(RedisDownError("Redis is away"))
        self.sent.append(args)
        try:
            reply: object = self._connection.command(*[_text(a) for a in args])
        except RedisError as error:
            reply = error
        answer: Deferred[Any] = Deferred()
        if self.hold:
            self._held.append((answer, reply))
        else:
            _settle(answer, reply)
        return answer

    def deliver(self) -> None:
        """
        Give the held replies, in order.
        """
        held, self._held = self._held, []
        for answer, reply in held:
            _settle(answer, reply)


def _text(value: object) -> str | bytes | int:
    return value if isinstance(value, (str, bytes, int)) else str(value)


def _settle(answer: Deferred[Any], reply: object) -> None:
    if isinstance(reply, RedisError):
        answer.errback(reply)
    else:
        answer.callback(reply)


class Node:
    """
    One node: its shared limits, its own limits and its link.
    """

    def __init__(self, redis: RedisServer, name: str, cap: int, rate: float, live: int) -> None:
        self.connection = redis.connect()
        self.link = Link(self.connection)
        self.clock = Clock()
        self.live = live
        policies: list[Any] = []
        if cap:
            policies.append(AddressCap(cap))
        if rate:
            policies.append(AddressRate(rate, burst=3))
        self.limits = AddressLimits(policies)
        self.shared = SharedLimits(
            self.link,  # type: ignore[arg-type]
            self.clock,
            cluster="t",
            node=name,
            ttl=3.0,
            live_nodes=lambda: self.live,
        )

    def admit(self, key: str = ADDRESS) -> Decision:
        """
        Ask, and return the decision (the link answers at once).
        """
        decisions: list[Decision] = []
        self.shared.admit(key, self.limits).addCallback(decisions.append)
        assert len(decisions) == 1, "no answer"
        return decisions[0]

    def ticket(self, key: str = ADDRESS) -> Ticket:
        """
        Admit, which must succeed.
        """
        decision = self.admit(key)
        assert decision.refusal is None and decision.ticket is not None
        return decision.ticket

    def release(self, ticket: Ticket) -> None:
        """
        An admitted connection ends, locally and in Redis.
        """
        self.limits.release(ticket.key)
        self.shared.release(ticket)


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[list[Node]]:
    """
    Three nodes, a per-address cap of 3 and no rate.
    """
    made = [Node(redis_server, f"n{i}", cap=3, rate=0, live=3) for i in (1, 2, 3)]
    yield made
    for node in made:
        node.connection.close()


def hash_of(redis: RedisServer, key: str) -> dict[bytes, bytes]:
    """
    A Redis hash, as Redis has it.
    """
    reply = redis.command("HGETALL", key)
    assert isinstance(reply, list)
    return {reply[i]: reply[i + 1] for i in range(0, len(reply), 2)}  # type: ignore[misc]


def counts(redis: RedisServer, node: str) -> dict[bytes, bytes]:
    """
    Node C{node}'s hash of per-address counts.
    """
    return hash_of(redis, f"t:conn:{node}")


def test_cap_holds_across_nodes(nodes: list[Node]) -> None:
    """
    Three connections through three nodes are admitted; the fourth is
    refused through any node; another address is not affected; a release
    through one node lets one more in through another.
    """
    tickets = [node.ticket() for node in nodes]
    for node in nodes:
        assert node.admit().refusal is Refusal.ADDRESS_CAP
    assert nodes[0].admit("192.0.2.8").refusal is None
    nodes[1].release(tickets[1])
    assert nodes[2].admit().refusal is None
    assert nodes[0].admit().refusal is Refusal.ADDRESS_CAP
    assert [n.limits.counts().get(ADDRESS) for n in nodes] == [1, None, 2]
    assert all(not node.shared.alone and node.shared.local == 0 for node in nodes)


def test_rate_holds_across_nodes(redis_server: RedisServer) -> None:
    """
    A rate of 1/s with a burst of 3: three arrivals through three nodes,
    the fourth refused; on Redis' own clock a token comes back within a
    second or so.
    """
    rated = [Node(redis_server, f"r{i}", cap=0, rate=1.0, live=3) for i in (1, 2, 3)]
    for node in rated:
        assert node.admit().refusal is None
    assert [node.admit().refusal for node in rated] == [Refusal.RATE] * 3
    # No count is kept for a rate alone.
    assert redis_server.command("EXISTS", "t:conn:r1") == 0
    deadline = time.monotonic() + DEADLINE
    while rated[1].admit().refusal is not None:
        assert time.monotonic() < deadline, "no token came back"
        time.sleep(0.1)


def test_dead_node_counts_expire(redis_server: RedisServer) -> None:
    """
    The counts of a node that stopped beating stop counting after its TTL
    (its hash expires), and the set of nodes forgets it.
    """
    short = [Node(redis_server, f"s{i}", cap=1, rate=0, live=2) for i in (1, 2)]
    short[0].shared = SharedLimits(
        short[0].link,  # type: ignore[arg-type]
        short[0].clock,
        cluster="t",
        node="s1",
        ttl=0.3,
        live_nodes=lambda: 2,
    )
    short[0].ticket()
    assert short[1].admit().refusal is Refusal.ADDRESS_CAP
    deadline = time.monotonic() + DEADLINE
    while short[1].admit().refusal is not None:
        assert time.monotonic() < deadline, "the dead node's count never expired"
        time.sleep(0.05)
    assert redis_server.command("SMEMBERS", "t:conn-nodes") == [b"s2"]


def test_redis_away_decides_alone_with_a_share(
    redis_server: RedisServer, nodes: list[Node], log_events: EventLoggingObserver
) -> None:
    """
    With Redis away a node decides alone, each limit divided by the nodes
    last seen alive (3 per address across 3 nodes: 1 here), counted and
    logged once; when Redis answers again its counts are written back (the
    connections admitted alone included) and the shared limits hold again.
    """
    node = nodes[0]
    node.link.away = True
    first = node.ticket()
    assert first.counted is False
    assert node.admit().refusal is Refusal.ADDRESS_CAP
    assert node.shared.alone and node.shared.local == 2
    node.live = 1
    node.ticket()  # alone in the cluster now: the whole limit
    assert node.shared.local == 3
    node.live = 3
    nodes[1].ticket()  # another node, with Redis
    node.link.away = False
    assert node.admit().refusal is Refusal.ADDRESS_CAP  # 2 here + 1 there
    assert not node.shared.alone
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"2"}
    messages = [formatEvent(event) for event in log_events]
    alone = [m for m in messages if "are decided by this node alone" in m]
    back = [m for m in messages if "shared limits again" in m]
    assert len(alone) == 1 and "divided by 3 live node(s)" in alone[0]
    assert len(back) == 1 and "(3 decided by this node alone so far)" in back[0]
    # The connection admitted alone is in Redis now: its end is taken off.
    node.release(first)
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}


def test_release_only_what_redis_counted(redis_server: RedisServer, nodes: list[Node]) -> None:
    """
    A connection admitted alone, ending before Redis came back, is not taken
    off Redis' count (Redis never had it); one admitted by Redis is.
    """
    node = nodes[0]
    node.live = 1
    counted = node.ticket()
    node.link.away = True
    alone = node.ticket()
    node.release(alone)
    node.link.away = False
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}
    node.release(counted)
    assert counts(redis_server, "n1") == {}
    assert node.limits.counts() == {}


def test_an_answer_after_a_rewrite_is_counted_again(
    redis_server: RedisServer, nodes: list[Node]
) -> None:
    """
    An admission that ran in Redis before a rewrite of the node's counts,
    but whose answer came after it, is counted again: the rewrite could not
    include it.  Its release then takes it off once.
    """
    node = nodes[0]
    node.ticket()
    node.link.hold = True
    decisions: list[Decision] = []
    node.shared.admit(ADDRESS, node.limits).addCallback(decisions.append)
    node.shared.reconcile()  # sent after it: runs after it
    node.link.hold = False
    node.link.deliver()
    assert decisions[0].refusal is None
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"2"}
    ticket = decisions[0].ticket
    assert ticket is not None
    node.release(ticket)
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}


def test_beat_writes_back_expired_counts(redis_server: RedisServer, nodes: list[Node]) -> None:
    """
    A beat keeps the counts alive; if they expired (Redis away for longer
    than the TTL, or flushed), it writes them again.
    """
    node = nodes[0]
    node.ticket()
    node.ticket()
    node.shared.beat()
    ttl = redis_server.command("PTTL", "t:conn:n1")
    assert isinstance(ttl, int) and 0 < ttl <= 3000
    redis_server.command("DEL", "t:conn:n1")
    node.shared.beat()
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"2"}
    assert b"n1" in (redis_server.command("SMEMBERS", "t:conn-nodes") or [])  # type: ignore[operator]


def test_failed_release_is_written_back(redis_server: RedisServer, nodes: list[Node]) -> None:
    """
    A release Redis did not get leaves the node's counts to be written
    again at the next beat.
    """
    node = nodes[0]
    ticket = node.ticket()
    node.link.away = True
    node.release(ticket)
    node.link.away = False
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}
    node.shared.beat()
    assert counts(redis_server, "n1") == {}


def test_forget_deletes_the_counts(redis_server: RedisServer, nodes: list[Node]) -> None:
    """
    A node that stops takes its counts with it.
    """
    nodes[0].ticket()
    nodes[0].shared.forget()
    assert redis_server.command("EXISTS", "t:conn:n1") == 0
    assert nodes[1].admit().refusal is None


def test_scripts_need_nothing_kept_in_redis(redis_server: RedisServer, nodes: list[Node]) -> None:
    """
    A Redis that lost its scripts (restarted, flushed) admits as before:
    each script is sent whole, so none waits behind a C{NOSCRIPT} error.
    """
    nodes[0].ticket()
    redis_server.command("SCRIPT", "FLUSH")
    nodes[0].ticket()
    assert {c[0] for c in nodes[0].link.sent} == {"EVAL"}
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"2"}


def test_an_error_of_redis_decides_alone(redis_server: RedisServer, nodes: list[Node]) -> None:
    """
    A Redis that answers with an error (out of memory, a replica) is as good
    as away: the node decides alone.
    """
    redis_server.command("CONFIG", "SET", "maxmemory", "1")
    try:
        decision = nodes[0].admit()
    finally:
        redis_server.command("CONFIG", "SET", "maxmemory", "0")
    assert decision.refusal is None
    assert nodes[0].shared.alone and nodes[0].shared.local == 1


# Found in review (issue 17)


def test_an_answer_after_an_empty_rewrite_keeps_a_ttl(
    redis_server: RedisServer, nodes: list[Node]
) -> None:
    """
    An admission counted by Redis before a rewrite of a node that had
    nothing counted (the rewrite deletes the hash and sets no TTL), answered
    after it: counted again, the hash must still expire with the node and be
    listed for the other nodes' sums.
    """
    node = nodes[0]
    node.link.hold = True
    decisions: list[Decision] = []
    node.shared.admit(ADDRESS, node.limits).addCallback(decisions.append)
    node.shared.reconcile()  # nothing counted locally yet: DEL, no PEXPIRE
    node.link.hold = False
    node.link.deliver()
    assert decisions[0].refusal is None
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}
    ttl = redis_server.command("PTTL", "t:conn:n1")
    assert isinstance(ttl, int) and 0 < ttl <= 3000, f"the count never expires (PTTL {ttl!r})"


def test_release_of_a_connection_admitted_before_a_cap_was_added(
    redis_server: RedisServer, nodes: list[Node]
) -> None:
    """
    A reload that adds C{--max-per-ip} (L{address_policies} builds a new
    cap): a connection admitted before it was never in any count, local or
    Redis'.  Once a rewrite has started a new epoch, its end must not take
    another connection's count off Redis.
    """
    node = nodes[0]
    node.limits = AddressLimits([AddressRate(100.0, burst=10)])  # before the reload: no cap
    before = node.ticket()
    assert before.counted is False
    old = node.limits
    node.limits = AddressLimits([AddressCap(3)])  # the reload adds a cap
    after = node.ticket()
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}
    node.shared.reconcile()  # any rewrite (a beat after a hiccup)
    old.release(before.key)
    node.shared.release(before)
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}, (
        "the connection admitted after the reload is no longer counted"
    )
    node.release(after)
    assert counts(redis_server, "n1") == {}


def test_release_after_a_reload_replaced_the_cap(
    redis_server: RedisServer, nodes: list[Node]
) -> None:
    """
    A reload that replaces the per-address cap (N, none, then N again: a new
    cap): a connection counted by Redis in the old cap is not in a rewrite
    made from the new one, so its end takes nothing off Redis; the new
    cap's connections keep their count.
    """
    node = nodes[0]
    before = node.ticket()
    old = node.limits
    node.limits = AddressLimits([AddressCap(3)])  # a new cap, empty
    after = node.ticket()
    node.shared.reconcile()
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}
    old.release(before.key)
    node.shared.release(before)
    assert counts(redis_server, "n1") == {ADDRESS.encode(): b"1"}
    node.release(after)
    assert counts(redis_server, "n1") == {}
