#!/usr/bin/env bash
# The gateway on Twisted's asyncio reactor over uvloop (twistd -r uvloop; needs uvloop in the
# venv: pip install -e '.[uvloop]').
set -euo pipefail
TWISTD_ARGS="-r uvloop ${TWISTD_ARGS:-}" exec "$(dirname "$0")/gateway.sh" "$@"
