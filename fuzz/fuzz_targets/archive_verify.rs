//! `verify` alone of arbitrary bytes as a backup archive: the reader without the cost of
//! opening a sled directory for every input that gets past the header (`archive` does that),
//! so many more inputs per second.
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

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzing::verify_only(data, scratch());
});
