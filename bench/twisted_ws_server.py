"""
A C{twisted.web.websocket} server whose protocol answers each message with its
length: the Twisted side of C{bench/ws_message_memory.py}.
"""

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.websocket import WebSocketResource

# ruff: noqa: N802 - twisted.web.websocket's method names


class Answer:
    def negotiationStarted(self, transport):
        self.transport = transport

    def negotiationFinished(self):
        pass

    def bytesMessageReceived(self, data):
        self.transport.sendBytesMessage(b"%d" % len(data))

    def textMessageReceived(self, text):
        pass

    def pongReceived(self, payload):
        pass

    def connectionLost(self, reason):
        pass


class Factory:
    def buildProtocol(self, request):
        return Answer()


root = Resource()
root.putChild(b"play", WebSocketResource(Factory()))
reactor.listenTCP(int(sys.argv[1]), Site(root), interface="127.0.0.1")
reactor.run()
