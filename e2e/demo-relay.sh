#!/usr/bin/env bash
# Relay demo: three "servers" (network namespaces on one bridge). A remote
# sender sends to the service address 198.18.0.100:5000 held by gw; the relay
# on gw tees every datagram by multicast to the receivers on gw, a and b,
# which print each frame as a JSON line. Everything is removed at the end.
set -euo pipefail
bin=$(readlink -f "${1:-bin/driftgate}")
[ "$(id -u)" = 0 ] || { echo "demo: needs root to create network namespaces (try: sudo make demo)" >&2; exit 1; }
command -v ip >/dev/null || { echo "demo: needs iproute2 (apt-get install iproute2)" >&2; exit 1; }

p=dgdemo$$
rx=
tmp=$(mktemp -d)
cleanup() {
  for ns in $p-src $p-gw $p-a $p-b $p-br; do
    for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del $ns 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

ip netns add $p-br
ip -n $p-br link add br0 type bridge mcast_snooping 0
ip -n $p-br link set br0 up
n=10
for h in src gw a b; do
  n=$((n+1))
  ip netns add $p-$h
  ip -n $p-$h link set lo up
  ip -n $p-br link add p$n type veth peer name eth0 netns $p-$h
  ip -n $p-br link set p$n master br0 up
  ip -n $p-$h addr add 198.18.0.$n/24 dev eth0
  ip -n $p-$h link set eth0 up
done
ip -n $p-gw addr add 198.18.0.100/24 dev eth0

echo "== hosts: src 198.18.0.11, gw 198.18.0.12 (+ VIP 198.18.0.100), a 198.18.0.13, b 198.18.0.14"
for h in gw a b; do
  ip netns exec $p-$h "$bin" receive --group 239.255.0.1:5001 --iface eth0 --deliver stdout \
    >"$tmp/$h.out" 2>"$tmp/$h.log" &
  rx+=" $!"
done
ip netns exec $p-gw "$bin" relay --listen 198.18.0.100:5000 --group 239.255.0.1:5001 --iface eth0 --epoch 1 \
  2>"$tmp/relay.log" &
relay=$!
sleep 1
echo "== src sends 5 datagrams to 198.18.0.100:5000"
for i in 1 2 3 4 5; do
  ip netns exec $p-src bash -c "printf 'flight-plan %d' $i > /dev/udp/198.18.0.100/5000"
done
sleep 0.5
kill -TERM $relay $rx; wait $relay $rx || true
for h in gw a b; do
  echo "== receiver on $h got:"
  cat "$tmp/$h.out"
  grep '^receive:' "$tmp/$h.log"
done
echo "== relay summary:"
grep '^relay ' "$tmp/relay.log"
for h in gw a b; do
  [ "$(wc -l <"$tmp/$h.out")" = 5 ] || { echo "demo: receiver on $h got $(wc -l <"$tmp/$h.out") frames, want 5" >&2; exit 1; }
done
echo "== every server saw the same 5 frames (epoch 1, seq 1..5)"
