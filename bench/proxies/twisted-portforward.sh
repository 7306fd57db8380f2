#!/usr/bin/env bash
# Twisted's stock port forwarder: twistd portforward (single backend only).
#   env TWISTED_VENV  venv holding twistd (default: the project's .venv, which has Twisted)
# twistd logs every connection (the per-connection ProxyClientFactory is "noisy"); the log
# goes to /dev/null here but its formatting cost is part of what this anchor measures.
set -euo pipefail
. "$(dirname "$0")/_common.sh"
venv=${TWISTED_VENV:-$(cd "$(dirname "$0")/../.." && pwd)/.venv}

if [[ ${1:-} == --check ]]; then
    [[ -x $venv/bin/twistd ]] || unavailable "$venv/bin/twistd not found (set TWISTED_VENV)"
    "$venv/bin/python" -c 'import sys, twisted; print("Twisted", twisted.__version__, "on Python", sys.version.split()[0])'
    exit 0
fi
parse_args "$@"
[[ ${#backends[@]} -eq 1 ]] || die "twistd portforward takes exactly one backend, got ${#backends[@]}"
raise_nofile
host=${backends[0]%:*}
port=${backends[0]##*:}
quiet_stdout
exec "$venv/bin/twistd" -n --pidfile= portforward \
    -p "tcp:$listen_port:interface=127.0.0.1" -h "$host" -d "$port"
