#!/usr/bin/env bash
# Static files, before/after: two checkouts of the gateway side by side, one run, interleaved.
#
#   bench/static_ab.sh BEFORE_DIR AFTER_DIR [ROUNDS]
#
# Each checkout's gateway runs from this project's .venv with PYTHONPATH pointing at that
# checkout (so no second venv is needed), on loopback, serving a 2,500-byte file and a 1 MiB
# file.  wrk (Debian package) loads each for 5 s with 50 connections: keep-alive for both
# files, and `Connection: close` for the small one.  Prints one line per cell; compare the
# medians.  Run by hand, never in CI.  Kills only the two gateways it started.
set -euo pipefail
before=$(cd "$1" && pwd)
after=$(cd "$2" && pwd)
rounds=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
twistd="$here/.venv/bin/twistd"
work=$(mktemp -d)
mkdir -p "$work/root"
head -c 1875 /dev/urandom | base64 -w0 > "$work/root/small.txt"
head -c 1048576 /dev/urandom > "$work/root/big.bin"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # checkout port
  (cd "$work" && PYTHONPATH="$1" exec "$twistd" -n --pidfile= -l "$work/gw-$2.log" gateway \
    --listen "tcp:$2:interface=127.0.0.1" --http-root "$work/root" --admin none \
    --health-interval 0 --max-connections 0 --backend tcp:127.0.0.1:1) \
    > "$work/out-$2.txt" 2>&1 &
  pids+=($!)
}
start "$before" 18081
start "$after" 18082
sleep 3
rate() { wrk -t1 -c50 -d5s "$@" 2>/dev/null | awk '/Requests\/sec/ {print $2}'; }
for round in $(seq "$rounds"); do
  for port in 18081 18082; do
    name=$([ "$port" = 18081 ] && echo before || echo after)
    echo "round $round $name small keep-alive $(rate "http://127.0.0.1:$port/small.txt")"
    echo "round $round $name big keep-alive $(rate "http://127.0.0.1:$port/big.bin")"
    echo "round $round $name small close $(rate -H 'Connection: close' "http://127.0.0.1:$port/small.txt")"
  done
done
