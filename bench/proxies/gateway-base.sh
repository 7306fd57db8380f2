#!/usr/bin/env bash
# The gateway package of another checkout (GATEWAY_BASE=DIR, first on PYTHONPATH), run with
# this project's venv: a before/after in one interleaved run
# (git worktree add --detach DIR main).
set -euo pipefail
[[ -n ${GATEWAY_BASE:-} && -d ${GATEWAY_BASE}/gateway ]] || {
    [[ ${1:-} == --check ]] && { echo "not available: set GATEWAY_BASE to a checkout"; exit 1; }
    echo "gateway-base.sh: GATEWAY_BASE must be a checkout with gateway/" >&2; exit 2
}
PYTHONPATH="$GATEWAY_BASE${PYTHONPATH:+:$PYTHONPATH}" exec "$(dirname "$0")/gateway.sh" "$@"
