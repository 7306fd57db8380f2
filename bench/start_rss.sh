#!/bin/bash
# RSS at start, no connections (issue 18): each command is started ROUNDS
# times, interleaved, and its VmRSS read once it has been steady for a second
# (at most 15 s).  The floors are a bare reactor and twistd's portforward.
#
#   bench/start_rss.sh [ROUNDS]    (GATEWAY_BASE=/path/to/other/checkout adds
#                                   a "base" column run with that checkout's venv)
# Run by hand; loopback only; every process started here is killed by its PID.
set -u
rounds=${1:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
py=$here/.venv/bin/python
backend=$("$py" -c "from tests.support import closed_port; print(closed_port())")
root=$(mktemp -d)
echo hello >"$root/index.html"
trap 'rm -rf "$root"' EXIT

steady_rss() {
    "$@" >/dev/null 2>&1 &
    local pid=$! prev=0 same=0 rss=0
    for _ in $(seq 60); do
        sleep 0.25
        rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null)
        [ -z "$rss" ] && { echo died; return; }
        if [ "$rss" = "$prev" ]; then same=$((same + 1)); else same=0; fi
        prev=$rss
        [ $same -ge 4 ] && break
    done
    kill "$pid"
    wait "$pid" 2>/dev/null
    awk "BEGIN{printf \"%.1f\", $rss / 1024}"
}

gw() {
    local venv=$1
    shift
    (cd "$root" && steady_rss "$venv/bin/twistd" -n --pidfile= gateway \
        --listen tcp:0:interface=127.0.0.1 --backend "tcp:127.0.0.1:$backend" "$@")
}

declare -A cmds=(
    [reactor]="steady_rss $py -c 'from twisted.internet import reactor; reactor.run()'"
    [portforward]="steady_rss $here/.venv/bin/twistd -n --pidfile= portforward -p tcp:0:interface=127.0.0.1 -h 127.0.0.1 -d $backend"
    [gw-admin-none]="gw $here/.venv --admin none"
    [gw-admin]="gw $here/.venv --admin tcp:0:interface=127.0.0.2"
    [gw-http-root]="gw $here/.venv --admin none --http-root $root"
)
order=(reactor portforward gw-admin-none gw-admin gw-http-root)
if [ -n "${GATEWAY_BASE:-}" ]; then
    cmds[base-admin-none]="gw $GATEWAY_BASE/.venv --admin none"
    order+=(base-admin-none)
fi
for name in "${order[@]}"; do printf '%-16s' "$name"; done
echo
for _ in $(seq "$rounds"); do
    for name in "${order[@]}"; do printf '%-16s' "$(eval "${cmds[$name]}")"; done
    echo
done
