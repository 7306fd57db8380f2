#!/usr/bin/env bash
# The gateway with its zero-copy relay turned off (--relay copy): every byte through Python.
set -euo pipefail
GATEWAY_ARGS="--relay copy ${GATEWAY_ARGS:-}" exec "$(dirname "$0")/gateway.sh" "$@"
