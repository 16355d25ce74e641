//! Every family, loaded the way a user loads a timm hub repo (`--model timm/<arch>.<tag>`),
//! on real photos, against timm.
//!
//! For each repo of `tests/fixtures/zoo/make_reference.py`: a hub cache laid out as
//! huggingface_hub does holds the `config.json` timm writes for that repo (its preprocessing)
//! and a `model.safetensors` with exactly timm's state-dict entries, filled with the formula
//! weights of `classify::weights::synthetic`. classify resolves the repo through its hub code
//! (offline), preprocesses the fixture photos with what config.json says, and must give
//! timm's top-5 in order and logits within 1e-4 of the largest (the parity tolerance).
//! Strict loading makes the checkpoint's key set a test of its own: one key that classify
//! does not use, or one it needs that timm does not have, fails the load.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use classify::config::{DeviceChoice, ModelSettings};
use classify::hub::{HubOptions, ModelRef};
use classify::weights::synthetic;
use serde::Deserialize;

mod common;
use common::HubCache;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REL_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Fixture {
    repo: String,
    config: String,
    keys: Vec<(String, Vec<usize>, String)>,
    photos: HashMap<String, Vec<f32>>,
}

fn fixture(name: &str) -> Fixture {
    let path = common::fixtures().join("zoo").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The checkpoint the hub would serve: timm's keys, formula values.
fn checkpoint(fx: &Fixture) -> Vec<u8> {
    let tensors: HashMap<String, Tensor> = fx
        .keys
        .iter()
        .map(|(name, shape, dtype)| {
            let t = match dtype.as_str() {
                "int64" => Tensor::zeros(shape.as_slice(), DType::I64, &Device::Cpu),
                "float32" => Tensor::from_vec(
                    synthetic::values(name, shape),
                    shape.as_slice(),
                    &Device::Cpu,
                ),
                other => panic!("{name}: dtype {other}"),
            }
            .unwrap();
            (name.clone(), t)
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    candle_core::safetensors::save(&tensors, file.path()).unwrap();
    std::fs::read(file.path()).unwrap()
}

fn top5(logits: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(5);
    idx
}

/// `--model REPO`, nothing else given.
fn settings(repo: &str) -> ModelSettings {
    ModelSettings {
        name: repo.to_string(),
        model: ModelRef::parse(repo).unwrap(),
        weights: None,
        labels: None,
        preprocess: Default::default(),
        device: DeviceChoice::Cpu,
        max_pixels: classify::preprocess::DEFAULT_MAX_PIXELS,
    }
}

/// The cache, offline.
fn hub_options(cache: &HubCache) -> HubOptions {
    HubOptions {
        cache_dir: cache.hub_dir(),
        offline: true,
        endpoint: None,
        token: None,
        progress: false,
    }
}

/// The repo's cache, and classify's logits for each fixture photo through it.
fn run(name: &str) -> (Fixture, HubCache, HashMap<String, Vec<f32>>) {
    let fx = fixture(name);
    let cache = HubCache::empty();
    cache.add_repo(
        &fx.repo,
        COMMIT,
        &[
            ("config.json", fx.config.clone().into_bytes()),
            ("model.safetensors", checkpoint(&fx)),
        ],
    );
    let engine = classify::engine::Engine::load(&settings(&fx.repo), &hub_options(&cache))
        .unwrap_or_else(|e| panic!("{}: {e:#}", fx.repo));
    let ours = fx
        .photos
        .keys()
        .map(|photo| {
            let bytes = std::fs::read(common::photo(photo)).unwrap();
            let input = engine.preprocess(&bytes).unwrap();
            let logits = engine.logits(&[input]).unwrap();
            (photo.clone(), logits.to_vec2::<f32>().unwrap().remove(0))
        })
        .collect();
    (fx, cache, ours)
}

fn check(name: &str) {
    let (fx, _cache, ours) = run(name);
    for (photo, reference) in &fx.photos {
        let got = &ours[photo];
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        eprintln!("{}: {photo}: relative error {err:.2e}", fx.repo);
        assert_eq!(top5(got), top5(reference), "{}: {photo}: top-5", fx.repo);
        assert!(
            err <= REL_TOL,
            "{}: {photo}: relative error {err:e}",
            fx.repo
        );
    }
}

/// The same repo through the real binary's `--json` output: timm's top-5 in order. Not run
/// (and said so) where `CLASSIFY_TEST_NO_SPAWN` is set: `scripts/arm64-check` runs these
/// tests under qemu-user, which cannot start the aarch64 binary as a child process.
fn check_cli(name: &str) {
    if std::env::var_os("CLASSIFY_TEST_NO_SPAWN").is_some() {
        eprintln!("{name}: the CLI part not run (CLASSIFY_TEST_NO_SPAWN)");
        return;
    }
    let (fx, cache, _) = run(name);
    let photos: Vec<PathBuf> = fx.photos.keys().map(|p| common::photo(p)).collect();
    let out = cache
        .command()
        .args(["--json", "--model", &fx.repo])
        .args(&photos)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        fx.repo,
        String::from_utf8_lossy(&out.stderr)
    );
    for (line, path) in String::from_utf8(out.stdout).unwrap().lines().zip(&photos) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let indices: Vec<usize> = v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["index"].as_u64().unwrap() as usize)
            .collect();
        let photo = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(indices, top5(&fx.photos[photo]), "{}: {photo}", fx.repo);
    }
}

