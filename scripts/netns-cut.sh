#!/usr/bin/env bash
# A network cut between real hosts: NODES nodes, each in a network namespace of its own on one
# bridge (10.77.0.i, port 5000; the default maintenance interval of 1 s), KEYS keys written
# through the first. Then one node's link is cut for CUT seconds (`ip link set ... down` on its
# side of the bridge) and restored. The others heal around it meanwhile; once it can reach them
# again it must find that another peer owns its id and join again. After SETTLE seconds, every
# node's ABD must be its true successor and every key must read back with its value. Needs root
# and iproute2; leaves nothing behind (namespaces, bridges, processes, data).
#
# SPLIT="2 4 6" partitions instead: those nodes move to a second bridge for CUT seconds, so that
# each half goes on as a ring of its own and takes KEYS more keys, written from inside one of
# its namespaces; then the bridges are joined again and the two rings must become one, with
# every key of both halves read back.
#
#     cargo build --release && sudo scripts/netns-cut.sh
#     NODES=5 CUT=30 WHICH=3 scripts/netns-cut.sh          # another ring, a longer cut
#     NODES=6 SPLIT="2 4 6" scripts/netns-cut.sh            # a partition into two rings
#     BIN=/path/to/other/dht-store scripts/netns-cut.sh     # another build, to compare
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-target/release/dht-store}")
NODES=${NODES:-3}
KEYS=${KEYS:-300}
CUT=${CUT:-15}
SETTLE=${SETTLE:-20}
WHICH=${WHICH:-2}
SPLIT=${SPLIT:-}
TAG=dc$$
DIR=$(mktemp -d "${TMPDIR:-/tmp}/netns-cut.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for i in $(seq "$NODES"); do ip netns del "$TAG-$i" 2>/dev/null || true; done
  ip link del "$TAG-br" 2>/dev/null || true
  ip link del "$TAG-b2" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

ip link add "$TAG-br" type bridge
ip addr add 10.77.0.254/24 dev "$TAG-br"
ip link set "$TAG-br" up
for i in $(seq "$NODES"); do
  ip netns add "$TAG-$i"
  ip link add "$TAG-h$i" type veth peer name "$TAG-n$i"
  ip link set "$TAG-n$i" netns "$TAG-$i"
  ip -n "$TAG-$i" addr add "10.77.0.$i/24" dev "$TAG-n$i"
  ip -n "$TAG-$i" link set "$TAG-n$i" up
  ip -n "$TAG-$i" link set lo up
  ip link set "$TAG-h$i" master "$TAG-br"
  ip link set "$TAG-h$i" up
done

for i in $(seq "$NODES"); do
  join=()
  if [ "$i" -gt 1 ]; then join=(--join 10.77.0.1:5000); fi
  ip netns exec "$TAG-$i" "$BIN" --data "$DIR/n$i" --host "10.77.0.$i" --port 5000 "${join[@]}" \
    2>"$DIR/n$i.log" &
  PIDS+=($!)
  for _ in $(seq 100); do "$BIN" info --peer "10.77.0.$i:5000" >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "ring of $NODES in network namespaces; writing $KEYS keys"
for k in $(seq "$KEYS"); do "$BIN" put "cut-$k" "value $k" --peer 10.77.0.1:5000 >/dev/null; done

# Each node's ABD against the true ring order; prints what is wrong, nothing if all is well.
check_ring() {
  python3 - "$NODES" "$BIN" <<'EOF'
import hashlib, subprocess, sys
n, bin_ = int(sys.argv[1]), sys.argv[2]
addrs = [f"10.77.0.{i}:5000" for i in range(1, n + 1)]
ring = sorted(addrs, key=lambda a: hashlib.sha1(a.encode()).digest())
for i, a in enumerate(ring):
    want = ring[(i + 1) % len(ring)]
    out = subprocess.run([bin_, "info", "--peer", a], capture_output=True, text=True).stdout
    got = next((l.split()[1] for l in out.splitlines() if l.startswith("successor ")), "no answer")
    if got != want:
        print(f"{a}: successor {got}, should be {want}")
EOF
}
wrong=$(check_ring)
[ -z "$wrong" ] || { echo "the ring was not whole before the cut: $wrong"; exit 1; }

# Writes `cut-$from..` keys through node $via, from inside node $via's namespace.
put_from() {
  local via=$1 from=$2 to=$3
  for k in $(seq "$from" "$to"); do
    ip netns exec "$TAG-$via" "$BIN" put "cut-$k" "value $k" --peer "10.77.0.$via:5000" >/dev/null
  done
}
if [ -z "$SPLIT" ]; then
  echo "cutting 10.77.0.$WHICH off for $CUT s"
  ip link set "$TAG-h$WHICH" down
  sleep "$CUT"
  ip link set "$TAG-h$WHICH" up
else
  ip link add "$TAG-b2" type bridge
  ip link set "$TAG-b2" up
  for i in $SPLIT; do ip link set "$TAG-h$i" master "$TAG-b2"; done
  one=$(for i in $(seq "$NODES"); do case " $SPLIT " in *" $i "*) ;; *) echo "$i"; break;; esac; done)
  two=$(echo "$SPLIT" | awk '{print $1}')
  echo "split: nodes $SPLIT on a bridge of their own for $CUT s; the rest on the first"
  start_split=$(date +%s)
  # Each half gives the other up, then takes KEYS keys of its own.
  sleep 8
  put_from "$one" $((KEYS + 1)) $((2 * KEYS))
  put_from "$two" $((2 * KEYS + 1)) $((3 * KEYS))
  echo "wrote $KEYS keys into each half"
  left=$(( CUT - ($(date +%s) - start_split) ))
  [ "$left" -le 0 ] || sleep "$left"
  for i in $SPLIT; do ip link set "$TAG-h$i" master "$TAG-br"; done
  KEYS=$((3 * KEYS))
fi
echo "link restored; checking for up to $SETTLE s"
start=$(date +%s.%N)
deadline=$(( $(date +%s) + SETTLE ))
until [ -z "$(check_ring)" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "FAIL: the ring is not whole $SETTLE s after the cut ended:"; check_ring
    for i in $(seq "$NODES"); do echo "== node $i"; tail -20 "$DIR/n$i.log"; done
    exit 1
  fi
  sleep 0.5
done
healed=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
missing=0
for k in $(seq "$KEYS"); do
  got=$("$BIN" get "cut-$k" --peer 10.77.0.1:5000 2>/dev/null || true)
  [ "$got" = "value $k" ] || missing=$((missing + 1))
done
echo "the ring was whole again ${healed} s after the cut ended; $missing of $KEYS keys not read back"
grep -h "the ring moved on\|joined the ring again\|answers again\|does not answer" "$DIR"/n*.log | cut -c28- || true
[ "$missing" -eq 0 ] || { echo FAIL; exit 1; }
echo PASS
