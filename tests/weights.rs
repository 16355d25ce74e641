//! Checkpoint formats: every supported container gives the same tensors, with wrappers,
//! `module.` prefixes and storage dtypes normalised; bad files give errors naming the file.
//! Fixtures: `tests/fixtures/checkpoints/make_checkpoints.py`.

use std::path::PathBuf;

use candle_core::{DType, Device};
use classify::model::{Arch, LoadOptions, Network};
use classify::weights::{Checkpoint, WeightsError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoints")
        .join(name)
}

fn values(ck: &Checkpoint, key: &str) -> Vec<f32> {
    ck.get(key)
        .unwrap_or_else(|| panic!("{key} missing from {}", ck.path().display()))
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn every_format_yields_the_same_tensors() {
    let conv: Vec<f32> = (0..24).map(|i| i as f32 / 8.0 - 1.0).collect();
    for name in [
        "model.safetensors",
        "wrapped_f16.pth",
        "plain_bf16.pt",
        "legacy_f64.pth",
        "strided.pth",
        "strided_legacy.pth",
        "ema_only.pth",
        "legacy_optimizer_first.pth",
    ] {
        let ck = Checkpoint::open(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut keys: Vec<_> = ck.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "bn.num_batches_tracked",
                "conv.bias",
                "conv.weight",
                "fc.weight"
            ],
            "{name}"
        );
        let w = ck.get("conv.weight").unwrap();
        assert_eq!(w.dims(), &[2, 3, 2, 2], "{name}");
        assert_eq!(w.dtype(), DType::F32, "{name}: floats load as f32");
        // Every value in the fixtures is exact in f16 and bf16, so equality must hold.
        assert_eq!(values(&ck, "conv.weight"), conv, "{name}");
        assert_eq!(values(&ck, "conv.bias"), [0.5, -0.25], "{name}");
        let fc: Vec<f32> = (0..10).map(|i| -1.0 + 2.0 * i as f32 / 9.0).collect();
        assert_eq!(values(&ck, "fc.weight").len(), 10, "{name}");
        for (got, want) in values(&ck, "fc.weight").iter().zip(&fc) {
            assert!(
                (got - want).abs() < 1e-2,
                "{name}: fc.weight {got} vs {want}"
            );
        }
        assert_eq!(
            ck.get("bn.num_batches_tracked").unwrap().dtype(),
            DType::I64,
            "{name}"
        );
    }
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, name) in [(f32::NAN, "nan"), (f32::INFINITY, "inf")] {
        let path = dir.path().join(format!("{name}.safetensors"));
        let mut weight = vec![0.5f32; 6];
        weight[4] = bad;
        let tensors = std::collections::HashMap::from([
            (
                "fc.weight".to_string(),
                candle_core::Tensor::from_vec(weight, (2, 3), &Device::Cpu).unwrap(),
            ),
            (
                "fc.bias".to_string(),
                candle_core::Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
            ),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        match Checkpoint::open(&path) {
            Err(e @ WeightsError::NonFinite { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("tensor `fc.weight` holds 1 NaN or infinite"),
                    "{msg}"
                );
                assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_whole_module_or_torchscript_says_how_to_get_a_state_dict() {
    for (name, says) in [
        (
            "whole_module.pth",
            "it holds a whole pickled model (torch.nn.modules.linear.Linear, saved with \
             torch.save(model)); save its state dict instead",
        ),
        (
            "scripted.pt",
            "it is a TorchScript archive (torch.jit.save); save its state dict instead",
        ),
    ] {
        let err = Checkpoint::open(&fixture(name)).unwrap_err();
        assert!(matches!(err, WeightsError::Empty { .. }), "{name}: {err}");
        assert!(err.to_string().contains(says), "{name}: {err}");
    }
}

/// Weights and their moving average in one file would classify differently, and which
/// one the user's reference loads depends on the script: refused, saying how to pick.
#[test]
fn weights_beside_their_moving_average_are_refused() {
    for (name, weights, average) in [
        ("with_ema.pth", "state_dict", "state_dict_ema"),
        ("with_ema_legacy.pth", "model", "model_ema"),
    ] {
        let err = Checkpoint::open(&fixture(name)).unwrap_err();
        assert!(
            matches!(&err, WeightsError::TwoWeightSets { weights: w, average: a, .. }
                if *w == weights && *a == average),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(name), "{msg}");
        assert!(
            msg.contains(&format!("torch.save(torch.load(FILE)[\"{average}\"]")),
            "{msg}"
        );
    }
}

#[test]
fn unknown_and_missing_files_name_the_path() {
    let path = fixture("not_weights.bin");
    let err = Checkpoint::open(&path).unwrap_err();
    assert!(matches!(err, WeightsError::UnknownFormat { .. }));
    assert!(err.to_string().contains("not_weights.bin"), "{err}");

    let err = Checkpoint::open(&fixture("does_not_exist.pth")).unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }));
    assert!(err.to_string().contains("does_not_exist.pth"), "{err}");
}

#[test]
fn truncated_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["model.safetensors", "wrapped_f16.pth", "legacy_f64.pth"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let cut = dir.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let err = Checkpoint::open(&cut).unwrap_err();
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

#[test]
fn wrong_checkpoint_for_the_architecture_names_key_shape_and_file() {
    // A checkpoint with a classifier but nothing else: the first missing tensor is named.
    let path = fixture("model.safetensors");
    let ck = Checkpoint::open(&path).unwrap();
    let err = Network::from_checkpoint(
        Arch::from_name("resnet18").unwrap(),
        ck,
        &Device::Cpu,
        LoadOptions::default(),
    )
    .map(|_| ())
    .unwrap_err();
    let err = format!("{:#}", anyhow::Error::from(err));
    assert!(err.contains(&*path.to_string_lossy()), "{err}");
    assert!(
        err.contains("missing tensor `conv1.weight` (expected shape [64, 3, 7, 7])"),
        "{err}"
    );

    // No classifier at all: not a checkpoint of this architecture.
    let err = Network::from_checkpoint(
        Arch::from_name("densenet121").unwrap(),
        Checkpoint::open(&path).unwrap(),
        &Device::Cpu,
        LoadOptions::default(),
    )
    .map(|_| ())
    .unwrap_err();
    let err = format!("{:#}", anyhow::Error::from(err));
    assert!(
        err.contains("classifier.weight") && err.contains("densenet121"),
        "{err}"
    );

    let tensors = vec![
        (
            "fc.weight".to_string(),
            candle_core::Tensor::zeros((10, 512), DType::F32, &Device::Cpu).unwrap(),
        ),
        (
            "conv1.weight".to_string(),
            candle_core::Tensor::zeros((64, 3, 3, 3), DType::F32, &Device::Cpu).unwrap(),
        ),
    ];
    let ck = Checkpoint::from_tensors("my-finetune.pth", tensors).unwrap();
    let err = Network::from_checkpoint(
        Arch::from_name("resnet18").unwrap(),
        ck,
        &Device::Cpu,
        LoadOptions::default(),
    )
    .map(|_| ())
    .unwrap_err();
    let err = format!("{:#}", anyhow::Error::from(err));
    assert!(err.contains("my-finetune.pth"), "{err}");
    assert!(err.contains("conv1.weight"), "{err}");
    assert!(
        err.contains("[64, 3, 3, 3]") && err.contains("[64, 3, 7, 7]"),
        "{err}"
    );
}
