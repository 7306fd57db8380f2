#!/usr/bin/env bash
# Profile the gateway under one workload with py-spy (sampling, outside the process):
#
#   bench/profile.sh bulk|churn [WORKERS]
#
# bulk:  iperf3 -t 5 through the gateway (an iperf3 server as its backend);
# churn: redis-benchmark -t ping -k 0 -c 20 -n 12000 (a new session per request).
# Needs iperf3 / redis from bench/setup.sh and py-spy (.venv/bin/pip install -e '.[bench]').
# Prints the workload's own figure, the processes' CPU seconds, and the hottest frames of
# the gateway (with WORKERS > 1: of worker 1, then of the acceptor). Loopback only; every
# process started here is stopped by its PID. PROFILE_KEEP=DIR keeps the raw profiles there
# (folded stacks, for bench/profile_areas.py or an inclusive view).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv=${GATEWAY_VENV:-$here/../.venv}
workload=${1:?usage: bench/profile.sh bulk|churn [WORKERS]}
workers=${2:-1}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/profile.XXXXXX")
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; sleep 0.5; rm -rf "$tmp"; }
trap cleanup EXIT
port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
front=$(port); back=$(port)
case $workload in
    bulk) iperf3 -s -p "$back" -1 >/dev/null 2>&1 & pids+=($!) ;;
    churn) redis-server --port "$back" --save '' --appendonly no >/dev/null 2>&1 & pids+=($!) ;;
    *) echo "profile.sh: bulk or churn, not '$workload'" >&2; exit 2 ;;
esac
"$venv/bin/twistd" -n --pidfile= --logfile "$tmp/gateway.log" gateway \
    --listen "tcp:$front:interface=127.0.0.1" --backend "tcp:127.0.0.1:$back" \
    --admin none --health-interval 0 --workers "$workers" & gateway=$!
pids+=("$gateway")
sleep 3
targets=("$gateway")
if ((workers > 1)); then targets=("$(pgrep -P "$gateway" | head -n 1)" "$gateway"); fi
ticks() { for pid in "$gateway" $(pgrep -P "$gateway" || true); do awk '{print $14 + $15}' "/proc/$pid/stat"; done | paste -sd+ | bc; }
for i in "${!targets[@]}"; do
    "$venv/bin/py-spy" record --pid "${targets[$i]}" --duration 8 --rate 200 --format raw \
        --output "$tmp/profile-$i.txt" --nonblocking >/dev/null 2>&1 &
    pids+=($!)
done
sleep 0.5
before=$(ticks); start=$(date +%s.%N)
case $workload in
    bulk) iperf3 -c 127.0.0.1 -p "$front" -t 5 | grep receiver ;;
    churn) redis-benchmark -p "$front" -t ping -k 0 -c 20 -n 12000 2>/dev/null | grep -a "requests per second" | tail -n 1 ;;
esac
after=$(ticks); end=$(date +%s.%N)
echo "gateway CPU (all its processes): $(echo "($after - $before) / 100" | bc -l | cut -c1-5) s in $(echo "$end - $start" | bc -l | cut -c1-4) s"
sleep 8
[[ -n ${PROFILE_KEEP:-} ]] && mkdir -p "$PROFILE_KEEP" && cp "$tmp"/profile-*.txt "$PROFILE_KEEP"/
for i in "${!targets[@]}"; do
    echo; echo "== pid ${targets[$i]} $( ((workers > 1 && i == 0)) && echo '(worker 1)' || echo '')"
    "$venv/bin/python" - "$tmp/profile-$i.txt" <<'PY'
import collections, sys
own = collections.Counter(); total = 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack:
        continue
    total += int(count)
    own[stack.split(";")[-1]] += int(count)
print(f"{total} samples; hottest frames (own time):")
for frame, count in own.most_common(12):
    print(f"  {100 * count / total:5.1f}%  {frame}")
PY
done
