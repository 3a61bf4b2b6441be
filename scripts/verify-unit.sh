#!/usr/bin/env bash
# Checks config/dht-store.service without installing it:
#
# 1. `systemd-analyze verify` on a temporary copy whose ExecStart names the binary built here
#    (verify fails on an ExecStart binary that does not exist, and /usr/local/bin/dht-store
#    is not there on a build machine). Everything else is the unit as shipped.
# 2. With strace installed (else skipped, and said so): the system calls a node makes through
#    a start, writes (small and large values), `status`, a backup through the node, a join
#    (CON, both sides), a leave (DIS) and SIGTERM, each of which must be allowed by the unit's
#    SystemCallFilter (@system-service without @privileged and @resources, expanded by
#    `systemd-analyze syscall-filter`). A call outside it would fail with EPERM under systemd.
#    This is not the unit running under systemd (which needs systemd as PID 1), only the filter
#    checked against what the node really calls.
#
# Usage: scripts/verify-unit.sh [BINARY]   (default: target/release/dht-store, else
# target/debug/dht-store; build one first). Exit 0 if every check that ran passed.
set -euo pipefail
cd "$(dirname "$0")/.."

unit=config/dht-store.service
bin=${1:-}
if [ -z "$bin" ]; then
  for b in target/release/dht-store target/debug/dht-store; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "verify-unit: no dht-store binary (build with cargo build --release, or give its path)" >&2
  exit 2
fi
bin=$(realpath "$bin")
if ! command -v systemd-analyze >/dev/null; then
  echo "verify-unit: systemd-analyze is not installed: nothing checked" >&2
  exit 2
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "== systemd-analyze verify ($unit, ExecStart binary -> $bin)"
mkdir "$tmp/unit"
# The same file name: verify checks the unit by its name.
sed "s#^ExecStart=/usr/local/bin/dht-store #ExecStart=$bin #" "$unit" > "$tmp/unit/dht-store.service"
if grep -q '^ExecStart=/usr/local/bin/' "$tmp/unit/dht-store.service"; then
  echo "verify-unit: ExecStart of $unit no longer starts with /usr/local/bin/dht-store" >&2
  exit 1
fi
systemd-analyze verify "$tmp/unit/dht-store.service"
echo "ok"

echo "== system calls of a node against the unit's SystemCallFilter"
if ! command -v strace >/dev/null; then
  echo "skipped: strace is not installed"
  exit 0
fi
# The filter as the unit states it (two SystemCallFilter= lines: allow, then deny).
grep -q '^SystemCallFilter=@system-service$' "$unit"
grep -q '^SystemCallFilter=~@privileged @resources$' "$unit"
expand() { # a group, recursively, to syscall names
  systemd-analyze syscall-filter "$1" | sed 1d | sed 's/^ *//' | grep -v '^#' | grep -v '^$' |
    while read -r name; do
      case "$name" in
        @*) expand "$name" ;;
        *) echo "$name" ;;
      esac
    done
}
expand @system-service | sort -u > "$tmp/allow"
{ expand @privileged; expand @resources; } | sort -u > "$tmp/deny"
comm -23 "$tmp/allow" "$tmp/deny" > "$tmp/allowed"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pa=$(port); pb=$(port)
strace -f -qq -o "$tmp/a.trace" "$bin" --data "$tmp/a" --port "$pa" 2> "$tmp/a.log" &
pids+=($!)
for _ in $(seq 100); do "$bin" exists x --peer "127.0.0.1:$pa" 2>/dev/null && break; [ $? = 1 ] && break; sleep 0.1; done
for i in $(seq 50); do "$bin" put "key$i" "value$i" --peer "127.0.0.1:$pa"; done
head -c 2000000 /dev/urandom > "$tmp/large"
"$bin" put large --file "$tmp/large" --peer "127.0.0.1:$pa"
"$bin" status --data "$tmp/a" > /dev/null
"$bin" backup --data "$tmp/a" --out "$tmp/a.backup" 2> /dev/null
strace -f -qq -o "$tmp/b.trace" "$bin" --data "$tmp/b" --port "$pb" --join "127.0.0.1:$pa" 2> "$tmp/b.log" &
pids+=($!)
for _ in $(seq 100); do "$bin" status --data "$tmp/b" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2
"$bin" leave --data "$tmp/b" > /dev/null 2>&1
"$bin" get large --peer "127.0.0.1:$pa" | cmp - "$tmp/large"
# SIGTERM to the node itself (strace's child), as systemd sends it; strace exits with its status.
kill -TERM "$(pgrep -P "${pids[0]}")"
wait "${pids[0]}" || { echo "node A did not exit 0 on SIGTERM: $(tail -5 "$tmp/a.log")" >&2; exit 1; }
wait "${pids[1]}" || { echo "node B did not exit 0 after its leave: $(tail -5 "$tmp/b.log")" >&2; exit 1; }
pids=()
# "PID name(" at the start of a line, and "<... name resumed>" for calls strace split.
sed -nE 's/^[0-9]+ +([a-z_0-9]+)\(.*/\1/p; s/^[0-9]+ +<\.\.\. ([a-z_0-9]+) resumed>.*/\1/p' \
  "$tmp/a.trace" "$tmp/b.trace" | sort -u > "$tmp/used"
# execve is the service manager's (it starts the binary before the filter applies to it).
outside=$(comm -23 "$tmp/used" "$tmp/allowed" | grep -vx execve || true)
echo "$(wc -l < "$tmp/used") distinct system calls made: $(tr '\n' ' ' < "$tmp/used")"
if [ -n "$outside" ]; then
  echo "outside the unit's SystemCallFilter: $outside" >&2
  exit 1
fi
echo "ok: every one is allowed by the unit's SystemCallFilter"
