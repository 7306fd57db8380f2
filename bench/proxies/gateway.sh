#!/usr/bin/env bash
# Our gateway (twistd plugin "gateway"), from the venv in $GATEWAY_VENV (default: ./.venv when
# the bench is started from the project's root, else the venv of the first twistd on PATH).
#   env GATEWAY_ARGS  extra options appended to the command line (word-split)
#   env TWISTD_ARGS   extra twistd options before the plugin name (word-split), e.g. -r uvloop
# When the plugin knows --admin, the admin endpoint is turned off (--admin none) so that
# benchmark instances never compete for its default port.
set -euo pipefail
. "$(dirname "$0")/_common.sh"
# The project's own venv unless told otherwise.
venv=${GATEWAY_VENV:-$(cd "$(dirname "$0")/../.." && pwd)/.venv}
twistd=$venv/bin/twistd

check() {
    [[ -x $twistd ]] || unavailable "$twistd not found (set GATEWAY_VENV to the gateway's venv)"
    local help
    help=$("$twistd" --help 2>&1) || unavailable "$twistd --help failed: $(tail -n1 <<<"$help")"
    grep -Eq '^[[:space:]]+gateway([[:space:]]|$)' <<<"$help" \
        || unavailable "$twistd has no 'gateway' plugin (twistd --help does not list it)"
}

if [[ ${1:-} == --check ]]; then
    check
    "$venv/bin/python" - <<'PY' 2>/dev/null || echo "gateway (version unknown)"
import importlib.metadata as md, sys
try:
    v = md.version("gateway")
except md.PackageNotFoundError:
    v = "(not installed as a distribution)"
import twisted
print("gateway", v, "· Twisted", twisted.__version__, "· Python", sys.version.split()[0])
PY
    exit 0
fi
parse_args "$@"
check >&2
raise_nofile
args=(--listen "tcp:$listen_port:interface=127.0.0.1")
for b in "${backends[@]}"; do
    args+=(--backend "tcp:${b%:*}:${b##*:}")
done
# No admin endpoint, no health probes (they would disturb iperf3's control connection).
args+=(--admin none --health-interval 0)
# shellcheck disable=SC2206
extra=(${GATEWAY_ARGS:-})
# shellcheck disable=SC2206
twistd_extra=(${TWISTD_ARGS:-})
quiet_stdout
exec "$twistd" -n --pidfile= "${twistd_extra[@]}" gateway "${args[@]}" "${extra[@]}"
