"""
The WebSocket bridge's settings, checked: its paths, the origins allowed,
the largest message and the ping interval (L{websocket_settings}, called by
L{gateway.settings.build_config}).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.checks import ConfigError, check_count, check_line, check_seconds
from gateway.config import DEMO_WEBSOCKET

__all__ = ["MAX_WEBSOCKET_MESSAGE", "Source", "websocket_settings"]


class Source(Protocol):
    """
    Raw settings as L{gateway.settings.Settings} gives them.
    """

    def __getitem__(self, name: str) -> Any: ...

    def label(self, name: str) -> str: ...


MAX_WEBSOCKET_MESSAGE = 64 * 1024 * 1024
"""The largest C{--websocket-max-message} allowed (a message is relayed as it
arrives, but a bound this high protects nothing)."""


def websocket_settings(
    s: Source, *, demo: bool
) -> tuple[tuple[str, ...], tuple[str, ...], int, float]:
    """
    The WebSocket bridge: its paths (C{/play} for the demo when none is
    given), the origins allowed besides the request's own host, the largest
    message, and the ping interval.
    """
    label = s.label
    paths = list(s["websocket"] or ([DEMO_WEBSOCKET] if demo else []))
    for index, path in enumerate(paths):
        if (
            not path.startswith("/")
            or any(char in path for char in "?# ")
            or check_line(label("websocket"), path) != path
        ):
            raise ConfigError(
                f"{label('websocket')}: {path!r} is not a request path "
                "(it starts with '/', without a query, e.g. /play)"
            )
        if path in paths[:index]:
            raise ConfigError(f"{label('websocket')}: {path!r} is given twice")
    origins = []
    for origin in s["websocket-origin"] or []:
        origins.append(_origin(label("websocket-origin"), origin))
    text = s["websocket-max-message"]
    max_message = check_count(label("websocket-max-message"), text)
    if not 1 <= max_message <= MAX_WEBSOCKET_MESSAGE:
        raise ConfigError(
            f"{label('websocket-max-message')}: from 1 to {MAX_WEBSOCKET_MESSAGE} bytes, "
            f"got {text!r}"
        )
    ping = check_seconds(label("websocket-ping"), s["websocket-ping"], allow_zero=True)
    return tuple(paths), tuple(origins), max_message, ping


def _origin(option: str, text: str) -> str:
    """
    An origin as browsers send it (C{scheme://host[:port]}, lower case), or C{*}.
    """
    if text == "*":
        return text
    scheme, sep, rest = text.lower().partition("://")
    if (
        not sep
        or scheme not in ("http", "https")
        or not rest
        or any(char in rest for char in "/?# ")
        or check_line(option, text) != text
    ):
        raise ConfigError(
            f"{option}: {text!r} is not an origin (scheme://host[:port], "
            "e.g. https://game.example, or '*')"
        )
    return f"{scheme}://{rest}"
