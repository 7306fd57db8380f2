"""
The old import path of L{gateway.front.limits}, which the README's Python API names:
kept working since the modules were grouped by the part of the data path they
serve (see docs/architecture.md).
"""

from gateway.front.limits import (
    RATE_TABLE_SIZE as RATE_TABLE_SIZE,
)
from gateway.front.limits import (
    AddressCap as AddressCap,
)
from gateway.front.limits import (
    AddressLimits as AddressLimits,
)
from gateway.front.limits import (
    AddressRate as AddressRate,
)
from gateway.front.limits import (
    Refusal as Refusal,
)
from gateway.front.limits import (
    TotalCap as TotalCap,
)
from gateway.front.limits import (
    address_key as address_key,
)
from gateway.front.limits import (
    default_burst as default_burst,
)

__all__ = [
    "RATE_TABLE_SIZE",
    "AddressCap",
    "AddressLimits",
    "AddressRate",
    "Refusal",
    "TotalCap",
    "address_key",
    "default_burst",
]
