//! Any bytes through decode + preprocess: an error is fine, a panic, hang or runaway
//! allocation is a bug.
#![no_main]

use classify::preprocess::{preprocess, PreprocessConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = PreprocessConfig {
        input_size: 32,
        resize_size: 36,
        ..Default::default()
    };
    let _ = preprocess(data, &cfg, 4_000_000);
});
