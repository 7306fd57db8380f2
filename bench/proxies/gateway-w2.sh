#!/usr/bin/env bash
# The gateway with two worker processes behind its acceptor (--workers 2): compare with
# haproxy-mt (two threads). CPU and memory are summed over the process tree.
set -euo pipefail
GATEWAY_ARGS="--workers 2 ${GATEWAY_ARGS:-}" exec "$(dirname "$0")/gateway.sh" "$@"
