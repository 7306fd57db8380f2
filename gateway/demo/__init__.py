"""
The built-in demo of C{twistd -n gateway --demo}: a small multi-player game to
run in-process as game backends, and a page to serve as the HTTP root.

L{HiLoFactory} is the game server (one per demo backend, each with its own
name); L{SITE_DIR} is the folder of the demo page.
"""

import os

from gateway.demo.game import HiLoFactory

__all__ = ["SITE_DIR", "HiLoFactory"]

SITE_DIR: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
"""Absolute path of the folder holding the demo page (C{index.html})."""
