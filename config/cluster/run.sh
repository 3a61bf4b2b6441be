#!/usr/bin/env bash
# A local three-node ring: node 1 starts a ring of one, nodes 2 and 3 join through it.
# Run from the repository root:   config/cluster/run.sh
# Data goes to ./cluster-data/node{1,2,3}; logs to ./cluster-data/node{1,2,3}.log.
# Ctrl-C stops all three (SIGTERM: requests in flight finish, data is flushed). Running the
# script again resumes the same ring from disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin=target/release/dht-store
mkdir -p cluster-data
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait; }
trap stop EXIT INT TERM
for i in 1 2 3; do
  "$bin" --config "config/cluster/node$i.toml" 2>>"cluster-data/node$i.log" &
  pids+=($!)
  # Each node answers only once it is in the ring; wait for it before starting the next.
  until "$bin" info --peer "127.0.0.1:500$i" >/dev/null 2>&1; do sleep 0.1; done
  echo "node $i up on 127.0.0.1:500$i"
done
echo "ring of three is up; try: $bin put apple red --peer 127.0.0.1:5002 && $bin get apple --peer 127.0.0.1:5003"
wait
