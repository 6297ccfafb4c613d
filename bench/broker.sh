#!/usr/bin/env bash
# Broker load test: v1 and v2 against a real Mosquitto with retained fake
# workers on four domains, at 16 and 256 connections, beside a bare net/http
# ceiling measured in the same run. Needs wrk, mosquitto, mosquitto-clients.
# Usage: bench/broker.sh [seconds per run, default 10]
# RATE_PER_CLIENT, RATE_GLOBAL (requests/s; default 0: off) and BLOCKLIST (a key list
# file) run the broker with its rate limiter and block list, for the with/without figures.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
out=bench/out; mkdir -p "$out"
for b in wrk mosquitto mosquitto_pub; do
  command -v "$b" >/dev/null || PATH=$PATH:/usr/sbin command -v "$b" >/dev/null || { echo "missing $b (apt-get install wrk mosquitto mosquitto-clients)"; exit 1; }
done
export PATH=$PATH:/usr/sbin
go build -o "$out/wgkex" .
go build -o "$out/ceiling" ./bench/ceiling

mport=$((20000 + RANDOM % 10000)); hport=$((mport + 1)); cport=$((mport + 2))
cat > "$out/mosquitto.conf" <<CONF
listener $mport 127.0.0.1
allow_anonymous true
persistence false
CONF
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
mosquitto -c "$out/mosquitto.conf" & pids+=($!); mpid=$!
sleep 0.5

domains="ffmuc_welt ffmuc_muc_cty ffmuc_muc_nord ffwert_city"
key=o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=
for w in 1 2 3; do
  for d in $domains; do
    mosquitto_pub -p $mport -q 1 -r -t "wireguard-worker/gw$w/$d/data" \
      -m "{\"ExternalAddress\":\"gw$w.ext.example.net\",\"Port\":4000$w,\"PublicKey\":\"$key\",\"LinkAddress\":\"fe80::$w\"}"
    mosquitto_pub -p $mport -q 1 -r -t "wireguard-metrics/$d/gw$w/connected_peers" -m $((w * 10))
  done
  mosquitto_pub -p $mport -q 1 -r -t "wireguard-worker/gw$w/status" -m 1
done

WGKEX_MQTT_BROKER_URL=127.0.0.1 WGKEX_MQTT_BROKER_PORT=$mport WGKEX_BROKER_LISTEN_PORT=$hport \
  WGKEX_BROKER_KNOWN_WORKERS_ONLY=false WGKEX_BROKER_RATE_LIMIT_PER_CLIENT=${RATE_PER_CLIENT:-0} \
  WGKEX_BROKER_RATE_LIMIT_GLOBAL=${RATE_GLOBAL:-0} WGKEX_BROKER_BLOCKLIST_FILE=${BLOCKLIST:-} \
  CPUPROF=${CPUPROF:-} "$out/wgkex" broker --config wgkex.example.yaml --log-level error & pids+=($!); bpid=$!
"$out/ceiling" -listen 127.0.0.1:$cport & pids+=($!); cpid=$!
sleep 1.5

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # name url conns server-pid
  local line b0 m0
  b0=$(ticks "$4"); m0=$(ticks "$mpid")
  line=$(wrk -t2 -c"$3" -d"${dur}s" --latency -s bench/post.lua "$2" | grep '^RESULT')
  # CPU seconds the server and Mosquitto used during the run (wrk uses the rest).
  printf '%-8s conns=%-4s %s server_cpu_s=%s mosquitto_cpu_s=%s\n' "$1" "$3" "${line#RESULT }" \
    "$(echo "scale=2; ($(ticks "$4") - $b0) / 100" | bc)" "$(echo "scale=2; ($(ticks "$mpid") - $m0) / 100" | bc)"
}
echo "# broker benchmark $(date -u +%FT%TZ), $(nproc) cores, ${dur}s per run"
for c in 16 256; do
  run ceiling "http://127.0.0.1:$cport/" $c $cpid
  run v1 "http://127.0.0.1:$hport/api/v1/wg/key/exchange" $c $bpid
  run v2 "http://127.0.0.1:$hport/api/v2/wg/key/exchange" $c $bpid
done
