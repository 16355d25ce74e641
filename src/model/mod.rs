//! The architecture zoo: one table ([`ARCHITECTURES`]) says which networks exist, where
//! their weights live, how their inputs are prepared and which family builds them; each
//! family (one file beside this one) implements [`Family`]. A new family is its file plus
//! its rows in the table; nothing else dispatches on the architecture.
//!
//! Loading is strict: every tensor the network asks for must exist with its shape, and
//! every tensor the checkpoint holds must be used. A checkpoint for another depth or
//! variant of the same family is refused naming the first key that does not fit, never run.

pub mod convnext;
pub mod densenet;
pub mod efficientnet;
pub mod efficientnet_blocks;
pub mod kernels;
pub mod layers;
pub mod mobilenet;
pub mod regnet;
pub mod repvgg;
pub mod resnet;
pub mod vit;

use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;

pub use layers::LoadOptions;

use crate::preprocess::{Interpolation, PreprocessConfig, IMAGENET_MEAN, IMAGENET_STD};
use crate::weights::Checkpoint;
use efficientnet::{efficientnet_b, efficientnet_lite, Variant};

/// What a family of architectures provides; configs (`resnet::Config`, ...) implement it.
pub trait Family: std::fmt::Debug + Sync {
    /// The classifier weight, whose first dimension is the class count.
    fn classifier_key(&self) -> &'static str;

    /// Map another project's spelling of a state-dict key onto the family's (timm's).
    fn canonical_key(&self, key: &str) -> String {
        key.to_string()
    }

    /// The name of the architecture a checkpoint's key layout proves it is, where that
    /// differs from the one asked for (keys as stored, before [`Family::canonical_key`]).
    fn implied_by(&self, _keys: &[&str]) -> Option<String> {
        None
    }