#[test]
fn efficientnet_lite0_ra_in1k() {
    check_cli("efficientnet_lite0.ra_in1k");
    check("efficientnet_lite0.ra_in1k");
}
#[test]
fn tf_efficientnet_lite0_in1k() {
    check_cli("tf_efficientnet_lite0.in1k");
    check("tf_efficientnet_lite0.in1k");
}
#[test]
fn tf_efficientnet_lite2_in1k_at_260() {
    check("tf_efficientnet_lite2.in1k");
}
#[test]
fn efficientnet_b0_ra_in1k() {
    check_cli("efficientnet_b0.ra_in1k");
    check("efficientnet_b0.ra_in1k");
}
#[test]
fn efficientnet_b1_at_240_with_its_own_mean() {
    check("efficientnet_b1.ra4_e3600_r240_in1k");
}
#[test]
fn tf_efficientnet_b0_ns_jft_in1k() {
    check("tf_efficientnet_b0.ns_jft_in1k");
}
#[test]
fn mobilenetv3_large_100_ra_in1k() {
    check_cli("mobilenetv3_large_100.ra_in1k");
    check("mobilenetv3_large_100.ra_in1k");
}
#[test]
fn mobilenetv3_small_100_lamb_in1k() {
    check("mobilenetv3_small_100.lamb_in1k");
}
#[test]
fn mobilenetv4_conv_small() {
    check("mobilenetv4_conv_small.e2400_r224_in1k");
}
#[test]
fn mobilenetv4_conv_medium_at_256() {
    check("mobilenetv4_conv_medium.e500_r256_in1k");
}
#[test]
fn convnext_tiny_fb_in1k() {
    check_cli("convnext_tiny.fb_in1k");
    check("convnext_tiny.fb_in1k");
}
#[test]
fn convnextv2_atto() {
    check("convnextv2_atto.fcmae_ft_in1k");
}
#[test]
fn regnety_016_tv2_in1k() {
    check("regnety_016.tv2_in1k");
}
#[test]
fn regnety_032_ra_in1k() {
    check("regnety_032.ra_in1k");
}
#[test]
fn vit_small_patch16_224_augreg() {
    check_cli("vit_small_patch16_224.augreg_in21k_ft_in1k");
    check("vit_small_patch16_224.augreg_in21k_ft_in1k");
}
#[test]
fn deit_tiny_patch16_224() {
    check("deit_tiny_patch16_224.fb_in1k");
}
#[test]
fn repvgg_a0_rvgg_in1k() {
    check("repvgg_a0.rvgg_in1k");
}

/// Load `fx`'s repo after `edit` changed its checkpoint entries; the error message (with
/// its causes, as the CLI prints it).
fn load_error(
    mut fx: Fixture,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, String)>),
) -> String {
    edit(&mut fx.keys);
    let cache = HubCache::empty();
    cache.add_repo(
        &fx.repo,
        COMMIT,
        &[
            ("config.json", fx.config.clone().into_bytes()),
            ("model.safetensors", checkpoint(&fx)),
        ],
    );
    match classify::engine::Engine::load(&settings(&fx.repo), &hub_options(&cache)) {
        Ok(_) => panic!("{}: loaded a checkpoint that does not fit", fx.repo),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    }
}

#[test]
fn checkpoints_that_do_not_fit_are_refused_naming_the_key() {
    // A tensor the network needs is missing.
    let err = load_error(fixture("deit_tiny_patch16_224.fb_in1k"), |keys| {
        keys.retain(|(k, ..)| k != "blocks.3.attn.proj.bias")
    });
    eprintln!("{err}");
    assert!(err.contains("blocks.3.attn.proj.bias"), "{err}");
    // A tensor the network does not use (ConvNeXt V1's layer scale under V2's name).
    let mut v2 = fixture("convnextv2_atto.fcmae_ft_in1k");
    v2.keys
        .push(("stages.0.blocks.0.gamma".into(), vec![40], "float32".into()));
    let err = load_error(v2, |_| {});
    assert!(
        err.contains("not part of convnextv2_atto") && err.contains("stages.0.blocks.0.gamma"),
        "{err}"
    );
    // A tensor of another shape (RegNetY-016's grouped 3x3 with 2 groups instead of 4).
    let err = load_error(fixture("regnety_016.tv2_in1k"), |keys| {
        let entry = keys
            .iter_mut()
            .find(|(k, ..)| k == "s1.b1.conv2.conv.weight")
            .unwrap();
        entry.1[1] *= 2;
    });
    assert!(
        err.contains("s1.b1.conv2.conv.weight") && err.contains("shape"),
        "{err}"
    );
}
