//! Preprocessing parity with torchvision/timm on real photos.
//!
//! `tests/fixtures/preprocess/make_reference.py` ran PIL + torchvision on each photo and
//! stored the uint8 crop as a PNG, and the SHA-256 of the whole decoded image. Bound: the
//! decoded pixels must hash the same, and the uint8 crop must be identical (max per-pixel
//! difference 0) for every case, JPEG included (we decode JPEG with libjpeg-turbo's
//! algorithms, as PIL does), and the first normalised values must be equal bit for bit. The
//! channel means are compared too, to catch a wrong mean/std or channel order.

use classify::preprocess::{
    decode_rgb, normalize, resize_center_crop, Interpolation, PreprocessConfig, DEFAULT_MAX_PIXELS,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    image: String,
    image_dir: String,
    config: String,
    params: Params,
    crop_png: String,
    decoded_rgb_sha256: String,
    tensor_c0_row0_first8: Vec<f32>,
    tensor_channel_means: Vec<f64>,
}

#[derive(Deserialize)]
struct Params {
    resize: u32,
    interpolation: String,
    crop: u32,
    mean: [f32; 3],
    std: [f32; 3],
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn crops_match_torchvision() {
    let dir = fixtures();
    let manifest: Manifest = serde_json::from_str(
        &std::fs::read_to_string(dir.join("preprocess/manifest.json")).unwrap(),
    )
    .unwrap();
    assert!(manifest.cases.len() >= 20);
    let mut worst = 0u8;
    for case in &manifest.cases {
        let cfg = PreprocessConfig {
            input_size: case.params.crop,
            resize_size: case.params.resize,
            interpolation: match case.params.interpolation.as_str() {
                "bilinear" => Interpolation::Bilinear,
                "bicubic" => Interpolation::Bicubic,
                other => panic!("unexpected interpolation {other}"),
            },
            mean: case.params.mean,
            std: case.params.std,
        };
        let name = format!("{} / {}", case.image, case.config);
        let bytes = std::fs::read(dir.join(&case.image_dir).join(&case.image)).unwrap();
        let decoded = decode_rgb(&bytes, DEFAULT_MAX_PIXELS).unwrap();
        // Every pixel, not only those the crop keeps: a GIF's fill, or a border, may lie
        // outside it.
        assert_eq!(
            sha256_hex(decoded.as_raw()),
            case.decoded_rgb_sha256,
            "{name}: decoded pixels differ from PIL's"
        );
        let crop = resize_center_crop(&decoded, &cfg);
        let expected = image::open(dir.join("preprocess").join(&case.crop_png))
            .unwrap()
            .into_rgb8();
        assert_eq!(crop.dimensions(), expected.dimensions(), "{name}");
        let max_diff = crop
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        eprintln!("{name}: max pixel difference {max_diff}");
        assert_eq!(max_diff, 0, "{name}: crop differs from torchvision's");
        worst = worst.max(max_diff);

        let tensor = normalize(&crop, &cfg);
        let plane = (cfg.input_size * cfg.input_size) as usize;
        assert_eq!(&tensor[..8], &case.tensor_c0_row0_first8[..], "{name}");
        for c in 0..3 {
            let mean = tensor[c * plane..(c + 1) * plane]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / plane as f64;
            assert!(
                (mean - case.tensor_channel_means[c]).abs() < 1e-3,
                "{name}: channel {c} mean {mean}"
            );
        }
    }
    eprintln!("worst pixel difference over all cases: {worst}");
}

/// The JPEG decoder's SIMD (libjpeg-turbo's, compiled when NASM is present) is required
/// where the test command asks for it (`scripts/test` installs NASM and sets
/// CLASSIFY_REQUIRE_JPEG_SIMD=1 on x86_64), so a build that silently lost it fails. The
/// fixtures above run with it, and once more in a build without it
/// (`--no-default-features`): the pixels are the same either way.
#[test]
fn jpeg_simd_is_on_where_required() {
    let simd = classify::preprocess::jpeg_simd();
    eprintln!("JPEG SIMD: {simd}");
    let required = std::env::var_os("CLASSIFY_REQUIRE_JPEG_SIMD").is_some_and(|v| v == "1");
    if cfg!(feature = "jpeg-simd") && required {
        assert!(
            simd,
            "built without libjpeg-turbo's SIMD: is nasm installed?"
        );
    }
    if !cfg!(feature = "jpeg-simd") {
        assert!(
            !simd,
            "--no-default-features must build the plain-C decoder"
        );
    }
}

#[derive(Deserialize)]
struct EdgeCases {
    cases: Vec<EdgeCase>,
}

#[derive(Deserialize)]
struct EdgeCase {
    file: String,
    width: Option<u32>,
    height: Option<u32>,
    rgb_sha256: Option<String>,
    pil_error: Option<String>,
    refused: Option<String>,
    /// Where classify decodes on purpose to other pixels than PIL's: why, and the hash
    /// of what classify gives instead.
    departure: Option<String>,
    classify_rgb_sha256: Option<String>,
    /// Why classify decodes a file PIL refuses.
    accepted: Option<String>,
}

/// Hand-made files at the edges of their formats (`tests/fixtures/decode/make_cases.py`):
/// each decodes to PIL's size and pixels, or is refused where PIL refuses it, or where the
/// manifest says why classify refuses what PIL reads, or gives the pixels the manifest names
/// where classify departs from PIL on purpose, or decodes a file PIL refuses where the
/// manifest says why.
#[test]
fn edge_cases_decode_as_pil_does() {
    let dir = fixtures().join("decode");
    let manifest: EdgeCases =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest.cases.len() >= 45);
    for case in &manifest.cases {
        let bytes = std::fs::read(dir.join(&case.file)).unwrap();
        let got = decode_rgb(&bytes, DEFAULT_MAX_PIXELS);
        let name = &case.file;
        if let Some(why) = &case.accepted {
            assert!(case.pil_error.is_some(), "{name}: PIL decodes it");
            match got {
                Ok(_) => eprintln!("{name}: decoded where PIL refuses: {why}"),
                Err(e) => panic!("{name}: refused ({e}), but should be decoded: {why}"),
            }
            continue;
        }
        match (&case.pil_error, &case.refused, got) {
            (Some(pil), _, Ok(_)) => panic!("{name}: decoded, but PIL refuses it ({pil})"),
            (None, Some(why), Ok(_)) => panic!("{name}: decoded, but should be refused: {why}"),
            (Some(_), _, Err(e)) | (None, Some(_), Err(e)) => eprintln!("{name}: refused: {e}"),
            (None, None, Err(e)) => panic!("{name}: refused ({e}), but PIL decodes it"),
            (None, None, Ok(img)) => {
                assert_eq!(
                    (Some(img.width()), Some(img.height())),
                    (case.width, case.height),
                    "{name}: size"
                );
                let sha = sha256_hex(img.as_raw());
                match &case.departure {
                    None => assert_eq!(
                        Some(&sha),
                        case.rgb_sha256.as_ref(),
                        "{name}: pixels differ from PIL's"
                    ),
                    Some(why) => {
                        assert_eq!(
                            Some(&sha),
                            case.classify_rgb_sha256.as_ref(),
                            "{name}: pixels differ from what classify should give ({why})"
                        );
                        assert_ne!(Some(&sha), case.rgb_sha256.as_ref());
                    }
                }
                match &case.departure {
                    None => eprintln!("{name}: PIL's pixels"),
                    Some(_) => eprintln!("{name}: the pixels of the departure"),
                }
            }
        }
    }
}
