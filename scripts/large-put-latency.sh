#!/usr/bin/env bash
# Latency of small requests while large values are being stored: one client PUTs SIZE-byte
# values in a loop (3 keys) while this script times small PUTs and GETs through the CLI for
# SECS seconds, and prints the median, p99 and maximum of each. The figures include starting
# the CLI process (a few ms); what matters is the tail: a large write must not stall the rest.
#
#     cargo build --release && scripts/large-put-latency.sh          # 64 MiB values, 4 s
#     SIZE=8388608 SECS=10 scripts/large-put-latency.sh
#     BIN=/path/to/other/dht-store scripts/large-put-latency.sh      # another build, to compare
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dht-store}
SIZE=${SIZE:-67108864}
SECS=${SECS:-4}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/large-put-latency.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=
LOOP=
# Every step may fail (the process already gone) without stopping the rest: under `set -e` a
# failing kill used to end the trap and leave the node running.
cleanup() {
  if [ -n "$LOOP" ]; then kill "$LOOP" 2>/dev/null || true; pkill -P "$LOOP" 2>/dev/null || true; fi
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
head -c "$SIZE" /dev/urandom > "$DIR/value"
"$BIN" --data "$DIR/node" --port "$PORT" 2>>"$DIR/node.log" &
PID=$!
for _ in $(seq 100); do "$BIN" info --peer "127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 0.1; done
( while true; do for k in 0 1 2; do "$BIN" put --peer "127.0.0.1:$PORT" "large-$k" --file "$DIR/value"; done; done ) &
LOOP=$!
sleep 0.3
python3 - "$BIN" "$PORT" "$SECS" <<'PY'
import subprocess, sys, time
bin_, port, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
lat = {"put": [], "get": []}
end, i = time.time() + secs, 0
while time.time() < end:
    for op in ("put", "get"):
        args = [bin_, op, "--peer", f"127.0.0.1:{port}", f"small-{i % 50}"] + (["x" * 100] if op == "put" else [])
        t = time.time()
        subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        lat[op].append(time.time() - t)
    i += 1
for op, l in lat.items():
    l.sort()
    print(f"small {op}: {len(l)} requests, median {1000 * l[len(l) // 2]:.1f} ms, "
          f"p99 {1000 * l[int(len(l) * 0.99)]:.1f} ms, max {1000 * l[-1]:.1f} ms")
PY
