"""
The command line of C{twistd gateway}: argv in, a validated L{GatewayConfig} out.

L{GatewayOptions} is the parser (tested as data: an argv in, a whole config
out).  L{Options} is what the twistd plugin uses: the same parser, but a bad
setting ends the process with one line on standard error, instead of twistd's
habit of printing the whole usage text first.  L{makeService} is the plugin's
entry point; it imports the assembly (L{gateway.process.assemble}) only when the gateway
really starts.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorCore
from twisted.python import usage
from typing_extensions import override

from gateway.checksummary import summary
from gateway.cli import did_you_mean, grouped_usage, package_version
from gateway.clusterconfig import CLUSTER_FLAGS, CLUSTER_PARAMETERS
from gateway.config import (
    DEFAULT_ADMIN,
    DEMO_LISTEN,
    ConfigError,
    GatewayConfig,
)
from gateway.ownership import TokenFiles, ownership_lines
from gateway.settings import build_config
from gateway.sources import CommandLine, merge_sources

if TYPE_CHECKING:
    from twisted.application.service import IService

__all__ = ["GatewayOptions", "Options", "makeService"]

_DEFAULTS = GatewayConfig()


class GatewayOptions(usage.Options):
    """
    Parse and check the gateway's options; the result is in L{config}.

    @ivar config: the validated configuration, set by L{postOptions}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve HTTP and proxy game sessions on one public port. Each connection is "
        "classified from its first bytes: an HTTP request line (a known method and a "
        "space) is served from --http-root; anything else, or a client that stays "
        "silent for --sniff-timeout seconds, is a game session relayed byte for byte "
        "to a backend of the pool (chosen by --balance, trying another when one "
        "fails); a WebSocket upgrade on a --websocket path is a game session too, for "
        "browsers. Operators watch and steer it on the --admin endpoint. "
        "Try it: twistd -n gateway --demo"
    )

    optFlags = [
        [
            "check-config",
            None,
            "Check the settings (the --config file and the command line) and exit: "
            "status 0 and a summary if they are valid, else 2 and the error. Binds nothing.",
        ],
        [
            "demo",
            None,
            "Run the built-in demo: two in-process game servers as backends and a demo "
            f"page as the HTTP root, on {DEMO_LISTEN} unless --listen is given.",
        ],
        [
            "access-log-only",
            None,
            "Write the access events only to --access-log, not to twistd's log as well "
            "(one line less to format and write per session: faster under connection churn).",
        ],
        [
            "access-log-starts",
            None,
            "Also log an access event when a game or WebSocket session reaches its backend "
            '(event "start"), so that a session lasting hours is visible before it ends.',
        ],
        [
            "http-listing",
            None,
            "List the files of a folder that has no index.html (off: such folders are a 404).",
        ],
        [
            "no-http-fast-path",
            None,
            "Serve every HTTP request through twisted.web (off: plain GET and HEAD "
            "requests for small files are answered on a lean path, with the same bytes).",
        ],
        [
            "no-tcp-fast-path",
            None,
            "Connect game sessions' backends through Twisted's endpoints, and give every "
            "client connection Twisted's transport (off: a session that splices to a tcp: "
            "backend given by IP address, or a unix: one, connects a bare socket for the "
            "splice relay, and a tcp: front's connections stay bare sockets until they "
            "need a transport).",
        ],
        *CLUSTER_FLAGS,
    ]
    optParameters = [
        [
            "config",
            None,
            None,
            "TOML file with the same settings as the options (keys are the option names, "
            "backends are [[backend]] tables with name, endpoint, weight, health-send, "
            "health-expect, proxy-protocol, pool); it alone has named pools ([pool.NAME]) "
            "and HTTP routes by host and path to files, HTTP app servers or WebSocket "
            "bridges ([[route]]). The command line wins over it. SIGHUP reads it again.",
        ],
        [
            "max-connections",
            None,
            "0",
            "Concurrent front connections, all kinds (0: no cap).",
        ],
        [
            "overflow",
            None,
            "reject",
            "At --max-connections: 'reject' (HTTP gets 503 with Retry-After, a game "
            "connection is closed, after --busy-message if set) or 'queue' (stop "
            "accepting until a slot frees; clients wait in the kernel backlog).",
        ],
        [
            "max-per-ip",
            None,
            "0",
            "Concurrent connections from one client address; IPv6 counts per /64 (0: no cap).",
        ],
        [
            "max-sessions",
            None,
            "0",
            "Every backend's session limit (a [[backend]] may set its own max-sessions): "
            "a backend at its limit takes no new session or proxied request (0: no limit).",
        ],
        [
            "rate-per-ip",
            None,
            "0",
            "New connections per second from one client address (token bucket; 0: no limit).",
        ],
        [
            "rate-burst",
            None,
            None,
            "Connections one address may open at once before --rate-per-ip applies "
            "(default: twice the rate, at least 10).",
        ],
        [
            "busy-message",
            None,
            None,
            "One line sent to a game client that is refused (default: none, just close).",
        ],
        [
            "balance",
            None,
            "roundrobin",
            "How a game session's backend is chosen: 'roundrobin' (weighted), "
            "'leastconn' (fewest sessions per weight) or 'hash' (consistent hash of "
            "the session key: a returning player reaches the same backend).",
        ],
        [
            "session-key",
            None,
            None,
            "With --balance hash: the affinity key is the first group of this regular "
            "expression in the client's first line (waited for up to --sniff-timeout); "
            "without it, or when it does not match, the client's address.",
        ],
        [
            "proxy-protocol",
            None,
            "off",
            "Send a PROXY protocol header ('v1' text or 'v2' binary) to backends before "
            "any client byte, so they see the real client address ('off': none).",
        ],
        [
            "health-interval",
            None,
            "5",
            "Seconds between active health checks of every backend (a TCP connect); "
            "a backend is down after 3 failed checks, or 3 failed connection attempts "
            "in a row, and up again after 2 passed checks (0: no checks).",
        ],
        [
            "health-send",
            None,
            None,
            "Bytes a health check sends after connecting, with backslash escapes "
            "(e.g. 'PING\\r\\n'); default: the connect alone is the check.",
        ],
        [
            "health-expect",
            None,
            None,
            "Bytes a health check must then receive within its timeout (e.g. 'PONG').",
        ],
        [
            "retries",
            None,
            "2",
            "Other backends tried when a connection attempt fails, before the client is closed.",
        ],
        [
            "admin",
            None,
            DEFAULT_ADMIN,
            "Admin and status endpoint (a dashboard at /, /status.json, /metrics, "
            "backend actions): a server endpoint string, or 'none'. Never served on "
            "the public front.",
        ],
        [
            "admin-token",
            None,
            None,
            "Token the admin endpoint's actions (POST /backends/NAME/drain, /enable) "
            "need as 'Authorization: Bearer TOKEN' (at least 16 characters; default: "
            "none, actions are open to whoever reaches --admin). Visible in the "
            "process list: prefer --admin-token-file.",
        ],
        [
            "admin-host",
            None,
            None,
            "Host names (comma-separated) by which the admin endpoint may be reached, "
            "besides IP addresses and localhost; other Host headers get 421 (this "
            "keeps web pages from reaching it through DNS rebinding).",
        ],
        [
            "admin-token-file",
            None,
            None,
            "File whose first line is the admin token (instead of --admin-token).",
        ],
        [
            "access-log",
            None,
            None,
            "Also append one JSON line per finished game session and HTTP request "
            "to this file ('-': standard output), for log shippers. The same events "
            "always go to twistd's log.",
        ],
        [
            "relay",
            None,
            "auto",
            "How game sessions move bytes: 'auto' (zero-copy with splice(2) once a session "
            "is established on plain TCP or UNIX sockets, on Linux; else through Python), "
            "'splice' (the same, refused where splice(2) does not exist) or 'copy'.",
        ],
        [
            "workers",
            None,
            str(_DEFAULTS.workers),
            "Worker processes (use one per core). With more than 1, this process accepts "
            "the connections, applies the limits exactly across all of them and hands each "
            "admitted connection to the least-loaded worker; a worker that dies is "
            "restarted (its sessions are lost, the others' go on).",
        ],
        [
            "handover",
            None,
            None,
            "UNIX socket path for zero-downtime upgrades: a gateway started with the "
            "same --handover takes over the listening sockets of the one running there "
            "(which then stops accepting; SIGTERM drains it), instead of binding them.",
        ],
        [
            "drain-timeout",
            None,
            str(_DEFAULTS.drain_timeout),
            "On SIGTERM (or SIGINT): stop accepting, finish HTTP responses, and let game "
            "sessions go on for up to this many seconds before closing them; then exit "
            "with status 0. A second SIGTERM or SIGINT stops at once (0: close at once).",
        ],
        [
            "header-timeout",
            None,
            "10",
            "Seconds an HTTP request's line and headers (and a PROXY header) may take "
            "to arrive; slower clients get 408 and are closed.",
        ],
        [
            "http-root",
            None,
            None,
            "Folder of static files served to HTTP clients on the front "
            "(default: none, every HTTP request is a 404; the demo page with --demo).",
        ],
        [
            "cache-control",
            None,
            _DEFAULTS.cache_control,
            "Cache-Control header of static files ('none': no header). The default, "
            "no-cache, has browsers revalidate with the ETag (a 304 without the body) "
            "so a deploy is seen at the next page load.",
        ],
        [
            "cache-immutable",
            None,
            None,
            "Regular expression searched in the request path of a static file: a match "
            "(a fingerprinted name such as app.3f2a9c1e.js) gets "
            "'public, max-age=31536000, immutable' (default: none).",
        ],
        [
            "sniff-timeout",
            None,
            str(_DEFAULTS.sniff_timeout),
            "Seconds to wait for a client's first bytes; a client that sends nothing "
            "for this long is a game session (for protocols where the server speaks first).",
        ],
        [
            "connect-timeout",
            None,
            str(_DEFAULTS.connect_timeout),
            "Seconds per backend connection attempt; a failed or timed-out attempt is "
            "retried on the next backend before any client byte is lost.",
        ],
        [
            "idle-timeout",
            None,
            str(_DEFAULTS.idle_timeout),
            "Close a game session with no traffic either way for this many seconds (0: never).",
        ],
        [
            "fin-timeout",
            None,
            str(_DEFAULTS.fin_timeout),
            "Close a game session where one side has ended its stream (a half-close, "
            "or a close the other side has not answered) once no byte has moved for "
            "this many seconds (0: never).",
        ],
        [
            "websocket-max-message",
            None,
            str(_DEFAULTS.websocket_max_message),
            "The largest WebSocket message a browser may send, in bytes; a larger one "
            "closes its session with code 1009.",
        ],
        [
            "websocket-ping",
            None,
            f"{_DEFAULTS.websocket_ping:g}",
            "Seconds between the pings sent to each browser, which keep proxies on the "
            "way from dropping a quiet player; a browser that has not answered one when "
            "the next is due is closed (0: no pings).",
        ],
        [
            "log-format",
            None,
            "text",
            "The gateway's own log (twistd's --logfile, or standard output): 'text' "
            "(twistd's lines) or 'json' (one JSON object per line with flat fields: time, "
            "level, namespace, message and the event's own fields).",
        ],
        [
            "queue-size",
            None,
            str(_DEFAULTS.queue_size),
            "Players who may wait at once, per pool, for a backend at its --max-sessions "
            "(the waiting room: a game session no backend can take waits in the gateway, "
            "first in, first out, its bytes held; 0: no waiting room, it is refused). "
            "Priority classes are [[queue-class]] tables in the --config file.",
        ],
        [
            "queue-timeout",
            None,
            f"{_DEFAULTS.queue_timeout:g}",
            "The longest wait, in seconds; then the player gets --busy-message and is "
            "closed (refusal 'queue-timeout').",
        ],
        [
            "queue-update",
            None,
            f"{_DEFAULTS.queue_update:g}",
            "The most often, in seconds, a waiting player is told their place (--queue-message).",
        ],
        [
            "queue-message",
            None,
            None,
            "One line (CRLF appended) told to a waiting player on entering the waiting room "
            "and when their place changes: a template with {position}, {length} and {eta} "
            "(seconds, '?' until known); {{ and }} are braces. Default: none, a silent "
            "wait (safe for any protocol).",
        ],
        *CLUSTER_PARAMETERS,
    ]

    def __init__(self, reactor: IReactorCore | None = None) -> None:
        """
        @param reactor: the reactor endpoint strings are checked against; the
            global reactor when L{None}.  Checking parses a string, it never
            listens or connects.
        """
        super().__init__()
        self._reactor = reactor
        self._listen: list[str] = []
        self._backends: list[str] = []
        self._websocket: list[str] = []
        self._origins: list[str] = []
        self._given: set[str] = set()
        # The admin token files read at start (as root, before twistd -u):
        # a reload as the dropped user keeps a token it cannot read again.
        self._tokens = TokenFiles()
        self.config = _DEFAULTS

    @override
    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # Note which settings the command line gives, so that they (and only
        # they) win over the --config file.
        for name, handler in list(self._dispatch.items()):
            self._dispatch[name] = self._recorder(name, handler)
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            raise usage.UsageError(did_you_mean(str(error), self.longOpt)) from None

    def _recorder(self, name: str, handler: Any) -> Any:
        def record(option: str, value: Any = None) -> Any:
            self._given.add(name)
            if isinstance(handler, usage.CoerceParameter):
                return handler.dispatch(option, value)
            return handler(option, value)

        return record

    @override
    def getUsage(self, width: int | None = None) -> str:
        """
        The options under topic headings (see L{gateway.cli}), not in one list.
        """
        return grouped_usage(self, width)

    def opt_listen(self, description: str) -> None:
        """A public front (repeatable; default tcp:8080): any Twisted server endpoint string, e.g. tcp:80, tcp:8080:interface=127.0.0.1, unix:/run/gw.sock."""  # noqa: E501
        self._listen.append(description)

    def opt_backend(self, description: str) -> None:
        """A game backend (repeatable; at least one unless --demo): any Twisted client endpoint string, e.g. tcp:10.0.0.5:7000, tls:game.example:7000, unix:/run/game.sock."""  # noqa: E501
        self._backends.append(description)

    def opt_websocket(self, path: str) -> None:
        """A request path (repeatable, e.g. /play) where a WebSocket upgrade, on any front (ws:// or wss://), becomes a game session: each message's bytes go to the game pool as a TCP stream, the backend's bytes come back as binary messages (text ones if the browser asks for the 'text' subprotocol)."""  # noqa: E501
        self._websocket.append(path)

    def opt_websocket_origin(self, origin: str) -> None:
        """An Origin (repeatable, e.g. https://game.example) a WebSocket upgrade may come from besides the request's own host; '*' allows any. Other origins get 403 (a page on another site cannot open sessions as its visitors)."""  # noqa: E501
        self._origins.append(origin)

    def opt_version(self) -> None:
        """Print the gateway's version and exit."""
        print(f"gateway {package_version()}")
        raise SystemExit(0)

    @override
    def parseArgs(self, *args: str) -> None:
        """
        Refuse positional arguments: every setting is an option.
        """
        if args:
            raise usage.UsageError(
                f"unexpected argument {args[0]!r}: every setting is an option, "
                "e.g. --backend tcp:HOST:PORT"
            )

    @override
    def postOptions(self) -> None:
        """
        Check every setting and build L{config}.

        @raise usage.UsageError: a setting is invalid; the message names it.
        """
        if self["config"] is not None:
            # Absolute now: twistd --rundir changes the folder before SIGHUP.
            self["config"] = os.path.abspath(self["config"])
        try:
            self.config = self._build()
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        if self["check-config"]:
            print(summary(self.config))
            self._print_ownership()
            raise SystemExit(0)

    def _print_ownership(self) -> None:
        """
        With twistd's C{-u}/C{-g} (the parent's C{uid} and C{gid}), what the
        files a reload reads need (see L{gateway.ownership}).
        """
        parent = getattr(self, "parent", None)
        uid = parent.get("uid") if isinstance(parent, usage.Options) else None
        if uid is None or uid == os.geteuid():
            return
        gid = parent.get("gid") if isinstance(parent, usage.Options) else None
        if gid is None:
            gid = pwd.getpwuid(uid).pw_gid
        for line in ownership_lines(self.config, uid, gid, self._tokens.paths()):
            print(line)

    def _build(self, *, reloading: bool = False) -> GatewayConfig:
        reactor = self._reactor
        if reactor is None:
            from gateway.process.leanreactor import install_default

            install_default()  # unless twistd -r (or a test runner) chose one
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert reactor is not None
        return self.rebuild(reactor, reloading=reloading)

    def rebuild_now(self) -> GatewayConfig:
        """
        L{rebuild} against the reactor the options were checked with, for a
        reload (the PEM folders of C{tls:} fronts are read where they are
        used, which keeps what it has if a folder went bad).
        """
        return self._build(reloading=True)

    def rebuild(self, reactor: IReactorCore, *, reloading: bool = False) -> GatewayConfig:
        """
        Build the configuration from the command line and the C{--config}
        file as it is now (on SIGHUP, L{rebuild_now} calls this again to
        re-read the file).

        @param reloading: for a reload: do not read the PEM folders of
            C{tls:} fronts here.
        @raise ConfigError: a setting is invalid; the message names it.
        """
        path = self["config"]
        defaults: dict[str, Any] = {str(p[0]): p[2] for p in self.optParameters}
        defaults.update({str(f[0]): False for f in self.optFlags})
        given = CommandLine(
            values={
                name: self[name]
                for name in self._given
                if name in self.opts and name not in ("config", "check-config")
            },
            defaults=defaults,
            listen=tuple(self._listen),
            backends=tuple(self._backends),
            websocket=tuple(self._websocket),
            origins=tuple(self._origins),
        )
        settings = merge_sources(path, given)
        return build_config(
            settings,
            reactor,
            config_file=os.path.abspath(path) if path else None,
            read_folders=not reloading,
            tokens=self._tokens,
        )


class Options(GatewayOptions):
    """
    The options of the twistd plugin: a bad setting stops start-up with one
    line on standard error and exit status 2, before anything is bound.
    """

    @override
    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            sys.stderr.write(f"gateway: error: {error} (see: twistd gateway --help)\n")
            raise SystemExit(2) from None


def makeService(options: dict[str, Any]) -> IService:  # noqa: N802 - the plugin contract
    """
    Build the gateway's service tree from parsed options (the IServiceMaker entry).

    @param options: a parsed L{GatewayOptions}.
    """
    from gateway.process.assemble import make_service

    assert isinstance(options, GatewayOptions)
    service = make_service(options.config, rebuild=options.rebuild_now)
    runner = getattr(options, "parent", None)
    if runner is None:
        return service
    from twisted.internet import reactor

    if options.config.log_format == "json":
        from gateway.ops.jsonlog import use_json_log

        return use_json_log(service, runner, reactor)
    from gateway.ops.logbuffer import text_line
    from gateway.ops.twistdlog import use_log

    return use_log(service, runner, text_line, reactor)
