"""
The old import path of L{gateway.ops.registry}, which the README's Python API names:
kept working since the modules were grouped by the part of the data path they
serve (see docs/architecture.md).
"""

from gateway.ops.registry import (
    Counters as Counters,
)
from gateway.ops.registry import (
    LiveSession as LiveSession,
)
from gateway.ops.registry import (
    RefusalLog as RefusalLog,
)
from gateway.ops.registry import (
    SessionRegistry as SessionRegistry,
)

__all__ = ["Counters", "LiveSession", "RefusalLog", "SessionRegistry"]
