//! `verify` and `restore` of arbitrary bytes as a backup archive.
#![no_main]

#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch directory per process (under TMPDIR: /dev/shm makes the runs faster); each
/// input gets a directory of its own inside it, removed after it.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dht-store-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::archive(data, scratch()));
