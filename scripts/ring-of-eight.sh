#!/usr/bin/env bash
# Draws a real ring of eight with `dht-store ring --svg`, while a ninth node joins: the picture
# of README.md (docs/ring-of-eight.png). Eight nodes on 127.0.0.2-9:47300 (fixed addresses, so
# fixed ids and the same picture every time), 1000 keys put through them, then the owner of
# 127.0.0.10:47300's id is restarted with the test-only fault pause
# DHT_STORE_FAULT=con-serve:mid-stream/20000 (it stops 20 s halfway through the arc it streams,
# so the handoff is caught in progress on any machine) and 127.0.0.10:47300 joins through it.
# The ring is drawn during that pause (OUT/ring-of-eight.png), then listed once more after the
# join.
#
#     cargo build --release && scripts/ring-of-eight.sh            # needs rsvg-convert for the PNG
#     BIN=target/debug/dht-store OUT=/tmp/ring scripts/ring-of-eight.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dht-store}
OUT=${OUT:-docs}
PORT=${PORT:-47300}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/ring-of-eight.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
mkdir -p "$OUT"

serving() { # wait until ADDR answers
  for _ in $(seq 200); do "$BIN" info --peer "$1" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "FAIL: $1 does not answer; logs in $DIR"; tail -n 20 "$DIR"/*.log; exit 1
}
start() { # start HOST [extra args...]; the node's data in $DIR/HOST
  local host=$1; shift
  "$BIN" --data "$DIR/$host" --host "$host" --port "$PORT" "$@" 2>>"$DIR/$host.log" &
  PIDS+=($!)
}

FIRST=127.0.0.2:$PORT
start 127.0.0.2
serving "$FIRST"
for i in 3 4 5 6 7 8 9; do
  start "127.0.0.$i" --join "$FIRST"
  serving "127.0.0.$i:$PORT"
done
sleep 1 # a maintenance round: successor lists filled
seq 1000 | xargs -P 4 -I{} "$BIN" put "key-{}" "value {}" --peer "$FIRST"

JOINER=127.0.0.10:$PORT
ID=$(python3 -c "import hashlib; print(hashlib.sha1(b'$JOINER').hexdigest())")
OWNER=$("$BIN" owner --hash "$ID" --peer "$FIRST" | cut -d' ' -f1)
OWNER_HOST=${OWNER%:*}
echo "$JOINER joins through $OWNER, which owns its id $ID"
# Restart the owner with the pause: SIGTERM, then the same directory resumes its place.
for idx in "${!PIDS[@]}"; do
  if [ "$idx" -eq $((${OWNER_HOST##*.} - 2)) ]; then kill "${PIDS[$idx]}"; wait "${PIDS[$idx]}" || true; fi
done
DHT_STORE_FAULT=con-serve:mid-stream/20000 start "$OWNER_HOST"
serving "$OWNER"
sleep 2 # its place check and a maintenance round
start 127.0.0.10 --join "$OWNER"
grep -q "fault point con-serve:mid-stream reached" "$DIR/$OWNER_HOST.log" || sleep 1
for _ in $(seq 100); do
  grep -q "fault point con-serve:mid-stream reached" "$DIR/$OWNER_HOST.log" && break
  sleep 0.1
done

"$BIN" ring --peer "$FIRST" --svg "$DIR/ring-of-eight.svg"
serving "$JOINER"
sleep 1
echo "after the join:"
"$BIN" ring --peer "$FIRST"
if command -v rsvg-convert >/dev/null; then
  rsvg-convert "$DIR/ring-of-eight.svg" -o "$OUT/ring-of-eight.png"
  echo "wrote $OUT/ring-of-eight.png"
else
  cp "$DIR/ring-of-eight.svg" "$OUT/"
  echo "rsvg-convert not found (apt-get install librsvg2-bin): wrote $OUT/ring-of-eight.svg only"
fi
