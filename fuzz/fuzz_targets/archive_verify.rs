//! `verify` alone of arbitrary bytes as a backup archive: the reader without the cost of
//! opening a sled directory for every input that gets past the header (`archive` does that),
//! so many more inputs per second.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

// Each input gets a directory of its own under TMPDIR (/dev/shm makes the runs faster),
// removed after it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzing::verify_only(data, &std::env::temp_dir());
});
