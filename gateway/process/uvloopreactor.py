"""
A reactor for C{twistd -r uvloop}: Twisted's asyncio reactor running on
uvloop's event loop (libuv) instead of asyncio's own selector loop.

Each event a Twisted reactor dispatches costs Python work; uvloop's loop
does its share of it in C, which shows on the latency of an established
session (docs/performance.md).  Everything else is Twisted's asyncio reactor,
unchanged: the gateway's code only uses the reactor interfaces.

Needs the C{uvloop} package (C{pip install 'gateway[uvloop]'}; Linux and
macOS).
"""

from __future__ import annotations

import asyncio

__all__ = ["install"]


def install() -> None:
    """
    Install Twisted's asyncio reactor on a new uvloop event loop.

    @raise ImportError: uvloop is not installed.
    """
    import uvloop
    from twisted.internet import asyncioreactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)


def reactor_name(reactor: object) -> str | None:
    """
    The C{twistd -r} name of a running reactor, for worker processes to run
    the same one; L{None} for Twisted's default.
    """
    module = type(reactor).__module__
    if module == "twisted.internet.asyncioreactor":
        loop = getattr(reactor, "_asyncioEventloop", None)
        return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    names = {
        "twisted.internet.epollreactor": "epoll",
        "gateway.process.leanreactor": "lean-epoll",
        "twisted.internet.pollreactor": "poll",
        "twisted.internet.selectreactor": "select",
    }
    return names.get(module)
