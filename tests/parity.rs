//! Logits parity with PyTorch for every architecture and depth.
//!
//! Weights come from the closed formula in `classify::weights::synthetic`; the reference
//! logits were computed by torchvision/timm with the same formula
//! (`tests/fixtures/parity/generate.py`). Tolerance: the largest absolute difference over
//! all logits of the batch, divided by the largest absolute reference logit, must be at
//! most 1e-4.
//!
//! `CLASSIFY_TEST_DEVICE=cuda` (scripts/gpu-check, a `--features cuda` build) runs the same
//! cases on CUDA device 0 with the same tolerance: candle's CUDA path is f32 throughout
//! (im2col + cuBLAS SGEMM, reduced-precision TF32 off by default), so it differs from
//! PyTorch only by summation order, as the CPU does. There the batch check is 1e-5 of the
//! largest logit instead of bitwise: cuBLAS picks its kernels by matrix shape.

use candle_core::{Device, Module, Tensor};
use classify::model::kernels::Isa;
use classify::model::{Arch, LoadOptions, Network};
use classify::weights::synthetic::{self, SyntheticWeights};
use serde::Deserialize;

const REL_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Fixture {
    input_shape: Vec<usize>,
    /// `noise` (default): `synthetic::input`; `noise+blocks`: its last image replaced by
    /// `synthetic::input_with_blocks`'s.
    #[serde(default)]
    input: Option<String>,
    num_classes: usize,
    logits: Vec<Vec<f32>>,
}

