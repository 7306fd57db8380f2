#!/usr/bin/env bash
# The gateway with its TCP fast path turned off (--no-tcp-fast-path): every backend connected
# through Twisted's endpoints and transports (still spliced).
set -euo pipefail
GATEWAY_ARGS="--no-tcp-fast-path ${GATEWAY_ARGS:-}" exec "$(dirname "$0")/gateway.sh" "$@"
