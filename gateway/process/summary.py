"""
The start-up summary: one log line, once every front listens, that says what
the gateway serves (fronts and their bound addresses, pools and backends,
routes, limits, the admin endpoint), so an operator reading the log, or a
shipper's query, finds it in one place; then, on a line of its own, the
URL of the admin endpoint's dashboard, to open in a browser.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from typing_extensions import override

from gateway.config import GatewayConfig
from gateway.process.listener import FrontListener

__all__ = ["StartSummary", "dashboard_url", "describe"]

LISTED = 8
"""The most backends named per pool; the others are counted."""


def _front(listener: FrontListener) -> str:
    address = listener.address
    return listener.description if address is None else f"{listener.description} ({address})"


def _backends(config: GatewayConfig, pool: str) -> str:
    names = [backend.name for backend in config.backends if backend.pool == pool]
    if not names:
        return "(demo)" if config.demo and pool == config.game_pool.name else "none"
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _cap(value: float, unit: str = "") -> str:
    return f"{value:g}{unit}" if value else "none"


def describe(
    config: GatewayConfig, fronts: Sequence[FrontListener], admin: FrontListener | None
) -> dict[str, object]:
    """
    The summary's fields, and its text (C{summary}).
    """
    listed = [_front(front) for front in fronts]
    pools = [
        f"pool {spec.name} ({spec.balance}): {_backends(config, spec.name)}"
        for spec in config.pool_specs()
    ]
    overflow = f" ({config.overflow})" if config.max_connections else ""
    limits = (
        f"max-connections {_cap(config.max_connections)}{overflow}, "
        f"max-per-ip {_cap(config.max_per_ip)}, rate-per-ip {_cap(config.rate_per_ip, '/s')}"
    )
    admin_text = "none" if admin is None else _front(admin)
    parts = [
        f"fronts {', '.join(listed) or 'none'}",
        *pools,
        f"{len(config.routes)} route{'' if len(config.routes) == 1 else 's'}",
        f"limits {limits}",
        f"admin {admin_text}",
    ]
    if config.workers > 1:
        parts.append(f"{config.workers} workers")
    return {
        "summary": "; ".join(parts),
        "fronts": listed,
        "pools": [spec.name for spec in config.pool_specs()],
        "backends": len(config.backends),
        "routes": len(config.routes),
        "max_connections": config.max_connections,
        "max_per_ip": config.max_per_ip,
        "rate_per_ip": config.rate_per_ip,
        "admin": None if admin is None else (admin.address or admin.description),
        "workers": config.workers,
    }


_ANY = ("0.0.0.0", "::")
"""Addresses that mean every interface: the URL names the host instead."""


def dashboard_url(admin: FrontListener) -> str | None:
    """
    The URL of the dashboard on the admin endpoint, once it listens:
    C{https} for a C{tls:} or C{ssl:} endpoint, the bound address and port
    (the host's name for an endpoint bound to every interface).

    @return: L{None} while it does not listen, or for a UNIX socket (which a
        browser cannot open).
    """
    port = admin.port
    if port is None:
        return None
    host = port.getHost()
    if not isinstance(host, IPv4Address | IPv6Address):
        return None
    scheme = "https" if admin.description.startswith(("tls:", "ssl:")) else "http"
    name = socket.gethostname() if host.host in _ANY else host.host
    if ":" in name:
        name = f"[{name}]"
    return f"{scheme}://{name}:{host.port}/"


class StartSummary(Service):
    """
    Logs the start-up summary when it starts: after the fronts, which bind
    before any service starts (in C{privilegedStartService}).
    """

    _log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        fronts: Sequence[FrontListener],
        admin: FrontListener | None,
    ) -> None:
        """
        @param fronts: the public fronts.
        @param admin: the admin endpoint's listener, unless turned off.
        """
        self._config = config
        self._fronts = list(fronts)
        self._admin = admin

    @override
    def startService(self) -> None:
        super().startService()
        self._log.info(
            "gateway started: {summary}", **describe(self._config, self._fronts, self._admin)
        )
        url = None if self._admin is None else dashboard_url(self._admin)
        if url is not None:
            self._log.info("dashboard: {dashboard}", dashboard=url)
