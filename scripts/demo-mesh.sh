#!/usr/bin/env bash
# Builds a whole test mesh on this machine (root): five hosts in their own
# network and mount namespaces on one bridge - a broker (embedded MQTT
# server), two gateways (dummy-iface + worker) and a node (client connect) -
# then pings the gateway across VXLAN-over-WireGuard. Everything goes away
# when the script ends (Ctrl-C, or after the pings with --once).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces)"; exit 1; }
dir=$(mktemp -d /tmp/wgkex-demo.XXXXXX)
go build -o "$dir/wgkex" .
declare -A pid
procs=()
cleanup() { kill "${procs[@]}" "${pid[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

host() { # name ip: a process holding fresh namespaces with a private /var/run/wireguard
  unshare --net --mount --propagation private sh -c \
    'mkdir -p /var/run/wireguard && mount -t tmpfs tmpfs /var/run/wireguard && ip link set lo up && exec sleep infinity' &
  pid[$1]=$!
  sleep 0.2
}
on() { local h=$1; shift; nsenter -t "${pid[$h]}" -n -m -- "$@"; }
bg() { local h=$1; shift; on "$h" "$@" >"$dir/$h-$(basename "$2").log" 2>&1 & procs+=($!); }

host broker; host gw1; host gw2; host node
on broker ip link add br0 type bridge
on broker ip addr add 10.99.0.1/24 dev br0
on broker ip link set br0 up
n=2
for h in gw1 gw2 node; do
  ip link add "demo-$h" type veth peer name eth0 netns "${pid[$h]}"
  ip link set "demo-$h" netns "${pid[broker]}"
  on broker ip link set "demo-$h" master br0 up
  on "$h" ip addr add "10.99.0.$n/24" dev eth0
  on "$h" ip link set eth0 up
  n=$((n + 1))
done

cat >"$dir/wgkex.yaml" <<CONF
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
broker_listen: {host: 10.99.0.1, port: 5000}
mqtt: {listen: "10.99.0.1:1883", username: demo, password: demo-secret}
CONF
W="$dir/wgkex"
bg broker "$W" broker --config "$dir/wgkex.yaml"
sleep 1
for gw in gw1 gw2; do
  bg "$gw" "$W" dummy-iface --config "$dir/wgkex.yaml"
  sleep 1
  on "$gw" env WGKEX_MQTT_BROKER_URL=10.99.0.1 WGKEX_EXTERNALNAME="$(on "$gw" ip -4 -o addr show eth0 | awk '{sub("/.*","",$4); print $4}')" \
    "$W" worker --config "$dir/wgkex.yaml" --name "$gw" >"$dir/$gw-worker.log" 2>&1 &
  procs+=($!)
done
sleep 2
echo "== wgkex client push (v1)"
on node "$W" client push --broker http://10.99.0.1:5000 --domain ffmuc_welt --api v1 \
  --public-key TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=
echo "== node: wgkex client connect"
on node "$W" client connect --broker http://10.99.0.1:5000 --domain ffmuc_welt \
  --private-key-file "$dir/node.key" --watch >"$dir/node.log" 2>&1 &
procs+=($!)
for _ in $(seq 50); do grep -q connected: "$dir/node.log" && break; sleep 0.2; done
grep connected: "$dir/node.log"
echo "== node: ping the gateway across VXLAN over WireGuard"
for _ in $(seq 20); do on node ping -6 -c 1 -W 1 fe80::1%vx-mesh >/dev/null 2>&1 && break; sleep 0.5; done
on node ping -6 -c 3 fe80::1%vx-mesh
echo "== the node's key on both gateways"
for gw in gw1 gw2; do echo "-- $gw"; on "$gw" wg show wg-welt allowed-ips; on "$gw" bridge fdb show dev vx-welt; done
[ "${1:-}" = --once ] && exit 0
echo "mesh is up; logs in $dir; Ctrl-C tears it down"
sleep infinity
