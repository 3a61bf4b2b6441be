#!/usr/bin/env bash
# Memory of a node holding large values: stores N values of SIZE bytes through the CLI, restarts
# the node, reads each back (and compares it), and prints the node's RSS and peak RSS after each
# phase, with the sled cache at its default (64 MiB). Before values were stored in pieces
# (storage.rs, "Values in pieces"), sled's cache never evicted them and RSS grew with every
# value read.
#
#     cargo build --release && scripts/large-values-rss.sh            # 100 × 8 MiB
#     N=20 SIZE=1048576 scripts/large-values-rss.sh                   # smaller
#     BIN=/path/to/other/dht-store scripts/large-values-rss.sh        # another build, to compare
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dht-store}
N=${N:-100}
SIZE=${SIZE:-8388608}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/large-values.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=
cleanup() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
head -c "$SIZE" /dev/urandom > "$DIR/value"

start() {
  "$BIN" --data "$DIR/node" --port "$PORT" 2>>"$DIR/node.log" &
  PID=$!
  for _ in $(seq 100); do "$BIN" info --peer "127.0.0.1:$PORT" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "the node did not start; its log:" >&2; cat "$DIR/node.log" >&2; exit 1
}
rss() { awk '/VmRSS/ {r=$2} /VmHWM/ {h=$2} END {printf "RSS %.0f MiB, peak %.0f MiB", r/1024, h/1024}' "/proc/$PID/status"; }
now() { date +%s.%N; }

start
t0=$(now)
for i in $(seq "$N"); do "$BIN" put --peer "127.0.0.1:$PORT" "large-$i" --file "$DIR/value"; done
t1=$(now)
echo "$N × $SIZE B stored in $(echo "$t1 - $t0" | bc) s; $(rss)"
kill "$PID"; wait "$PID" || true
start
t0=$(now)
for i in $(seq "$N"); do
  "$BIN" get --peer "127.0.0.1:$PORT" "large-$i" | cmp -s - "$DIR/value" || { echo "large-$i differs" >&2; exit 1; }
done
t1=$(now)
echo "after a restart, $N GETs (each compared) in $(echo "$t1 - $t0" | bc) s; $(rss)"
echo "data directory: $(du -sm "$DIR/node" | cut -f1) MiB"
