#!/usr/bin/env bash
# Renders the broker's status page in Debian's headless Chromium: starts a
# broker on its embedded MQTT server, publishes the state of three fake
# workers, checks the rendered DOM names them, and writes a screenshot to
# docs/status.png (or $1). Needs: chromium, mosquitto-clients.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/status.png}
dir=$(mktemp -d)
trap 'kill $bpid 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
go build -o "$dir/wgkex" .
mport=$((21000 + RANDOM % 5000)); hport=$((mport + 1))
WGKEX_MQTT_LISTEN=127.0.0.1:$mport WGKEX_BROKER_LISTEN_PORT=$hport \
  "$dir/wgkex" broker --config wgkex.example.yaml --log-level warn & bpid=$!
sleep 1
pub() { mosquitto_pub -p "$mport" -q 1 -r -t "$1" -m "$2"; }
key=o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=
i=0
for w in gw04.in.ffmuc.net gw05.in.ffmuc.net gw06.in.ffmuc.net; do
  i=$((i + 1))
  for d in ffmuc_welt ffmuc_muc_cty; do
    pub "wireguard-worker/$w/$d/data" "{\"ExternalAddress\":\"gw0$((i + 3)).ext.ffmuc.net\",\"Port\":4000$i,\"PublicKey\":\"$key\",\"LinkAddress\":\"fe80::27c:16ff:fec0:6c7$i\"}"
    pub "wireguard-metrics/$d/$w/connected_peers" "$((i * 17 + ${#d}))"
  done
  pub "wireguard-worker/$w/status" "$([ $i = 3 ] && echo 0 || echo 1)"
done
sleep 0.5
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --user-data-dir="$dir/profile")
dom=$(chromium "${flags[@]}" --dump-dom "http://127.0.0.1:$hport/" 2>/dev/null)
for want in gw04.in.ffmuc.net gw05.in.ffmuc.net gw06.in.ffmuc.net "gw04.ext.ffmuc.net:40001" offline; do
  grep -q "$want" <<<"$dom" || { echo "rendered page lacks $want"; exit 1; }
done
chromium "${flags[@]}" --window-size=1500,860 --screenshot="$PWD/$out" "http://127.0.0.1:$hport/" 2>/dev/null
echo "rendered OK; screenshot in $out"
