#!/usr/bin/env python3
"""
Where a Twisted process's time goes, by area, from a py-spy profile in its
C{--format raw} (folded stacks, one with its sample count a line): waiting in
C{epoll_wait}, send/recv, the reactor, twisted.web's server and client, the
HTTP proxy's own modules, the access log...  Used by C{bench/http_proxy.py
--profile}; by hand:

    .venv/bin/py-spy record -p PID -d 8 -r 500 --idle --format raw -o prof.txt
    .venv/bin/python bench/profile_areas.py prof.txt
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable
from pathlib import Path

AREAS: list[tuple[str, Callable[[str, str], bool]]] = [
    ("proxy's own code (gateway/http/proxy, forwarded, connections)",
     lambda f, p: p.endswith(("gateway/http/proxy.py", "gateway/http/forwarded.py",
                              "gateway/http/connections.py"))),
    ("access log (gateway/ops/access, twisted.logger, the log file)",
     lambda f, p: "twisted/logger/" in p or p.endswith(
         ("gateway/ops/access.py", "twisted/python/logfile.py"))),
    ("gateway's other code (site, channel, front door, pool)",
     lambda f, p: p.startswith("gateway/") or "/gateway/" in p),
    ("Twisted's per-event log context (callWithLogger)", lambda f, p: p.endswith(
        ("twisted/python/log.py", "twisted/python/context.py"))),
    ("twisted.web client (Agent, _newclient, connection pool)", lambda f, p: p.endswith(
        ("twisted/web/_newclient.py", "twisted/web/client.py"))),
    ("twisted.web server (http.py parsing, server.py Request)", lambda f, p: p.endswith(
        ("twisted/web/http.py", "twisted/web/server.py", "twisted/web/resource.py",
         ))),
    ("send/recv system calls", lambda f, p: p.endswith("twisted/internet/tcp.py")
     and f.endswith((".writeSomeData", ".doRead"))),
    ("new backend connections (connect, close)", lambda f, p: p.endswith(
        ("twisted/internet/tcp.py", "twisted/internet/endpoints.py"))
     and f.endswith((".doConnect", ".createInternetSocket", "._closeSocket", ".connect",
                     ".failIfNotConnected", "._connectDone"))),
    ("reactor: waiting in epoll_wait", lambda f, p: f.endswith(".doPoll")),
    ("reactor and transports (dispatch, buffers, timers)", lambda f, p: "twisted/internet/" in p
     and not p.endswith("twisted/internet/defer.py")),
]  # fmt: skip
"""Areas of the profile, most specific first: a sample counts for the area
of its innermost frame that one of these names.  A frame in the standard
library, Deferreds, C{http_headers} or a Failure counts for its caller's
area (a header copied by the proxy is the proxy's time, one parsed by the
server the server's)."""


def _frame(text: str) -> tuple[str, str]:
    """
    A py-spy raw frame C{function (path:line)} as (function, path).
    """
    function, _, where = text.partition(" (")
    return function, where.rsplit(":", 1)[0]


def profile_areas(raw: Path) -> tuple[int, int, list[tuple[str, int]], list[tuple[str, int]]]:
    """
    Read a py-spy C{--format raw} profile (one folded stack and its count a
    line).

    @return: all samples, the busy ones (not in C{epoll_wait}), samples by
        area, and the twelve hottest frames (own time).
    """
    areas: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        area = "other (standard library, start-up)"
        for text in reversed(frames):
            function, path = _frame(text)
            named = next((name for name, test in AREAS if test(function, path)), None)
            if named is not None:
                area = named
                break
        areas[area] += int(count)
    idle = sum(n for a, n in areas.items() if "epoll_wait" in a)
    return total, total - idle, areas.most_common(), own.most_common(12)


def main() -> None:
    total, busy, areas, hottest = profile_areas(Path(sys.argv[1]))
    print(f"{total} samples, {busy} busy (not in epoll_wait)")
    for area, count in areas:
        print(f"  {100 * count / total:5.1f}%  {100 * count / max(busy, 1):5.1f}% busy  {area}")
    print("hottest frames (own time):")
    for frame, count in hottest:
        print(f"  {100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
