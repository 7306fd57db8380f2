"""
The C{gateway} twistd plugin: C{twistd -n gateway ...} and C{twist gateway ...}.

This file stays thin on purpose: Twisted imports every module in
C{twisted/plugins/} when it scans for plugins, so it names the module that holds
the options and C{makeService} by string, and that module is only imported
when the plugin is actually used.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

gateway = ServiceMaker(
    "gateway",
    "gateway.options",
    "One public port that serves HTTP and proxies stateful game sessions to backends.",
    "gateway",
)

uvloop = Reactor(
    "uvloop",
    "gateway.process.uvloopreactor",
    "Twisted's asyncio reactor on uvloop's event loop (pip install 'gateway[uvloop]').",
)

lean_epoll = Reactor(
    "lean-epoll",
    "gateway.process.leanreactor",
    "Twisted's epoll reactor without its per-event log context (the gateway's default on Linux).",
)
