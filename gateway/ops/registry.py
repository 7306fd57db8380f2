"""
The gateway's counters, the registry of live sessions (the "children list"),
and the refusal log that keeps floods out of the log.

L{Counters} holds plain integers that the data path adds to and the admin
endpoint (a later issue) reads; nothing is computed per chunk.  L{RefusalLog}
counts every refusal by reason and logs it as a structured event with the
client's address, except that past a few refusals of one reason in a window it
only tallies them and logs one summary at the window's end, saying how many
it did not log one by one and from which addresses most of them came.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol as Structural

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.front.limits import Refusal
from gateway.histogram import SESSION_DURATION_BOUNDS, Histogram
from gateway.ops.sampling import Sampler

__all__ = ["Counters", "LiveSession", "RefusalLog", "SessionRegistry"]


def _host_of(peer: str) -> str:
    """
    C{"10.0.0.1:5000"} -> C{"10.0.0.1"}, C{"[::1]:5000"} -> C{"::1"}; other
    names unchanged.
    """
    if peer.startswith("["):
        return peer[1 : peer.find("]")] if "]" in peer else peer
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else peer


class Counters:
    """
    Running totals since start.

    @ivar accepted: connections admitted past the limits.
    @ivar refused: refused connections (and requests) by reason.
    @ivar queued: connections that waited for a free slot (--overflow queue).
    @ivar key_fallbacks: game sessions whose first line did not match
        --session-key (their key is the client's address).
    @ivar fast_path: game sessions whose backend was connected on the TCP
        fast path (L{gateway.session.leanlink}).
    """

    def __init__(self) -> None:
        self.accepted = 0
        self.queued = 0
        self.key_fallbacks = 0
        self.fast_path = 0
        self.refused: dict[Refusal, int] = dict.fromkeys(Refusal, 0)


class LiveSession(Structural):
    """
    What the registry and the admin endpoint read of a live session (a
    classified front connection: a game session or an HTTP connection).
    """

    kind: str
    peer: str
    started: float

    @property
    def backend_name(self) -> str | None: ...
    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...


class SessionRegistry:
    """
    Every live session, by id, and totals of the ended ones.

    A session is added when its connection is classified and removed when
    its client connection is lost; a second removal of the same id does
    nothing, so the two sides of a session closing in any order remove it
    exactly once.  Nothing here is touched per chunk: byte counts are read
    from the sessions when someone asks.

    @ivar started: sessions ever added, by kind.
    @ivar ended_bytes_in: bytes from clients in sessions that ended.
    @ivar ended_bytes_out: bytes to clients in sessions that ended.
    @ivar ended_by_backend: bytes from and to clients in sessions that
        ended, by the name of their backend (sessions that had one).
    @ivar durations: how long the sessions that ended lasted, by kind (with
        a clock).
    """

    def __init__(self, clock: IReactorTime | None = None) -> None:
        """
        @param clock: for the sessions' durations (L{None}: not recorded).
        """
        self._next = 1
        self._clock = clock
        self._live: dict[int, LiveSession] = {}
        self.started: Counter[str] = Counter()
        self.ended_bytes_in = 0
        self.ended_bytes_out = 0
        self.ended_by_backend: dict[str, list[int]] = {}
        self.durations: dict[str, Histogram] = {}

    def add(self, session: LiveSession, number: int | None = None) -> int:
        """
        Register a live session.

        @param number: its id when someone else numbers the connections (a
            worker's sessions carry the acceptor's numbers, unique across
            workers); else the next of this registry's own.
        @return: its id (unique for the life of the process).
        """
        if number is None:
            number = self._next
            self._next += 1
        self._live[number] = session
        self.started[session.kind] += 1
        return number

    def remove(self, number: int) -> None:
        """
        The session C{number} ended (again: nothing).
        """
        session = self._live.pop(number, None)
        if session is None:
            return
        bytes_in, bytes_out = session.bytes_in, session.bytes_out
        self.ended_bytes_in += bytes_in
        self.ended_bytes_out += bytes_out
        backend = session.backend_name
        if backend is not None:
            moved = self.ended_by_backend.setdefault(backend, [0, 0])
            moved[0] += bytes_in
            moved[1] += bytes_out
        if self._clock is not None:
            durations = self.durations.get(session.kind)
            if durations is None:
                durations = self.durations[session.kind] = Histogram(SESSION_DURATION_BOUNDS)
            durations.observe(self._clock.seconds() - session.started)

    def __len__(self) -> int:
        return len(self._live)

    def items(self) -> Iterator[tuple[int, LiveSession]]:
        """
        The live sessions with their ids, oldest first.
        """
        return iter(list(self._live.items()))

    def snapshot(self) -> tuple[list[int], list[LiveSession]]:
        """
        The live sessions' ids and the sessions, oldest first, as two lists:
        two allocations whatever the count (no pair per session), so that
        reading 10,000 sessions does not wake the garbage collector.
        """
        return list(self._live), list(self._live.values())

    def active(self) -> Counter[str]:
        """
        Live sessions by kind.
        """
        return Counter(session.kind for session in self._live.values())


class RefusalLog:
    """
    Counts refusals and logs them, sampled: the first C{burst} of each reason
    in a window of C{window} seconds are logged one by one; the rest are
    tallied (by address, keeping the C{top} most frequent) and summarised
    by a timer when the window ends (L{gateway.ops.sampling.Sampler}).
    """

    TRACKED_ADDRESSES = 1000
    """Distinct addresses tallied per reason and window; the rest are "others"."""

    def __init__(
        self,
        clock: IReactorTime,
        counters: Counters,
        *,
        window: float = 10.0,
        burst: int = 5,
        top: int = 5,
    ) -> None:
        # Per instance: a Logger set as a class attribute would take the
        # class's name as its namespace, and the README documents this one.
        self._log = Logger(namespace="gateway.refusals", source=self)
        self.counters = counters
        self.top = top
        self._sampler: Sampler[Refusal] = Sampler(
            clock, self._summarise, window=window, burst=burst
        )
        self._suppressed: dict[Refusal, Counter[str]] = {}
        self._others: Counter[Refusal] = Counter()

    @property
    def window(self) -> float:
        """
        Seconds of a sampling window.
        """
        return self._sampler.window

    @property
    def burst(self) -> int:
        """
        Refusals of each reason logged one by one per window.
        """
        return self._sampler.burst

    def refused(self, reason: Refusal, peer: str, detail: str = "") -> None:
        """
        Count one refusal and log it, or tally it if this reason is flooding.

        @param peer: the client's address, as shown in logs.
        @param detail: a few words on the case, for the log (optional).
        """
        self.counters.refused[reason] += 1
        if self._sampler.admit(reason):
            self._log.warn(
                "refused {peer}: {reason}{detail}",
                peer=peer,
                reason=reason.value,
                detail=f" ({detail})" if detail else "",
            )
            return
        # Tallied by address, without the port: a flood from one address
        # comes from many ports.
        host = _host_of(peer)
        tally = self._suppressed.setdefault(reason, Counter())
        if host in tally or len(tally) < self.TRACKED_ADDRESSES:
            tally[host] += 1
        else:
            self._others[reason] += 1

    def flush(self) -> None:
        """
        Log the summary of the current window now, if one is due, and stop
        its timer (for a gateway that stops before the window ends).
        """
        self._sampler.flush()

    def _summarise(self, suppressed: Counter[Refusal]) -> None:
        for reason, count in suppressed.items():
            tally = self._suppressed.get(reason, Counter())
            others = self._others[reason]
            most = ", ".join(f"{peer} ({n})" for peer, n in tally.most_common(self.top))
            self._log.warn(
                "refused {count} more connections ({reason}) in the last {window:g} s "
                "without logging each; most from: {most}",
                count=count,
                reason=reason.value,
                window=self.window,
                most=most + (f", others ({others})" if others else ""),
                addresses=len(tally),
            )
        self._suppressed.clear()
        self._others.clear()
