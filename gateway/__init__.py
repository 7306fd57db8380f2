"""
gateway: one public port that serves HTTP itself and proxies stateful game
sessions (raw TCP, unchanged bytes) to a pool of backends.

Run it with C{twistd -n gateway --help}; the modules are described in
C{docs/architecture.md}.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
