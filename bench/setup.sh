#!/usr/bin/env bash
# Installs what the benchmark needs on a Debian machine (run as root): HAProxy (the
# reference column), redis and iperf3 (the load tools). The gateway and Twisted's
# portforward columns run from the project's own .venv (the README's install command).
set -euo pipefail
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy redis-server redis-tools iperf3 >/dev/null
# The packaged services must not hold ports or CPU while benchmarking.
for svc in haproxy redis-server; do
    service "$svc" stop >/dev/null 2>&1 || true
done
echo "bench setup done: $(haproxy -v | head -n1); $(redis-server --version | cut -d' ' -f1-3); $(iperf3 --version | head -n1)"