    fn build(
        &self,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> candle_core::Result<Network>;
}

/// One row of the zoo.
#[derive(Debug)]
pub struct ArchSpec {
    /// timm's architecture name, also the `--model` short name.
    pub name: &'static str,
    /// The Hugging Face hub repo with this architecture's ImageNet weights, where one exists.
    pub default_repo: Option<&'static str>,
    /// Preprocessing of those weights (timm's `pretrained_cfg`), used when a model comes
    /// without a `config.json`.
    pub preprocess: PreprocessConfig,
    /// Multiply-accumulates of one forward pass at 224x224 (for GFLOP/s reports).
    pub gmacs_224: f64,
    pub family: &'static dyn Family,
}

/// timm's eval transform: resize the short side to `floor(input / crop_pct)`, center crop.
const fn timm_cfg(
    input_size: u32,
    crop_pct: f64,
    interpolation: Interpolation,
    mean: [f32; 3],
    std: [f32; 3],
) -> PreprocessConfig {
    PreprocessConfig {
        input_size,
        resize_size: (input_size as f64 / crop_pct) as u32,
        interpolation,
        mean,
        std,
    }
}

const TV_BILINEAR: PreprocessConfig = timm_cfg(
    224,
    0.875,
    Interpolation::Bilinear,
    IMAGENET_MEAN,
    IMAGENET_STD,
);
const TV_BICUBIC: PreprocessConfig = timm_cfg(
    224,
    0.875,
    Interpolation::Bicubic,
    IMAGENET_MEAN,
    IMAGENET_STD,
);
const TF_MEAN_STD: [f32; 3] = [0.5; 3];
/// timm's ViT / DeiT evaluation: crop 0.9, bicubic.
const VIT_05: PreprocessConfig =
    timm_cfg(224, 0.9, Interpolation::Bicubic, TF_MEAN_STD, TF_MEAN_STD);
const VIT_IN: PreprocessConfig = timm_cfg(
    224,
    0.9,
    Interpolation::Bicubic,
    IMAGENET_MEAN,
    IMAGENET_STD,
);

macro_rules! arch {
    ($name:literal, $repo:expr, $pre:expr, $gmacs:literal, $family:expr) => {
        ArchSpec {
            name: $name,
            default_repo: $repo,
            preprocess: $pre,
            gmacs_224: $gmacs,
            family: &$family,
        }
    };
}

/// Every supported architecture.
pub static ARCHITECTURES: &[ArchSpec] = &[
    arch!(
        "resnet18",
        Some("timm/resnet18.tv_in1k"),
        TV_BILINEAR,
        1.82,
        resnet::resnet18()
    ),
    arch!(
        "resnet34",
        Some("timm/resnet34.tv_in1k"),
        TV_BILINEAR,
        3.67,
        resnet::resnet34()
    ),
    arch!(
        "resnet50",
        Some("timm/resnet50.tv_in1k"),
        TV_BILINEAR,
        4.11,
        resnet::resnet50()
    ),
    arch!(
        "resnet101",
        Some("timm/resnet101.tv_in1k"),
        TV_BILINEAR,
        7.83,
        resnet::resnet101()
    ),
    arch!(
        "resnet152",
        Some("timm/resnet152.tv_in1k"),
        TV_BILINEAR,
        11.56,
        resnet::resnet152()
    ),
    arch!(
        "densenet121",
        Some("timm/densenet121.tv_in1k"),
        TV_BICUBIC,
        2.87,
        densenet::densenet121()
    ),
    arch!(
        "densenet161",
        Some("timm/densenet161.tv_in1k"),
        TV_BICUBIC,
        7.73,
        densenet::densenet161()
    ),
    arch!(
        "densenet169",
        Some("timm/densenet169.tv_in1k"),
        TV_BICUBIC,
        3.40,
        densenet::densenet169()
    ),
    arch!(
        "densenet201",
        Some("timm/densenet201.tv_in1k"),
        TV_BICUBIC,
        4.34,
        densenet::densenet201()
    ),
    // timm publishes weights only for Lite0 of the PyTorch-trained variant; Lite1-4 load
    // from a local file (`--weights`).
    arch!(
        "efficientnet_lite0",
        Some("timm/efficientnet_lite0.ra_in1k"),
        TV_BICUBIC,
        0.39,
        efficientnet_lite(0, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_lite1",
        None,
        timm_cfg(
            240,
            0.882,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.50,
        efficientnet_lite(1, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_lite2",
        None,
        timm_cfg(
            260,
            0.890,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.58,
        efficientnet_lite(2, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_lite3",
        None,
        timm_cfg(
            300,
            0.904,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.85,
        efficientnet_lite(3, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_lite4",
        None,
        timm_cfg(
            380,
            0.922,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        1.35,
        efficientnet_lite(4, Variant::PyTorch)
    ),
    arch!(
        "tf_efficientnet_lite0",
        Some("timm/tf_efficientnet_lite0.in1k"),
        timm_cfg(224, 0.875, Interpolation::Bicubic, TF_MEAN_STD, TF_MEAN_STD),
        0.39,
        efficientnet_lite(0, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_lite1",
        Some("timm/tf_efficientnet_lite1.in1k"),
        timm_cfg(240, 0.882, Interpolation::Bicubic, TF_MEAN_STD, TF_MEAN_STD),
        0.50,
        efficientnet_lite(1, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_lite2",
        Some("timm/tf_efficientnet_lite2.in1k"),
        timm_cfg(260, 0.890, Interpolation::Bicubic, TF_MEAN_STD, TF_MEAN_STD),
        0.58,
        efficientnet_lite(2, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_lite3",
        Some("timm/tf_efficientnet_lite3.in1k"),
        timm_cfg(
            300,
            0.904,
            Interpolation::Bilinear,
            TF_MEAN_STD,
            TF_MEAN_STD
        ),
        0.85,
        efficientnet_lite(3, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_lite4",
        Some("timm/tf_efficientnet_lite4.in1k"),
        timm_cfg(
            380,
            0.920,
            Interpolation::Bilinear,
            TF_MEAN_STD,
            TF_MEAN_STD
        ),
        1.35,
        efficientnet_lite(4, Variant::TensorFlow)
    ),
    arch!(
        "efficientnet_b0",
        Some("timm/efficientnet_b0.ra_in1k"),
        TV_BICUBIC,
        0.39,
        efficientnet_b(0, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_b1",
        Some("timm/efficientnet_b1.ra4_e3600_r240_in1k"),
        timm_cfg(240, 0.9, Interpolation::Bicubic, TF_MEAN_STD, TF_MEAN_STD),
        0.57,
        efficientnet_b(1, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_b2",
        Some("timm/efficientnet_b2.ra_in1k"),
        timm_cfg(
            256,
            0.875,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.66,
        efficientnet_b(2, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_b3",
        Some("timm/efficientnet_b3.ra2_in1k"),
        timm_cfg(
            288,
            0.875,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.96,
        efficientnet_b(3, Variant::PyTorch)
    ),
    arch!(
        "efficientnet_b4",
        Some("timm/efficientnet_b4.ra2_in1k"),
        timm_cfg(
            320,
            0.875,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        1.50,
        efficientnet_b(4, Variant::PyTorch)
    ),
    arch!(
        "tf_efficientnet_b0",
        Some("timm/tf_efficientnet_b0.ns_jft_in1k"),
        TV_BICUBIC,
        0.39,
        efficientnet_b(0, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_b1",
        Some("timm/tf_efficientnet_b1.ns_jft_in1k"),
        timm_cfg(
            240,
            0.882,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.57,
        efficientnet_b(1, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_b2",
        Some("timm/tf_efficientnet_b2.ns_jft_in1k"),
        timm_cfg(
            260,
            0.890,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.66,
        efficientnet_b(2, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_b3",
        Some("timm/tf_efficientnet_b3.ns_jft_in1k"),
        timm_cfg(
            300,
            0.904,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.96,
        efficientnet_b(3, Variant::TensorFlow)
    ),
    arch!(
        "tf_efficientnet_b4",
        Some("timm/tf_efficientnet_b4.ns_jft_in1k"),
        timm_cfg(
            380,
            0.922,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        1.50,
        efficientnet_b(4, Variant::TensorFlow)
    ),
    arch!(
        "mobilenetv3_large_100",
        Some("timm/mobilenetv3_large_100.ra_in1k"),
        TV_BICUBIC,
        0.22,
        mobilenet::mobilenetv3_large_100()
    ),
    arch!(
        "mobilenetv3_small_100",
        Some("timm/mobilenetv3_small_100.lamb_in1k"),
        TV_BICUBIC,
        0.06,
        mobilenet::mobilenetv3_small_100()
    ),
    arch!(
        "mobilenetv4_conv_small",
        Some("timm/mobilenetv4_conv_small.e2400_r224_in1k"),
        TV_BICUBIC,
        0.19,
        mobilenet::mobilenetv4_conv_small()
    ),
    arch!(
        "mobilenetv4_conv_medium",
        Some("timm/mobilenetv4_conv_medium.e500_r256_in1k"),
        timm_cfg(
            256,
            0.95,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.83,
        mobilenet::mobilenetv4_conv_medium()
    ),
    arch!(
        "convnext_atto",
        Some("timm/convnext_atto.d2_in1k"),
        TV_BICUBIC,
        0.55,
        convnext::convnext_atto(false)
    ),
    arch!(
        "convnext_femto",
        Some("timm/convnext_femto.d1_in1k"),
        TV_BICUBIC,
        0.78,
        convnext::convnext_femto(false)
    ),
    arch!(
        "convnext_pico",
        Some("timm/convnext_pico.d1_in1k"),
        TV_BICUBIC,
        1.37,
        convnext::convnext_pico(false)
    ),
    arch!(
        "convnext_nano",
        Some("timm/convnext_nano.in12k_ft_in1k"),
        timm_cfg(
            224,
            0.95,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        2.45,
        convnext::convnext_nano(false)
    ),
    arch!(
        "convnext_tiny",
        Some("timm/convnext_tiny.in12k_ft_in1k"),
        timm_cfg(
            224,
            0.95,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        4.46,
        convnext::convnext_tiny(false)
    ),
    arch!(
        "convnext_small",
        Some("timm/convnext_small.in12k_ft_in1k"),
        timm_cfg(
            224,
            0.95,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        8.68,
        convnext::convnext_small(false)
    ),
    arch!(
        "convnext_base",
        Some("timm/convnext_base.fb_in22k_ft_in1k"),
        TV_BICUBIC,
        15.35,
        convnext::convnext_base(false)
    ),
    arch!(
        "convnextv2_atto",
        Some("timm/convnextv2_atto.fcmae_ft_in1k"),
        TV_BICUBIC,
        0.55,
        convnext::convnext_atto(true)
    ),
    arch!(
        "convnextv2_femto",
        Some("timm/convnextv2_femto.fcmae_ft_in1k"),
        TV_BICUBIC,
        0.78,
        convnext::convnext_femto(true)
    ),
    arch!(
        "convnextv2_pico",
        Some("timm/convnextv2_pico.fcmae_ft_in1k"),
        TV_BICUBIC,
        1.37,
        convnext::convnext_pico(true)
    ),
    arch!(
        "convnextv2_nano",
        Some("timm/convnextv2_nano.fcmae_ft_in22k_in1k"),
        TV_BICUBIC,
        2.45,
        convnext::convnext_nano(true)
    ),
    arch!(
        "convnextv2_tiny",
        Some("timm/convnextv2_tiny.fcmae_ft_in22k_in1k"),
        TV_BICUBIC,
        4.46,
        convnext::convnext_tiny(true)
    ),
    arch!(
        "convnextv2_small",
        None,
        TV_BICUBIC,
        8.68,
        convnext::convnext_small(true)
    ),
    arch!(
        "convnextv2_base",
        Some("timm/convnextv2_base.fcmae_ft_in22k_in1k"),
        TV_BICUBIC,
        15.35,
        convnext::convnext_base(true)
    ),
    arch!(
        "repvgg_a0",
        Some("timm/repvgg_a0.rvgg_in1k"),
        TV_BILINEAR,
        1.51,
        repvgg::repvgg_a0()
    ),
    arch!(
        "repvgg_a1",
        Some("timm/repvgg_a1.rvgg_in1k"),
        TV_BILINEAR,
        2.63,
        repvgg::repvgg_a1()
    ),
    arch!(
        "repvgg_a2",
        Some("timm/repvgg_a2.rvgg_in1k"),
        TV_BILINEAR,
        5.69,
        repvgg::repvgg_a2()
    ),
    arch!(
        "repvgg_b0",
        Some("timm/repvgg_b0.rvgg_in1k"),
        TV_BILINEAR,
        3.4,
        repvgg::repvgg_b0()
    ),
    arch!(
        "regnety_002",
        Some("timm/regnety_002.pycls_in1k"),
        TV_BICUBIC,
        0.20,
        regnet::regnety_002()
    ),
    arch!(
        "regnety_004",
        Some("timm/regnety_004.tv2_in1k"),
        timm_cfg(
            224,
            0.965,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        0.40,
        regnet::regnety_004()
    ),
    arch!(
        "regnety_006",
        Some("timm/regnety_006.pycls_in1k"),
        TV_BICUBIC,
        0.60,
        regnet::regnety_006()
    ),
    arch!(
        "regnety_008",
        Some("timm/regnety_008.pycls_in1k"),
        TV_BICUBIC,
        0.80,
        regnet::regnety_008()
    ),
    arch!(
        "regnety_016",
        Some("timm/regnety_016.tv2_in1k"),
        timm_cfg(
            224,
            0.965,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        1.61,
        regnet::regnety_016()
    ),
    arch!(
        "regnety_032",
        Some("timm/regnety_032.ra_in1k"),
        timm_cfg(
            224,
            0.95,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        3.18,
        regnet::regnety_032()
    ),
    arch!(
        "regnety_040",
        Some("timm/regnety_040.ra3_in1k"),
        timm_cfg(
            224,
            0.95,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            IMAGENET_STD
        ),
        3.97,
        regnet::regnety_040()
    ),
    arch!(
        "vit_tiny_patch16_224",
        Some("timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
        VIT_05,
        1.25,
        vit::vit_tiny()
    ),
    arch!(
        "vit_small_patch16_224",
        Some("timm/vit_small_patch16_224.augreg_in21k_ft_in1k"),
        VIT_05,
        4.60,
        vit::vit_small()
    ),
    arch!(
        "vit_base_patch16_224",
        Some("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
        VIT_05,
        17.56,
        vit::vit_base()
    ),
    arch!(
        "deit_tiny_patch16_224",
        Some("timm/deit_tiny_patch16_224.fb_in1k"),
        VIT_IN,
        1.25,
        vit::vit_tiny()
    ),
    arch!(
        "deit_small_patch16_224",
        Some("timm/deit_small_patch16_224.fb_in1k"),
        VIT_IN,
        4.60,
        vit::vit_small()
    ),
    arch!(
        "deit_base_patch16_224",
        Some("timm/deit_base_patch16_224.fb_in1k"),
        VIT_IN,
        17.56,
        vit::vit_base()
    ),
];

/// A supported architecture: a handle on its row of [`ARCHITECTURES`].
#[derive(Clone, Copy)]
pub struct Arch(&'static ArchSpec);

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
    #[error("cannot build {arch} from {path}")]
    Build {
        arch: &'static str,
        path: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("{path} is not a {arch} checkpoint: {count} of its tensors are not part of {arch}, the first `{first}` (another depth, width or variant of the family?); refusing to run weights it does not match")]
    UnusedTensors {
        arch: &'static str,
        path: String,
        first: String,
        count: usize,
    },
}

impl Arch {
    pub fn all() -> impl Iterator<Item = Arch> {
        ARCHITECTURES.iter().map(Arch)
    }

    /// The short name used on the command line (`--model resnet50`), timm's name.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn names() -> Vec<&'static str> {
        Self::all().map(Arch::name).collect()
    }

    /// Parse a short name or a timm architecture / model name (`resnet50`,
    /// `resnet50.tv_in1k`, `tf_efficientnet_lite0.in1k`). `tf_` is part of the name: timm's
    /// `tf_` models are other networks (padding, BatchNorm eps), not aliases.
    pub fn from_name(name: &str) -> Result<Self, ModelError> {
        let base = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
        let base = base.replace('-', "_");
        Self::all()
            .find(|a| a.name() == base)
            .ok_or_else(|| ModelError::UnknownArch(name.to_string()))
    }

    pub fn default_repo(self) -> Option<&'static str> {
        self.0.default_repo
    }

    pub fn default_preprocess(self) -> PreprocessConfig {
        self.0.preprocess.clone()
    }

    pub fn gmacs_224(self) -> f64 {
        self.0.gmacs_224
    }

    pub fn canonical_key(self, key: &str) -> String {
        self.0.family.canonical_key(key)
    }

    /// The architecture a checkpoint really is: `self`, unless its key layout proves
    /// another variant of the family (efficientnet_pytorch keys are TensorFlow-ported).
    pub fn for_checkpoint(self, checkpoint: &Checkpoint) -> Self {
        let keys: Vec<&str> = checkpoint.keys().collect();
        match self
            .0
            .family
            .implied_by(&keys)
            .and_then(|n| Arch::from_name(&n).ok())
        {
            Some(implied) if implied != self => {
                tracing::info!(
                    asked = self.name(),
                    using = implied.name(),
                    "the checkpoint's key layout is {implied}'s"
                );
                implied
            }
            _ => self,
        }
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}
impl Eq for Arch {}

impl std::hash::Hash for Arch {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl std::fmt::Debug for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A built network of any architecture: NCHW f32 images in, logits `(batch, classes)` out.
#[derive(Debug, Clone)]
pub struct Network(Arc<dyn NetworkModule>);

/// What every family's network is; implemented for any module that is.
pub trait NetworkModule: Module + std::fmt::Debug + Send + Sync {}
impl<T: Module + std::fmt::Debug + Send + Sync> NetworkModule for T {}

impl Network {
    pub fn new(module: impl NetworkModule + 'static) -> Self {
        Self(Arc::new(module))
    }

    /// Build `arch` with `num_classes` outputs from whatever `vb` serves.
    pub fn build(
        arch: Arch,
        vb: VarBuilder,
        num_classes: usize,
        opts: LoadOptions,
    ) -> candle_core::Result<Self> {
        let opts = opts.for_device(vb.device().is_cpu());
        arch.0.family.build(vb, num_classes, opts)
    }

    /// Build `arch` (or the variant the checkpoint proves, see [`Arch::for_checkpoint`])
    /// from a checkpoint; the class count comes from its classifier's shape. Returns the
    /// architecture that was built.
    pub fn from_checkpoint(
        arch: Arch,
        checkpoint: Checkpoint,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<(Self, usize, Arch), ModelError> {
        let key = arch.0.family.classifier_key();
        let has_classifier = |ck: &Checkpoint| {
            let arch = arch.for_checkpoint(ck);
            ck.keys().any(|k| arch.canonical_key(k) == key)
        };
        let checkpoint = checkpoint.without_shared_prefix_if(has_classifier);
        let arch = arch.for_checkpoint(&checkpoint);
        let checkpoint = checkpoint.rename_keys(|k| arch.canonical_key(k));
        let path = checkpoint.path().display().to_string();
        let num_classes = checkpoint
            .get(key)
            .and_then(|t| t.dims().first().copied())
            .ok_or_else(|| ModelError::NoClassifier {
                path: path.clone(),
                key,
                arch: arch.name(),
            })?;
        let (vb, used) = checkpoint.into_tracked_var_builder(device);
        let net = Self::build(arch, vb, num_classes, opts).map_err(|source| ModelError::Build {
            arch: arch.name(),
            path: path.clone(),
            source: Box::new(source),
        })?;
        let unused = used.unused();
        if let Some(first) = unused.first() {
            return Err(ModelError::UnusedTensors {
                arch: arch.name(),
                path,
                first: first.clone(),
                count: unused.len(),
            });
        }
        Ok((net, num_classes, arch))
    }

    /// The architecture a checkpoint is for, when it is not `asked`: the first other one
    /// that builds from it with every tensor used, on the CPU. For the error that says
    /// which model to ask for; the others fail at their first missing or misshapen tensor.
    pub fn fitting_arch(checkpoint: &Checkpoint, asked: Arch, opts: LoadOptions) -> Option<Arch> {
        Arch::all()
            .filter(|&arch| arch != asked)
            .find_map(|arch| {
                Self::from_checkpoint(arch, checkpoint.clone(), &Device::Cpu, opts)
                    .ok()
                    .map(|(_, _, built)| built)
            })
            .filter(|&built| built != asked)
    }
}

impl Module for Network {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if kernels::fast_path_for(x) {
            // The CPU kernels' many short parallel sections, without a thread wake-up each.
            return kernels::with_workers_awake(|| self.0.forward(x));
        }
        self.0.forward(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_timm_names_parse() {
        for arch in Arch::all() {
            assert_eq!(Arch::from_name(arch.name()).unwrap(), arch);
        }
        assert_eq!(
            Arch::from_name("resnet50.tv_in1k").unwrap().name(),
            "resnet50"
        );
        assert_eq!(
            Arch::from_name("tf_efficientnet_lite0.in1k")
                .unwrap()
                .name(),
            "tf_efficientnet_lite0"
        );
        // timm's two Lite variants are different networks, never aliases.
        assert_ne!(
            Arch::from_name("tf_efficientnet_lite2").unwrap(),
            Arch::from_name("efficientnet_lite2").unwrap()
        );
        assert_eq!(
            Arch::from_name(
                "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
                    .rsplit('/')
                    .next()
                    .unwrap()
            )
            .unwrap()
            .name(),
            "vit_base_patch16_224"
        );
        // Not in the zoo: refused by name, not approximated by a relative.
        for unknown in [
            "vit_large_patch16_224",
            "deit_tiny_distilled_patch16_224",
            "convnext_large",
            "efficientnet_b5",
        ] {
            assert!(Arch::from_name(unknown).is_err(), "{unknown}");
        }
    }

    #[test]
    fn default_preprocessing_is_timms() {
        // timm 1.0.31 pretrained_cfg: input size, floor(size / crop_pct), interpolation.
        let cases = [
            ("resnet50", 224, 256, Interpolation::Bilinear),
            ("densenet121", 224, 256, Interpolation::Bicubic),
            ("tf_efficientnet_lite1", 240, 272, Interpolation::Bicubic),
            ("tf_efficientnet_lite2", 260, 292, Interpolation::Bicubic),
            ("tf_efficientnet_lite3", 300, 331, Interpolation::Bilinear),
            ("tf_efficientnet_lite4", 380, 413, Interpolation::Bilinear),
            ("efficientnet_lite4", 380, 412, Interpolation::Bicubic),
        ];
        for (name, input, resize, interpolation) in cases {
            let p = Arch::from_name(name).unwrap().default_preprocess();
            assert_eq!(
                (p.input_size, p.resize_size, p.interpolation),
                (input, resize, interpolation),
                "{name}"
            );
        }
        let tf = Arch::from_name("tf_efficientnet_lite0").unwrap();
        assert_eq!(tf.default_preprocess().mean, [0.5; 3]);
        let pt = Arch::from_name("efficientnet_lite0").unwrap();
        assert_eq!(pt.default_preprocess().mean, IMAGENET_MEAN);
    }
}
