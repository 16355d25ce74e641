//! The architecture zoo: which networks exist, how a checkpoint becomes one, and the single
//! `match` that dispatches on the architecture.

pub mod densenet;
pub mod efficientnet_lite;
pub mod kernels;
pub mod layers;
pub mod resnet;

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;

pub use layers::LoadOptions;

use crate::preprocess::{Interpolation, PreprocessConfig, IMAGENET_MEAN, IMAGENET_STD};
use crate::weights::Checkpoint;

/// Every supported architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    DenseNet121,
    DenseNet161,
    DenseNet169,
    DenseNet201,
    EfficientNetLite0,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model architecture `{0}` (supported: {names})", names = Arch::names().join(", "))]
    UnknownArch(String),
    #[error("{path}: no `{key}` tensor, so this does not look like a {arch} checkpoint")]
    NoClassifier {
        path: String,
        key: &'static str,
        arch: &'static str,
    },
    #[error("cannot build {arch} from {path}: {source}")]
    Build {
        arch: &'static str,
        path: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

impl Arch {
    pub const ALL: [Arch; 10] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
        Arch::DenseNet121,
        Arch::DenseNet161,
        Arch::DenseNet169,
        Arch::DenseNet201,
        Arch::EfficientNetLite0,
    ];

    /// The short name used on the command line (`--model resnet50`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::ResNet152 => "resnet152",
            Arch::DenseNet121 => "densenet121",
            Arch::DenseNet161 => "densenet161",
            Arch::DenseNet169 => "densenet169",
            Arch::DenseNet201 => "densenet201",
            Arch::EfficientNetLite0 => "efficientnet_lite0",
        }
    }

    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|a| a.name()).collect()
    }

    /// Parse a short name or a timm architecture / model name (`resnet50`,
    /// `resnet50.tv_in1k`, `tf_efficientnet_lite0`).
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        let base = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
        let base = base.strip_prefix("tf_").unwrap_or(&base).replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|a| a.name() == base)
            .ok_or_else(|| ModelError::UnknownArch(name.to_string()))
    }

    /// The Hugging Face hub repo with this architecture's original ImageNet weights.
    pub fn default_repo(self) -> &'static str {
        match self {
            Arch::ResNet18 => "timm/resnet18.tv_in1k",
            Arch::ResNet34 => "timm/resnet34.tv_in1k",
            Arch::ResNet50 => "timm/resnet50.tv_in1k",
            Arch::ResNet101 => "timm/resnet101.tv_in1k",
            Arch::ResNet152 => "timm/resnet152.tv_in1k",
            Arch::DenseNet121 => "timm/densenet121.tv_in1k",
            Arch::DenseNet161 => "timm/densenet161.tv_in1k",
            Arch::DenseNet169 => "timm/densenet169.tv_in1k",
            Arch::DenseNet201 => "timm/densenet201.tv_in1k",
            Arch::EfficientNetLite0 => "timm/tf_efficientnet_lite0.in1k",
        }
    }

    /// Preprocessing the default weights were trained with (timm's `pretrained_cfg`), used
    /// when a model comes without a `config.json`.
    pub fn default_preprocess(self) -> PreprocessConfig {
        match self {
            Arch::EfficientNetLite0 => PreprocessConfig {
                interpolation: Interpolation::Bicubic,
                mean: [0.5; 3],
                std: [0.5; 3],
                ..PreprocessConfig::default()
            },
            // timm's tv_in1k configs: bicubic for DenseNet, bilinear for ResNet.
            Arch::DenseNet121 | Arch::DenseNet161 | Arch::DenseNet169 | Arch::DenseNet201 => {
                PreprocessConfig {
                    interpolation: Interpolation::Bicubic,
                    mean: IMAGENET_MEAN,
                    std: IMAGENET_STD,
                    ..PreprocessConfig::default()
                }
            }
            _ => PreprocessConfig {
                interpolation: Interpolation::Bilinear,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                ..PreprocessConfig::default()
            },
        }
    }

    /// The classifier weight, whose first dimension is the class count.
    fn classifier_key(self) -> &'static str {
        match self {
            Arch::ResNet18
            | Arch::ResNet34
            | Arch::ResNet50
            | Arch::ResNet101
            | Arch::ResNet152 => "fc.weight",
            _ => "classifier.weight",
        }
    }

    /// Map another project's spelling of a state-dict key onto ours.
    pub fn canonical_key(self, key: &str) -> String {
        match self {
            Arch::EfficientNetLite0 => {
                efficientnet_lite::canonical_key(&efficientnet_lite::efficientnet_lite0(), key)
            }
            Arch::DenseNet121 | Arch::DenseNet161 | Arch::DenseNet169 | Arch::DenseNet201 => {
                densenet::canonical_key(key)
            }
            _ => key.to_string(),
        }
    }

    /// Multiply-accumulates of one forward pass at 224x224 (for GFLOP/s reports).
    pub fn gmacs_224(self) -> f64 {
        match self {
            Arch::ResNet18 => 1.82,
            Arch::ResNet34 => 3.67,
            Arch::ResNet50 => 4.11,
            Arch::ResNet101 => 7.83,
            Arch::ResNet152 => 11.56,
            Arch::DenseNet121 => 2.87,
            Arch::DenseNet161 => 7.73,
            Arch::DenseNet169 => 3.40,
            Arch::DenseNet201 => 4.34,
            Arch::EfficientNetLite0 => 0.39,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A built network of any supported architecture.
#[derive(Debug, Clone)]
pub enum Network {
    ResNet(resnet::ResNet),
    DenseNet(densenet::DenseNet),
    EfficientNetLite(efficientnet_lite::EfficientNetLite),
}

impl Network {
    /// Build `arch` with `num_classes` outputs from whatever `vb` serves.
    pub fn build(
        arch: Arch,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> candle_core::Result<Self> {
        use Arch::*;
        Ok(match arch {
            ResNet18 | ResNet34 | ResNet50 | ResNet101 | ResNet152 => {
                let cfg = match arch {
                    ResNet18 => resnet::resnet18(),
                    ResNet34 => resnet::resnet34(),
                    ResNet50 => resnet::resnet50(),
                    ResNet101 => resnet::resnet101(),
                    _ => resnet::resnet152(),
                };
                Network::ResNet(resnet::ResNet::load(vb, &cfg, num_classes, opts)?)
            }
            DenseNet121 | DenseNet161 | DenseNet169 | DenseNet201 => {
                let cfg = match arch {
                    DenseNet121 => densenet::densenet121(),
                    DenseNet161 => densenet::densenet161(),
                    DenseNet169 => densenet::densenet169(),
                    _ => densenet::densenet201(),
                };
                Network::DenseNet(densenet::DenseNet::load(vb, &cfg, num_classes, opts)?)
            }
            EfficientNetLite0 => {
                Network::EfficientNetLite(efficientnet_lite::EfficientNetLite::load(
                    vb,
                    &efficientnet_lite::efficientnet_lite0(),
                    num_classes,
                    opts,
                )?)
            }
        })
    }

    /// Build `arch` from a checkpoint; the class count comes from its classifier's shape.
    pub fn from_checkpoint(
        arch: Arch,
        checkpoint: Checkpoint,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<(Self, usize), ModelError> {
        let checkpoint = checkpoint.rename_keys(|k| arch.canonical_key(k));
        let path = checkpoint.path().display().to_string();
        let key = arch.classifier_key();
        let num_classes = checkpoint
            .get(key)
            .and_then(|t| t.dims().first().copied())
            .ok_or_else(|| ModelError::NoClassifier {
                path: path.clone(),
                key,
                arch: arch.name(),
            })?;
        let vb = checkpoint.into_var_builder(device);
        let net = Self::build(arch, vb, num_classes, opts).map_err(|source| ModelError::Build {
            arch: arch.name(),
            path,
            source: Box::new(source),
        })?;
        Ok((net, num_classes))
    }
}

impl Module for Network {
    /// NCHW f32 images in, logits `(batch, num_classes)` out.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Network::ResNet(m) => m.forward(x),
            Network::DenseNet(m) => m.forward(x),
            Network::EfficientNetLite(m) => m.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_timm_names_parse() {
        for arch in Arch::ALL {
            assert_eq!(Arch::from_name(arch.name()).unwrap(), arch);
        }
        assert_eq!(Arch::from_name("resnet50.tv_in1k").unwrap(), Arch::ResNet50);
        assert_eq!(
            Arch::from_name("tf_efficientnet_lite0").unwrap(),
            Arch::EfficientNetLite0
        );
        assert!(Arch::from_name("vit_base_patch16_224").is_err());
    }
}
