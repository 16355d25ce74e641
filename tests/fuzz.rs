//! Mutation fuzzing on stable Rust, bounded in time: corpus files and requests are mutated
//! (bit flips, byte edits, truncation, splices, header-size tweaks) and fed to
//! decode + preprocess and to the `/predict` body parser. Any panic fails the test and
//! prints the input (as base64) so it can be added to `tests/fixtures/fuzz/` as a
//! regression case; the files already there are replayed first.
//!
//! `CLASSIFY_FUZZ_SECONDS` sets the budget per target (default 5).

mod common;

use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use classify::preprocess::{preprocess, PreprocessConfig};

/// xorshift64*: deterministic, seedable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        if data.is_empty() {
            data.push(rng.next() as u8);
        }
        let i = rng.below(data.len());
        match rng.below(7) {
            0 => data[i] ^= 1 << rng.below(8),
            1 => data[i] = rng.next() as u8,
            2 => data.truncate(i),
            3 => data.insert(i, [0x00, 0xff, 0x7f, 0x80][rng.below(4)]),
            4 => {
                // Splice in part of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let j = rng.below(other.len());
                let n = rng.below(64).min(other.len() - j);
                data.splice(i..i, other[j..j + n].iter().copied());
            }
            5 => {
                // Overwrite 4 bytes with an interesting big-endian number (image sizes live there).
                let v: u32 = [0, 1, 0xffff, 0x7fff_ffff, 0xffff_ffff, 50_000][rng.below(6)];
                for (k, b) in v.to_be_bytes().iter().enumerate() {
                    if let Some(x) = data.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
            _ => {
                let n = rng.below(16).min(data.len() - i);
                data.drain(i..i + n);
            }
        }
    }
    data
}

fn budget() -> Duration {
    let secs = std::env::var("CLASSIFY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

fn regressions() -> Vec<Vec<u8>> {
    let dir = common::fixtures().join("fuzz");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

fn run_target(name: &str, seeds: Vec<Vec<u8>>, mut target: impl FnMut(&[u8])) {
    let replay = regressions();
    for input in &replay {
        target(input);
    }
    let mut rng = Rng(0x5eed_0000 ^ name.len() as u64);
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed() < budget() {
        let input = mutate(&mut rng, &seeds);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        if result.is_err() {
            panic!(
                "{name}: panic on input (base64, save as tests/fixtures/fuzz/<name>.bin): {}",
                base64::engine::general_purpose::STANDARD.encode(&input)
            );
        }
        runs += 1;
    }
    eprintln!(
        "{name}: {runs} inputs in {:?}, {} regressions replayed, no panic",
        start.elapsed(),
        replay.len()
    );
}

/// The hostile corpus, chelsea.jpg, and the hand-made files at the edges of each format
/// (`tests/fixtures/decode/`: GIF, Netpbm, BMP), the decoders' odd paths.
fn image_seeds() -> Vec<Vec<u8>> {
    let mut edge_cases: Vec<_> = std::fs::read_dir(common::fixtures().join("decode"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "py" && e != "json"))
        .collect();
    edge_cases.sort(); // the same seeds in the same order on every run
    let edge_cases = edge_cases.into_iter().map(|p| std::fs::read(p).unwrap());
    common::hostile::corpus(&common::fixtures().join("photos"))
        .into_iter()
        .map(|e| e.bytes)
        .filter(|b| b.len() < 64 * 1024)
        .chain([std::fs::read(common::photo("chelsea.jpg")).unwrap()])
        .chain(edge_cases)
        .collect()
}

#[test]
fn fuzz_decode_and_preprocess() {
    let cfg = PreprocessConfig {
        input_size: 32,
        resize_size: 36,
        ..Default::default()
    };
    run_target("decode", image_seeds(), |input| {
        let _ = preprocess(input, &cfg, 4_000_000);
    });
}

#[test]
fn fuzz_request_parsing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nabc");
    let seeds: Vec<Vec<u8>> = vec![
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n\x89PNG\r\n\r\n--B--\r\n".to_vec(),
        format!("{{\"image\": \"data:image/png;base64,{b64}\"}}").into_bytes(),
        format!("{{\"session\": \"s\", \"payload\": {{\"img\": {{\"data\": \"{b64}\"}}}}}}").into_bytes(),
    ];
    let content_types = [
        "multipart/form-data; boundary=B",
        "application/json",
        "image/png",
        "text/plain",
    ];
    let mut i = 0;
    run_target("request", seeds, |input| {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_types[i % content_types.len()]),
        );
        i += 1;
        let body = axum::body::Bytes::copy_from_slice(input);
        let _ = rt.block_on(classify::server::parse_payload(&headers, body));
    });
}
