#!/usr/bin/env python3
"""
The cost of one access event in the gateway's log (run by hand, never in
CI): an HTTP request's event published to twistd's stock text observer on
a L{LogFile} (before), and to the gateway's buffered one (after: lines
written once per simulated reactor turn of C{--per-turn} events), in one
process, interleaved, C{--rounds} rounds; microseconds per event, medians.

    .venv/bin/python bench/log_event.py [--events 20000] [--per-turn 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock  # noqa: E402
from twisted.logger import Logger, LogPublisher, textFileLogObserver  # noqa: E402
from twisted.python.logfile import LogFile  # noqa: E402

from gateway.ops import access  # noqa: E402
from gateway.ops.logbuffer import BufferedLogObserver, LineBuffer, text_line  # noqa: E402


def run(observer: object, events: int, per_turn: int, clock: Clock | None) -> float:
    """
    Microseconds per event for C{events} access events sent to C{observer}.
    """
    publisher = LogPublisher(observer)  # type: ignore[arg-type]
    access._route[0] = Logger(namespace=access.ACCESS_NAMESPACE, observer=publisher)
    start = time.perf_counter()
    for number in range(events):
        access.log_http_request(
            peer="127.0.0.1:40000",
            method="GET",
            path="/small.txt",
            status=200,
            bytes_in=0,
            bytes_out=2500,
            duration=0.0001,
            reason="complete",
        )
        if clock is not None and number % per_turn == per_turn - 1:
            clock.advance(0)
    if clock is not None:
        clock.advance(0)
    return (time.perf_counter() - start) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--per-turn", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for column in ("before", "after") if _ % 2 == 0 else ("after", "before"):
                log_file = LogFile("gateway.log", tmp, rotateLength=None)
                if column == "before":
                    stock = textFileLogObserver(log_file)  # type: ignore[arg-type]
                    cost = run(stock, args.events, args.per_turn, None)
                else:
                    clock = Clock()
                    lines = LineBuffer(log_file)
                    lines.hold(clock)
                    observer = BufferedLogObserver(lines, text_line)
                    cost = run(observer, args.events, args.per_turn, clock)
                log_file.close()
                results[column].append(cost)
    before, after = (statistics.median(results[c]) for c in ("before", "after"))
    print(f"before (twistd's text observer): {before:.2f} µs/event {results['before']}")
    print(f"after (buffered, {args.per_turn}/turn): {after:.2f} µs/event {results['after']}")
    print(f"after / before: {after / before:.2f}×")


if __name__ == "__main__":
    main()
