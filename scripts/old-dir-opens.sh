#!/usr/bin/env bash
# A data directory written by another build opens with this one and serves everything: OLD
# (a dht-store binary) writes small values, values in pieces (over 6 KiB) and values over
# 768 KiB (written in several batches), removes some, restarts once, and stops; then NEW opens
# the same directory and every key must read back as OLD last wrote it, removed keys absent.
#
#     cargo build --release && OLD=/path/to/old/dht-store scripts/old-dir-opens.sh
#     NEW=/path/to/other/dht-store OLD=... scripts/old-dir-opens.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${OLD:?give OLD=/path/to/the/older/dht-store}
NEW=${NEW:-target/release/dht-store}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/old-dir.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=
cleanup() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

start() {
  "$1" --data "$DIR/node" --port "$PORT" 2>>"$DIR/node.log" &
  PID=$!
  for _ in $(seq 100); do "$1" info --peer "127.0.0.1:$PORT" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "FAIL: $1 did not start on the directory; its log:"; cat "$DIR/node.log"; exit 1
}
stop() { kill "$PID"; wait "$PID" || true; PID=; }
peer=(--peer "127.0.0.1:$PORT")

start "$OLD"
mkdir -p "$DIR/values"
for i in $(seq 200); do
  case $((i % 20)) in
    0) head -c $((900 * 1024 + i)) /dev/urandom > "$DIR/values/$i" ;;   # several batches
    1|2|3) head -c $((7 * 1024 + 37 * i)) /dev/urandom > "$DIR/values/$i" ;;   # in pieces
    *) printf 'value %s' "$i" > "$DIR/values/$i" ;;
  esac
  "$OLD" put "old-$i" --file "$DIR/values/$i" "${peer[@]}" >/dev/null
done
stop
start "$OLD"
for i in $(seq 10 10 200); do "$OLD" rm "old-$i" "${peer[@]}" >/dev/null; rm "$DIR/values/$i"; done
# Overwrite a few, some from whole to pieces and back.
for i in 1 5 21 41; do head -c $((6 * 1024 + 100 * i)) /dev/urandom > "$DIR/values/$i"; "$OLD" put "old-$i" --file "$DIR/values/$i" "${peer[@]}" >/dev/null; done
for i in 2 22; do printf 'short again %s' "$i" > "$DIR/values/$i"; "$OLD" put "old-$i" --file "$DIR/values/$i" "${peer[@]}" >/dev/null; done
stop

start "$NEW"
bad=0
for i in $(seq 200); do
  if [ -f "$DIR/values/$i" ]; then
    "$NEW" get "old-$i" "${peer[@]}" > "$DIR/got" || { echo "old-$i: absent"; bad=$((bad + 1)); continue; }
    cmp -s "$DIR/got" "$DIR/values/$i" || { echo "old-$i: a different value"; bad=$((bad + 1)); }
  else
    if "$NEW" exists "old-$i" "${peer[@]}"; then echo "old-$i: removed, but present"; bad=$((bad + 1)); fi
  fi
done
# And it goes on writing there.
"$NEW" put new-key "written by the new build" "${peer[@]}" >/dev/null
[ "$("$NEW" get new-key "${peer[@]}")" = "written by the new build" ] || { echo "new-key not read back"; bad=$((bad + 1)); }
stop
if [ "$bad" -ne 0 ]; then echo "FAIL: $bad keys wrong"; tail -20 "$DIR/node.log"; exit 1; fi
echo "PASS: $("$OLD" --version 2>/dev/null || echo "$OLD") wrote, $NEW read all 200 keys back (20 removed, 6 overwritten)"
