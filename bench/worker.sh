#!/usr/bin/env bash
# Worker benchmark (root: it runs in its own network and mount namespaces):
# a burst of 10,000 distinct keys published on one domain to a real
# Mosquitto, timed until every peer, route and FDB entry is installed
# (userspace WireGuard from `wgkex dummy-iface` in another process); then
# single-key latency (MQTT delivery to all three entries), a metrics pass, a
# cleanup scan and a cleanup removing all 10,200 peers; the worker's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin
go test ./pkg/worker -run '^$' -bench 'BenchmarkBurst10k' -timeout 10m | grep -E '^Benchmark' | head -1 |
  tr '\t' '\n' | sed -e 's/^ *//' | grep -v '^$'
