//! `verify` and `restore` of archives whose length fields, count and checksum are made to
//! match (`fuzzing::seal`), so that the fuzzer reaches what a restore does after the checksum.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

use std::path::PathBuf;
use std::sync::OnceLock;

/// As in `archive.rs`.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dht-store-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::archive_sealed(data, scratch()));
