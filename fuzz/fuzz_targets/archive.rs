//! `verify` and `restore` of arbitrary bytes as a backup archive.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

// Each input gets a directory of its own under TMPDIR (/dev/shm makes the runs faster),
// removed after it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::archive(data, &std::env::temp_dir()));
