"""
The start-up summary: one log line, once every front listens, that says what
the gateway serves (fronts and their bound addresses, pools and backends,
routes, limits, the admin endpoint), so an operator reading the log, or a
shipper's query, finds it in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import Service
from twisted.logger import Logger
from typing_extensions import override

from gateway.config import GatewayConfig
from gateway.process.listener import FrontListener

__all__ = ["StartSummary", "describe"]

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
