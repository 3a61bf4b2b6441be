//! `verify` and `restore` of archives whose length fields, count and checksum are made to
//! match (`fuzzing::seal`), so that the fuzzer reaches what a restore does after the checksum.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

// Each input gets a directory of its own under TMPDIR (/dev/shm makes the runs faster),
// removed after it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::archive_sealed(data, &std::env::temp_dir()));
