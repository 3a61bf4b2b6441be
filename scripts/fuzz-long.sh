#!/usr/bin/env bash
# The longer libFuzzer run (README.md, "Fuzzing"; figures in BENCHMARKS.md): each target in
# turn for FUZZ_SECS seconds (default 900) on one core, the checked-in corpus as seeds, new
# inputs into $FUZZ_RUN_DIR/<target> (default target/fuzz-run), the log beside it. Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). A crash stops that target
# only; its input is in fuzz/artifacts/<target>/. Afterwards
#   cargo +nightly fuzz run <target> fuzz/corpus/<corpus> target/fuzz-run/<target> -- -merge=1
# adds to the checked-in corpus the inputs that reach new code.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECS:-900}
run=${FUZZ_RUN_DIR:-target/fuzz-run}
targets=${FUZZ_TARGETS:-"frames answers archive_verify archive archive_sealed"}
# Archives are written to files: a tmpfs is faster.
[ -d /dev/shm ] && export TMPDIR=/dev/shm
for t in $targets; do
  corpus=fuzz/corpus/${t%_verify}
  mkdir -p "$run/$t"
  # The largest single allocation allowed (MiB): the wire readers allocate at most 1 MiB
  # plus what arrived; verify a 1 MiB read buffer, a header of at most 1 MiB, and a value as
  # it arrives; restore opens a sled directory besides.
  case $t in archive*) limit=16 ;; *) limit=2 ;; esac
  echo "== $t: $secs s, corpus $corpus, malloc limit $limit MiB ($(date -u +%H:%M:%S))"
  CARGO_BUILD_JOBS=1 cargo +nightly fuzz run "$t" "$run/$t" "$corpus" -- \
    -max_total_time="$secs" -timeout=10 -malloc_limit_mb="$limit" -rss_limit_mb=2048 \
    -print_final_stats=1 >"$run/$t.log" 2>&1
  echo "   exit $? ($(date -u +%H:%M:%S)); $(ls "$run/$t" | wc -l) new inputs"
  grep -E "^#[0-9]+ +DONE|^stat::|ERROR|panicked|deadly signal" "$run/$t.log" | sed 's/^/   /'
done
