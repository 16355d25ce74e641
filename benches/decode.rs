//! Decode and preprocess time per image, for `bench/decode.sh` (which times Pillow on the
//! same files and prints the ratio).
//!   cargo bench --bench decode -- [--iterations N] FILE...
//! Prints one JSON object per file: `{"file", "width", "height", "decode_ms",
//! "preprocess_ms", "simd"}`, medians over the iterations. `preprocess_ms` is the whole
//! per-image CPU work of a run (decode, resize 256, crop 224, normalise); `simd` says
//! whether the JPEG decoder was built with libjpeg-turbo's SIMD (NASM found at build time).

use std::time::Instant;

use classify::preprocess::{self, PreprocessConfig, DEFAULT_MAX_PIXELS};

fn median_ms(iterations: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut iterations = 20;
    if let Some(i) = args.iter().position(|a| a == "--iterations") {
        iterations = args[i + 1].parse().expect("--iterations N");
        args.drain(i..i + 2);
    }
    let cfg = PreprocessConfig::default();
    for file in &args {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let img = preprocess::decode_rgb(&bytes, DEFAULT_MAX_PIXELS).expect("decodable");
        let decode_ms = median_ms(iterations, || {
            std::hint::black_box(preprocess::decode_rgb(&bytes, DEFAULT_MAX_PIXELS).unwrap());
        });
        let preprocess_ms = median_ms(iterations, || {
            std::hint::black_box(preprocess::preprocess(&bytes, &cfg, DEFAULT_MAX_PIXELS).unwrap());
        });
        println!(
            "{}",
            serde_json::json!({
                "file": file,
                "width": img.width(),
                "height": img.height(),
                "decode_ms": decode_ms,
                "preprocess_ms": preprocess_ms,
                "simd": preprocess::jpeg_simd(),
            })
        );
    }
}
