#!/usr/bin/env bash
# What idle connections cost the broker: N clients each send the start of a
# request header and nothing more (redialling when the broker hangs up) for
# the hold time, while the broker's VmRSS/VmHWM and open descriptors are
# sampled from /proc. The broker runs with its embedded MQTT server.
# Usage: bench/idleconns.sh [connections, default 20000] [seconds, default 20]
# WGKEX_BIN=path measures another build (e.g. an older release) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
hold=${2:-20}
out=bench/out; mkdir -p "$out"
# Each side needs a descriptor per connection.
ulimit -n "$(ulimit -Hn)"
bin=${WGKEX_BIN:-$out/wgkex}
[ -n "${WGKEX_BIN:-}" ] || go build -o "$bin" .
go build -o "$out/idleconns" ./bench/idleconns

mport=$((20000 + RANDOM % 10000)); hport=$((mport + 1))
cat > "$out/idleconns.yaml" <<CONF
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
mqtt: {listen: "127.0.0.1:$mport"}
broker_listen: {host: 127.0.0.1, port: $hport}
CONF
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$bin" broker --config "$out/idleconns.yaml" --log-level error & pids+=($!); bpid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$hport/healthz" >/dev/null && break
  sleep 0.1
done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$bpid/status"; }

# A client process holds at most this many (its own descriptor limit).
per=$(( $(ulimit -n) - 100 )); procs=$(( (n + per - 1) / per )); share=$(( n / procs ))
echo "# idle connections: $n over ${hold}s, $procs client process(es), open-files limit $(ulimit -n), somaxconn $(cat /proc/sys/net/core/somaxconn)"
echo "broker idle: rss_kib=$(rss)"
cpids=()
for i in $(seq "$procs"); do
  if [ "$i" = 1 ]; then
    "$out/idleconns" -addr "127.0.0.1:$hport" -n "$share" -hold "${hold}s" -pid "$bpid" & cpids+=($!)
  else
    "$out/idleconns" -addr "127.0.0.1:$hport" -n "$share" -hold "${hold}s" >/dev/null & cpids+=($!)
  fi
done
# A real request in the middle of it: how long does it wait?
sleep $((hold / 2))
echo "broker during: $(curl -s -o /dev/null -w 'healthz=%{http_code} seconds=%{time_total}' -m 30 "http://127.0.0.1:$hport/healthz" || true)"
wait "${cpids[@]}"
# Does it still answer, and what does it hold once the clients are gone?
code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "http://127.0.0.1:$hport/healthz" || true)
sleep 2
echo "broker after: rss_kib=$(rss) healthz=$code"