fn fixture(case: &str) -> Fixture {
    // `cargo test` sets CARGO_MANIFEST_DIR when it runs the test too; scripts/gpu-run sets it
    // for a test binary built on another machine, whose compile-time path is not there.
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = format!("{root}/tests/fixtures/parity/{case}.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// max |a - b| / max |b|
fn relative_error(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> f32 {
    let scale = reference.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .flatten()
        .zip(reference.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// CPU, or the device `CLASSIFY_TEST_DEVICE` names (`cuda` for CUDA device 0).
fn test_device() -> Device {
    match std::env::var("CLASSIFY_TEST_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Device::Cpu,
        Ok("cuda") => Device::new_cuda(0).expect("CLASSIFY_TEST_DEVICE=cuda: no CUDA device"),
        Ok(other) => panic!("CLASSIFY_TEST_DEVICE={other}: expected cpu or cuda"),
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// `case` is the timm architecture name, optionally followed by `_<what is special>`.
/// `also_unfolded`: also run candle's stock operations, and BatchNorm unfolded.
fn check(case: &str, also_unfolded: bool) {
    let fx = fixture(case);
    let arch = Arch::all()
        .filter(|a| case == a.name() || case.starts_with(&format!("{}_", a.name())))
        .max_by_key(|a| a.name().len())
        .unwrap_or_else(|| panic!("{case}: no architecture"));
    let dev = test_device();
    let on_gpu = !dev.is_cpu();
    let x = match fx.input.as_deref() {
        None | Some("noise") => synthetic::input(&fx.input_shape, &dev),
        Some("noise+blocks") => synthetic::input_with_blocks(&fx.input_shape, &dev),
        Some(other) => panic!("{case}: unknown input {other}"),
    }
    .unwrap();
    let build_with = |fold_batchnorm, isa, stock| {
        Network::build(
            arch,
            SyntheticWeights::var_builder(&dev),
            fx.num_classes,
            LoadOptions {
                fold_batchnorm,
                isa,
                stock,
            },
        )
        .unwrap()
    };
    let build = |fold_batchnorm, isa| build_with(fold_batchnorm, isa, false);
    // Every lower instruction set this CPU runs gives the same logits as the best one.
    for isa in Isa::ALL.into_iter().filter(|&i| i > Isa::best()) {
        eprintln!("{case}: {isa} kernels not tested, this CPU lacks {isa}");
    }
    for isa in Isa::supported().filter(|&i| i < Isa::best() && !on_gpu) {
        let net = build(true, isa);
        let lower = rows(&net.forward(&x).unwrap());
        let err = relative_error(&lower, &fx.logits);
        eprintln!("{case}: {isa} kernels, relative error vs PyTorch {err:.2e}");
        assert!(err <= REL_TOL, "{case} ({isa}): relative error {err:e}");
        let alone = rows(&net.forward(&x.narrow(0, 0, 1).unwrap()).unwrap());
        assert!(
            alone[0] == lower[0],
            "{case} ({isa}): image 0 alone differs from in batch"
        );
    }
    let net = build(true, Isa::best());
    let batch = rows(&net.forward(&x).unwrap());
    assert_eq!(batch.len(), fx.logits.len());
    assert_eq!(batch[0].len(), fx.num_classes);
    let err = relative_error(&batch, &fx.logits);
    // On a GPU the network runs candle's operations there, whatever the CPU has.
    let path = match on_gpu {
        true => format!("{:?}, candle's operations", dev.location()),
        false => format!("{} kernels", Isa::best()),
    };
    eprintln!("{case}: {path}, relative error vs PyTorch {err:.2e}");
    assert!(
        err <= REL_TOL,
        "{case}: relative error {err:e} > {REL_TOL:e}"
    );

    // Most of each logit is shared by all inputs (biases, BatchNorm shifts); check the part
    // that depends on the image separately: the difference between the two images' logits.
    let diff = |l: &[Vec<f32>]| {
        vec![l[0]
            .iter()
            .zip(&l[1])
            .map(|(a, b)| a - b)
            .collect::<Vec<f32>>()]
    };
    let err = relative_error(&diff(&batch), &diff(&fx.logits));
    eprintln!("{case}: image-dependent part, relative error {err:.2e}");
    assert!(
        err <= 1e-3,
        "{case}: image-dependent part differs by {err:e}"
    );

    // An image's logits do not depend on the rest of its batch, to the bit: a resumed
    // directory run batches differently from an uninterrupted one and must write the same
    // records.
    for (i, row) in batch.iter().enumerate() {
        let single = rows(&net.forward(&x.narrow(0, i, 1).unwrap()).unwrap());
        if on_gpu {
            let err = relative_error(&single, std::slice::from_ref(row));
            assert!(
                err <= 1e-5,
                "{case}: image {i} alone vs in batch on the GPU: {err:e}"
            );
            continue;
        }
        assert!(
            single[0] == *row,
            "{case}: image {i} alone differs from in batch by {:e}",
            relative_error(&single, std::slice::from_ref(row))
        );
    }

    if also_unfolded {
        // candle's stock operations (the GPU path, and the CPU reference) match too.
        let stock = rows(&build_with(true, Isa::best(), true).forward(&x).unwrap());
        let err = relative_error(&stock, &fx.logits);
        eprintln!("{case}: stock candle operations, relative error vs PyTorch {err:.2e}");
        assert!(err <= REL_TOL, "{case} stock: relative error {err:e}");
        let unfolded = rows(&build(false, Isa::best()).forward(&x).unwrap());
        let err = relative_error(&unfolded, &fx.logits);
        assert!(err <= REL_TOL, "{case} unfolded: relative error {err:e}");
        let err = relative_error(&batch, &unfolded);
        eprintln!("{case}: folded vs unfolded {err:.2e}");
        assert!(
            err <= 1e-5,
            "{case}: folding BatchNorm changed logits by {err:e}"
        );
    }
}

#[test]
fn resnet18() {
    check("resnet18", true);
}
#[test]
fn resnet34() {
    check("resnet34", false);
}
#[test]
fn resnet50() {
    check("resnet50", true);
}
#[test]
fn resnet101() {
    check("resnet101", false);
}
#[test]
fn resnet152() {
    check("resnet152", false);
}
#[test]
fn densenet121() {
    check("densenet121", true);
}
#[test]
fn densenet161() {
    check("densenet161", false);
}
#[test]
fn densenet169() {
    check("densenet169", false);
}
#[test]
fn densenet201() {
    check("densenet201", false);
}
#[test]
fn tf_efficientnet_lite0() {
    check("tf_efficientnet_lite0", true);
}
#[test]
fn tf_efficientnet_lite0_odd_input_size() {
    check("tf_efficientnet_lite0_odd", false);
}
#[test]
fn tf_efficientnet_lite2() {
    check("tf_efficientnet_lite2", false);
}
#[test]
fn tf_efficientnet_lite4() {
    check("tf_efficientnet_lite4", false);
}
#[test]
fn efficientnet_lite0() {
    check("efficientnet_lite0", true);
}
#[test]
fn efficientnet_lite1() {
    check("efficientnet_lite1", false);
}
#[test]
fn efficientnet_lite3() {
    check("efficientnet_lite3", false);
}
#[test]
fn resnet18_with_37_classes() {
    check("resnet18_37classes", false);
}
#[test]
fn efficientnet_b0() {
    check("efficientnet_b0", true);
}
#[test]
fn efficientnet_b2() {
    check("efficientnet_b2", false);
}
#[test]
fn efficientnet_b4() {
    check("efficientnet_b4", false);
}
#[test]
fn tf_efficientnet_b0() {
    check("tf_efficientnet_b0", true);
}
#[test]
fn tf_efficientnet_b3_odd_input_size() {
    check("tf_efficientnet_b3_odd", false);
}
#[test]
fn mobilenetv3_large_100() {
    check("mobilenetv3_large_100", true);
}
#[test]
fn mobilenetv3_small_100() {
    check("mobilenetv3_small_100", false);
}
#[test]
fn mobilenetv4_conv_small() {
    check("mobilenetv4_conv_small", true);
}
#[test]
fn mobilenetv4_conv_medium() {
    check("mobilenetv4_conv_medium", false);
}
#[test]
fn convnext_atto() {
    check("convnext_atto", true);
}
#[test]
fn convnext_tiny() {
    check("convnext_tiny", false);
}
#[test]
fn convnextv2_atto() {
    check("convnextv2_atto", true);
}
#[test]
fn convnextv2_tiny_odd_input_size() {
    check("convnextv2_tiny_odd", false);
}
#[test]
fn repvgg_a0() {
    check("repvgg_a0", true);
}
#[test]
fn repvgg_b0() {
    check("repvgg_b0", false);
}
#[test]
fn regnety_002() {
    check("regnety_002", true);
}
#[test]
fn regnety_008() {
    check("regnety_008", false);
}
#[test]
fn regnety_016() {
    check("regnety_016", false);
}
#[test]
fn vit_tiny_patch16_224() {
    check("vit_tiny_patch16_224", true);
}
#[test]
fn vit_small_patch16_224() {
    check("vit_small_patch16_224", false);
}

/// The depthwise families run a batch through the kernels a few images at a time (see
/// `efficientnet_blocks.rs`): a batch longer than a chunk, and not a multiple of it, gives
/// each image exactly the logits it has alone.
#[test]
fn batches_split_into_chunks_give_each_image_its_own_logits() {
    let dev = Device::Cpu;
    for name in ["mobilenetv3_small_100", "tf_efficientnet_lite0"] {
        let arch = Arch::from_name(name).unwrap();
        let net = Network::build(
            arch,
            SyntheticWeights::var_builder(&dev),
            10,
            LoadOptions {
                fold_batchnorm: true,
                isa: Isa::best(),
                stock: false,
            },
        )
        .unwrap();
        // Chunks are 16 images: 18 is one whole chunk and a short one.
        let n = 18;
        let x = Tensor::randn(0f32, 1.0, (n, 3, 224, 224), &dev).unwrap();
        let batch = rows(&net.forward(&x).unwrap());
        assert_eq!(batch.len(), n);
        for i in [0, 9, 15, 16, 17] {
            let row = &batch[i];
            let alone = rows(&net.forward(&x.narrow(0, i, 1).unwrap()).unwrap());
            assert!(
                alone[0] == *row,
                "{name}: image {i} alone differs from in batch"
            );
        }
        // Not all the same image's logits (each chunk's rows land in their own place).
        assert!(batch[0] != batch[n - 1], "{name}");
    }
}
