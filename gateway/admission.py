"""
The old import path of L{gateway.front.admission}, which the README's Python API names:
kept working since the modules were grouped by the part of the data path they
serve (see docs/architecture.md).
"""

from gateway.front.admission import (
    ANSWER_GRACE as ANSWER_GRACE,
)
from gateway.front.admission import (
    AddressGate as AddressGate,
)
from gateway.front.admission import (
    CapFactory as CapFactory,
)
from gateway.front.admission import (
    CapState as CapState,
)
from gateway.front.admission import (
    Held as Held,
)
from gateway.front.admission import (
    RefusalFactory as RefusalFactory,
)
from gateway.front.admission import (
    Refuser as Refuser,
)
from gateway.front.admission import (
    Responder as Responder,
)
from gateway.front.admission import (
    with_close_hook as with_close_hook,
)

__all__ = [
    "ANSWER_GRACE",
    "AddressGate",
    "RefusalFactory",
    "CapFactory",
    "CapState",
    "Held",
    "Refuser",
    "Responder",
    "with_close_hook",
]
